"""The settings of the trainer-vs-nnU-Net benchmark: each one's training set written as an nnU-Net v2 raw dataset
(which `unetseg train` reads too, so both tools train on the very same files), its held-out images and labels, and
the structures scored on them.

- ``cord`` / ``cord-reverse``: the SCT spinal-cord subject (spinalcord-mri-sct), leave one contrast out. Both the
  T1w and the T2w volume carry a manual cord label (the T2* volumes label grey matter only, so they are not used):
  ``cord`` trains on T1w and tests on T2w, ``cord-reverse`` the other way round. The files come in different
  orientations (T1w RAS, T2w PSR); both are reoriented to one (``ORIENTATION``) so that nnU-Net, which takes the
  voxel array as stored, and unetseg, which reorients itself, see the same anatomy along the same axes.
- ``brats``: the BraTS 2015 sample (brats2015-deepmedic-sample): trained on ``train/`` (2 cases), tested on
  ``validation/`` (2 cases); channels FLAIR and T1c multiplied by the brain mask (background 0, as in
  skull-stripped releases, so nnU-Net's crop-to-non-zero applies), labels 0-4 as shipped (already consecutive,
  cast to uint8). Scored per label and per BraTS region (whole tumour, tumour core, enhancing tumour).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_real import BRATS_LABELS, BRATS_REGIONS  # sibling script: the BraTS label names and regions

ORIENTATION = "LPS"  # ITK's identity direction
CORD_FILES = {"T1w": ("t1w.nii.gz", "t1w_seg-manual.nii.gz"), "T2w": ("t2.nii.gz", "t2_seg-manual.nii.gz")}
CORD_STRUCTURES = {"spinal cord": (1,)}
Case = tuple[list[sitk.Image], sitk.Image]  # a case's channels and its label map
BRATS_STRUCTURES = {**{name: (value,) for value, name in BRATS_LABELS.items()}, **BRATS_REGIONS}


@dataclass(frozen=True)
class Prepared:
    """One setting on disk: the nnU-Net raw dataset (training cases), the held-out images (``<case>_000C.nii.gz``)
    and each held-out case's label file."""

    raw: Path
    test_images: Path
    test_labels: dict[str, Path]
    channels: int


@dataclass(frozen=True)
class Setting:
    """A benchmark setting: its data folder under --data, nnU-Net dataset id, what is scored, how it is built."""

    key: str
    title: str
    source: str
    dataset_id: int
    structures: dict[str, tuple[int, ...]]
    build: Callable[[Path], tuple[dict[str, Case], dict[str, Case], dict]]

    @property
    def dataset_name(self) -> str:
        return f"Dataset{self.dataset_id}_{self.key.title().replace('-', '')}"

    def prepare(self, data: Path, raw_root: Path, test_root: Path) -> Prepared:
        """Write the raw dataset and the held-out cases (replacing earlier copies)."""
        train, test, meta = self.build(data / self.source)
        raw = raw_root / self.dataset_name
        for folder in (raw, test_root):
            if folder.exists():
                shutil.rmtree(folder)
        for case, (images, label) in train.items():
            for channel, image in enumerate(images):
                _write(image, raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
            _write(label, raw / "labelsTr" / f"{case}.nii.gz")
        labels = {}
        for case, (images, label) in test.items():
            for channel, image in enumerate(images):
                _write(image, test_root / "images" / f"{case}_{channel:04d}.nii.gz")
            labels[case] = _write(label, test_root / "labels" / f"{case}.nii.gz")
        doc = {**meta, "numTraining": len(train), "file_ending": ".nii.gz", "name": self.dataset_name}
        (raw / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
        return Prepared(raw, test_root / "images", labels, len(meta["channel_names"]))


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def _cord_pair(folder: Path, contrast: str) -> tuple[sitk.Image, sitk.Image]:
    image_file, label_file = CORD_FILES[contrast]
    image = sitk.DICOMOrient(sitk.ReadImage(str(folder / image_file), sitk.sitkFloat32), ORIENTATION)
    label = sitk.DICOMOrient(sitk.ReadImage(str(folder / label_file), sitk.sitkUInt8), ORIENTATION)
    return image, label


def _cord(train: str, test: str) -> Callable[[Path], tuple[dict[str, Case], dict[str, Case], dict]]:
    """A builder: train on one contrast of the SCT subject, test on the other."""

    def build(folder: Path) -> tuple[dict[str, Case], dict[str, Case], dict]:
        (image, label), (held_image, held_label) = _cord_pair(folder, train), _cord_pair(folder, test)
        meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "spinal cord": 1},
                "licence": "MIT (spinalcordtoolbox/sct_testing_data)",
                "training_data": f"SCT subject errsm_30, {train} volume (spinalcord-mri-sct)"}
        return {f"cord_{train}": ([image], label)}, {f"cord_{test}": ([held_image], held_label)}, meta

    return build


def _brats_case(case: Path) -> Case:
    mask = sitk.Cast(sitk.ReadImage(str(case / "brainmask.nii.gz")) > 0.5, sitk.sitkUInt8)
    images = [sitk.Mask(sitk.ReadImage(str(case / f"{seq}_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32), mask)
              for seq in ("Flair", "T1c")]
    return images, sitk.Cast(sitk.ReadImage(str(case / "OTMultiClass.nii.gz")), sitk.sitkUInt8)


def _brats(folder: Path) -> tuple[dict[str, Case], dict[str, Case], dict]:
    train = {case.name: _brats_case(case) for case in sorted((folder / "train").iterdir()) if case.is_dir()}
    test = {case.name: _brats_case(case) for case in sorted((folder / "validation").iterdir()) if case.is_dir()}
    meta = {"channel_names": {"0": "FLAIR", "1": "T1c"},
            "labels": {"background": 0, **{name: value for value, name in BRATS_LABELS.items()}},
            "licence": "CC BY-NC-SA 3.0 CH (non-commercial)",
            "training_data": "BraTS 2015 sample train/ (2 cases; brats2015-deepmedic-sample)"}
    return train, test, meta


SETTINGS = {
    "cord": Setting("cord", "Spinal cord MRI, leave one contrast out: train T1w, test T2w", "spinalcord-mri-sct",
                    931, CORD_STRUCTURES, _cord("T1w", "T2w")),
    "cord-reverse": Setting("cord-reverse", "Spinal cord MRI, leave one contrast out: train T2w, test T1w",
                            "spinalcord-mri-sct", 932, CORD_STRUCTURES, _cord("T2w", "T1w")),
    "brats": Setting("brats", "BraTS 2015 sample (FLAIR + T1c): train/ 2 cases, test validation/ 2 cases",
                     "brats2015-deepmedic-sample", 933, BRATS_STRUCTURES, _brats),
}
