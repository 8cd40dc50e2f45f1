"""The data settings of the variant comparison (`compare_variants.py`): what is trained on and what is evaluated.

- ``brats``: the BraTS 2015 sample shipped with DeepMedic (3D; FLAIR + T1c; necrosis / oedema / non-enhancing /
  enhancing), trained on ``train/`` and evaluated on ``validation/``, downsampled here to 2 mm so that 3D
  training fits a CPU budget; reported as the BraTS regions whole tumour, tumour core and enhancing tumour.
- ``isbi``: the ISBI 2012 EM membranes (2D, the original U-Net task), trained on sections 0-19 and evaluated on
  20-24; the PNG value 0 is membrane and becomes label 1; reported as membrane Dice and pixel error.
- ``synthetic_3d`` / ``synthetic_2d``: small MRI and X-ray phantoms (`unetseg.phantoms`) for the CI
  test, so the whole comparison runs in seconds without real data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BRATS_SPACING_MM = 2.0
ISBI_TRAIN = 20


@dataclass
class CaseData:
    """One case in memory: its channel images (on one grid) and its label map."""

    name: str
    images: list  # list[Image]
    label: object  # Image


@dataclass
class Setting:
    """One comparison setting: training and evaluation cases, the reported regions, and how the data were made."""

    key: str
    title: str
    spatial_dims: int
    channel_names: list[str]
    labels: dict[int, str]  # foreground label values and names
    regions: dict[str, tuple[int, ...]]  # reported region name -> label values it unites
    train: list[CaseData]
    evaluate: list[CaseData]
    source: str
    preparation: str
    pixel_error_region: str | None = None  # the region whose pixel error is reported (2D settings)
    distance_unit: str = "mm"
    anchors: list[str] = field(default_factory=list)  # published figures for this kind of task
    # CPU-sized training defaults (the command line can override them for every setting):
    gpu_memory_gb: float = 8.0  # the planner's memory budget, which sets the patch and nnU-Net's stages
    iterations_per_epoch: int = 25  # iterations between validations on the evaluation cases
    val_every: int = 1
    monitor_cases: int | None = None  # how many evaluation cases the validation curve uses (None: all)


class DataMissingError(RuntimeError):
    """The shared data a setting needs is not on this machine."""


# ----------------------------------------------------------------------------------------------- BraTS


BRATS_FOLDER = "brats2015-deepmedic-sample"
BRATS_CHANNELS = {"FLAIR": "Flair_subtrMeanDivStd.nii.gz", "T1c": "T1c_subtrMeanDivStd.nii.gz"}
BRATS_LABELS = {1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
BRATS_REGIONS = {"whole tumour": (1, 2, 3, 4), "tumour core": (1, 3, 4), "enhancing tumour": (4,)}


def brats(data_root: Path, spacing_mm: float = BRATS_SPACING_MM) -> Setting:
    """The BraTS sample: 2 training and 2 evaluation cases, images and labels resampled to `spacing_mm`."""
    folder = _require(data_root / BRATS_FOLDER)
    return Setting(
        key="brats",
        title="BraTS 2015 sample (3D MRI, FLAIR + T1c)",
        spatial_dims=3,
        channel_names=list(BRATS_CHANNELS),
        labels=dict(BRATS_LABELS),
        regions=dict(BRATS_REGIONS),
        train=[_brats_case(d, spacing_mm) for d in _case_dirs(folder / "train")],
        evaluate=[_brats_case(d, spacing_mm) for d in _case_dirs(folder / "validation")],
        source=f"{BRATS_FOLDER} (DeepMedic's BRATS 2015 sample, CC BY-NC-SA 3.0 CH; Menze et al., IEEE TMI 2015)",
        preparation=(
            f"FLAIR and T1c (already z-scored inside the brain by DeepMedic) resampled from 1 mm to "
            f"{spacing_mm:g} mm isotropic (linear), labels with per-label linear interpolation and arg-max, "
            f"so 3D training fits a CPU budget; evaluation on the {spacing_mm:g} mm grid. Train: train/ "
            "(2 cases); evaluate: validation/ (2 cases)."
        ),
        gpu_memory_gb=0.25, iterations_per_epoch=10, val_every=3, monitor_cases=1,
        anchors=[
            "nnU-Net on MSD BrainTumour (4 sequences, full resolution, 484 training cases): oedema / "
            "non-enhancing / enhancing 0.68 / 0.48 / 0.68 test Dice (nnunet-monai-notes §3.1)",
            "MONAI brats_mri_segmentation (SegResNet, BraTS 2018 training set): WT 0.903, TC 0.856, ET 0.791 "
            "validation Dice (nnunet-monai-notes §3.5)",
        ],
    )


def _brats_case(case_dir: Path, spacing_mm: float) -> CaseData:
    from unetseg import io
    from unetseg.inference.preprocessing import resample_image, resample_labels

    target = (spacing_mm,) * 3
    images = [resample_image(io.read_image(case_dir / f), target, "linear") for f in BRATS_CHANNELS.values()]
    label = io.read_image(case_dir / "OTMultiClass.nii.gz")
    values = resample_labels(np.rint(label.array).astype(np.uint8), images[0].shape)
    return CaseData(case_dir.name, images, images[0].with_array(values))


# ----------------------------------------------------------------------------------------------- ISBI 2012


ISBI_FOLDER = "isbi2012-em-membranes"


def isbi(data_root: Path, n_train: int = ISBI_TRAIN) -> Setting:
    """The ISBI 2012 EM sections with labels: the first `n_train` train the networks, the rest evaluate them."""
    folder = _require(data_root / ISBI_FOLDER / "train")
    cases = [_isbi_case(p, folder / "label" / p.name) for p in sorted((folder / "image").glob("*.png"),
                                                                       key=lambda p: int(p.stem))]
    return Setting(
        key="isbi",
        title="ISBI 2012 EM membranes (2D)",
        spatial_dims=2,
        channel_names=["EM"],
        labels={1: "membrane"},
        regions={"membrane": (1,)},
        train=cases[:n_train],
        evaluate=cases[n_train:],
        source=f"{ISBI_FOLDER} (ISBI 2012 challenge training stack via zhixuhao/unet; non-commercial; "
        "Cardona et al., PLoS Biol 2010)",
        preparation=(
            f"512×512 PNG sections read with SimpleITK at 1 pixel = 1 unit (HD95 in pixels); PNG value 0 "
            f"(membrane) is label 1, 255 (cell interior) is background. Train: sections 0-{n_train - 1}; "
            f"evaluate: sections {n_train}-{len(cases) - 1}. Pixel error = fraction of pixels whose membrane / "
            "non-membrane class is wrong (not the challenge's metric, which needs its hidden test labels)."
        ),
        pixel_error_region="membrane",
        distance_unit="px",
        gpu_memory_gb=0.1, iterations_per_epoch=10, monitor_cases=2,
        anchors=["U-Net paper (Ronneberger 2015): won ISBI 2012 on the hidden test labels with the challenge's "
                 "warping/rand/pixel errors; those are not comparable with this split, so none is quoted"],
    )


def _isbi_case(image_path: Path, label_path: Path) -> CaseData:
    from unetseg.image import Image

    image = Image.from_sitk(sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkFloat32))
    membrane = (sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) == 0).astype(np.uint8)
    return CaseData(f"section_{int(image_path.stem):02d}", [image], image.with_array(membrane[np.newaxis]))


# ----------------------------------------------------------------------------------------------- synthetic


def synthetic_3d(n_train: int = 4, n_eval: int = 2) -> Setting:
    """Small two-sequence MRI phantoms (lesion, ventricle) for the CI test."""
    from unetseg.phantoms import MRI_LABELS, mri_phantom

    def case(seed: int) -> CaseData:
        images, label = mri_phantom(shape=(16, 32, 28), spacing=(2.4, 2.4, 4.0), seed=seed)
        return CaseData(f"mri_{seed:02d}", images, label)

    return _synthetic("synthetic_3d", "Synthetic MRI phantoms (3D, T1 + T2)", 3, ["T1", "T2"],
                      {lab.value: lab.name for lab in MRI_LABELS}, case, n_train, n_eval)


def synthetic_2d(n_train: int = 4, n_eval: int = 2) -> Setting:
    """Small X-ray phantoms (two lungs) for the CI test; pixel error of both lungs, as for ISBI's membranes."""
    from unetseg.phantoms import XRAY_LABELS, xray_phantom

    def case(seed: int) -> CaseData:
        image, label = xray_phantom(shape=(64, 56), spacing=(1.4, 1.4), seed=seed)
        return CaseData(f"xray_{seed:02d}", [image], label)

    setting = _synthetic("synthetic_2d", "Synthetic X-ray phantoms (2D)", 2, ["XR"],
                         {lab.value: lab.name for lab in XRAY_LABELS}, case, n_train, n_eval)
    setting.regions["lungs"] = tuple(setting.labels)
    setting.pixel_error_region = "lungs"
    return setting


def _synthetic(key: str, title: str, dims: int, channels: list[str], labels: dict[int, str],
               make: Callable[[int], CaseData], n_train: int, n_eval: int) -> Setting:
    return Setting(
        key=key, title=title, spatial_dims=dims, channel_names=channels, labels=labels,
        regions={name: (value,) for value, name in labels.items()},
        train=[make(seed) for seed in range(n_train)],
        evaluate=[make(seed) for seed in range(n_train, n_train + n_eval)],
        source="unetseg.phantoms (synthetic, deterministic by seed)",
        preparation=f"phantom seeds 0-{n_train - 1} train, {n_train}-{n_train + n_eval - 1} evaluate",
        anchors=["synthetic check of the pipeline: no published figure applies"],
        iterations_per_epoch=5,
    )


# ----------------------------------------------------------------------------------------------- helpers


REAL_SETTINGS: dict[str, Callable[[Path], Setting]] = {"brats": brats, "isbi": isbi}
SYNTHETIC_SETTINGS: dict[str, Callable[[], Setting]] = {"synthetic_3d": synthetic_3d, "synthetic_2d": synthetic_2d}


def _require(folder: Path) -> Path:
    if not folder.is_dir():
        raise DataMissingError(f"{folder} is missing: the shared data is not on this machine. Point --data-root at the "
                          "folder holding it, or run with --synthetic.")
    return folder


def _case_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in _require(folder).iterdir() if p.is_dir())
    if not dirs:
        raise DataMissingError(f"{folder} holds no case folders.")
    return dirs
