"""Build the training folders of the bundled models from ../shared/data, outside the repository.

One nnU-Net-v2-raw-format folder per bundled model (``dataset.json``, ``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``), plus ``imagesTs``/``labelsTs`` with the held-out cases where any exist. Every
folder is rebuilt deterministically from the shared data, so the model cards can be recomputed anywhere.

    python benchmarks/bundled_datasets.py [--data ../shared/data] [--out /work/bundled-data] [NAME ...]

What each folder holds, and how honest its held-out data is, is stated in ``BUNDLES`` (it goes into the cards);
the cases themselves are built per modality in bundled_ct_cases.py, bundled_mr_cases.py and bundled_xray_cases.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundled_cases import Bundle, Case, read_image  # sibling scripts
from bundled_ct_cases import (
    CT_ABDOMEN_LABELS,
    SPLEEN,
    SPLEEN_LABELS,
    TS,
    TS_ATTRIBUTION,
    TS_LICENCE,
    build_ct_abdomen,
    build_ct_spleen,
)
from bundled_mr_cases import (
    BRAIN_LABELS,
    BRAIN_SPACING,
    BRAIN_TRAIN_VARIANTS,
    CORD_HELDOUT_SLICES,
    CORD_LABELS,
    MNI,
    MNI_LICENCE,
    SCT,
    brain_template,
    build_brain,
    build_spinalcord,
)
from bundled_xray_cases import (
    XR_HELDOUT_ANGLES,
    XR_LABELS,
    XR_SAMPLE_ANGLE,
    XR_TRAIN_ANGLES,
    build_xray,
    drr,
    lung_lobes,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = Path("/work/bundled-data")
SAMPLE_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "SampleData"


def write_dataset(folder: Path, bundle: Bundle, train: list[Case], heldout: list[Case]) -> Path:
    """Write an nnU-Net v2 raw folder (the project's writer) plus imagesTs/labelsTs and provenance keys.

    Replaces `folder`; the extra dataset.json keys (licence, label colours and terminology, how the held-out
    cases were made) are ignored by nnU-Net and read by `bundled_models.py`.
    """
    from unetseg.image import Image
    from unetseg.training.dataset_checks import ensure_valid
    from unetseg.training.datasets import write_nnunet_dataset

    if folder.exists():
        shutil.rmtree(folder)
    dataset = write_nnunet_dataset(
        folder, [([Image.from_sitk(c.image)], Image.from_sitk(c.label)) for c in train], [bundle.channel],
        {label.value: label.name for label in bundle.labels}, names=[c.name for c in train],
    )
    ensure_valid(dataset)
    for case in heldout:
        for sub, img, file in (("imagesTs", case.image, f"{case.name}_0000"), ("labelsTs", case.label, case.name)):
            (folder / sub).mkdir(exist_ok=True)
            sitk.WriteImage(img, str(folder / sub / f"{file}.nii.gz"), True)
    doc = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    doc.update(
        name=bundle.name, description=bundle.title, licence=bundle.licence, reference=bundle.attribution,
        source=bundle.source, training_data=bundle.training_data, heldout_data=bundle.heldout_data,
        label_details=[label.to_dict() for label in bundle.labels],
    )
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------ registry

SPLEEN_ATTRIBUTION = (
    "Medical Segmentation Decathlon Task09_Spleen, case spleen2 (MSKCC), cropped by the ivadomed team; manual "
    "label. Simpson et al. 2019, arXiv:1902.09063. CC BY-SA 4.0: derivatives are shared under the same licence."
)

BUNDLES: dict[str, Bundle] = {
    b.name: b
    for b in (
        Bundle(
            "ct-abdomen-fast", "CT abdomen, fast (3 mm): spleen, kidneys, liver, stomach, urinary bladder", "CT",
            "CT", TS, TS_LICENCE, TS_ATTRIBUTION, CT_ABDOMEN_LABELS,
            "1 CT (example_ct, abdomen and pelvis, 3 mm) with TotalSegmentator `--fast -fs` labels (model output, "
            "not manual)",
            "spleen only: MSD spleen2 crop (another patient, manual label, 0.8 x 0.8 x 5 mm); no held-out CT for "
            "the other organs",
            build_ct_abdomen,
        ),
        Bundle(
            "ct-spleen", "CT spleen", "CT", "CT", SPLEEN, "CC BY-SA 4.0", SPLEEN_ATTRIBUTION, SPLEEN_LABELS,
            "1 CT crop (MSD spleen2, 0.8 x 0.8 x 5 mm, resampled to 1.6 x 1.6 x 5 mm for training) with its manual "
            "spleen label",
            "TotalSegmentator example_ct_sm (another patient, upper abdomen, 3 mm) with TotalSegmentator's spleen "
            "(model output, not manual)",
            build_ct_spleen,
        ),
        Bundle(
            "mr-spinalcord-t2", "MRI spinal cord (T2)", "MR", "T2", SCT, "MIT",
            "Spinal Cord Toolbox testing data, subject errsm_30, manual label. Copyright (c) 2014 NeuroPoly, MIT.",
            CORD_LABELS,
            f"1 T2 volume (SCT errsm_30, 1 mm) without its most inferior {CORD_HELDOUT_SLICES} mm",
            f"the most inferior {CORD_HELDOUT_SLICES} mm of the same T2 volume (same subject, other vertebral "
            "levels, never seen in training)",
            build_spinalcord,
        ),
        Bundle(
            "mr-brain-tissue-t1", "MRI brain tissue (T1): grey and white matter", "MR", "T1", MNI, MNI_LICENCE,
            "MNI ICBM152 2009a nonlinear symmetric template (as shipped in nilearn), McConnell Brain Imaging Centre. "
            "Fonov et al., NeuroImage 2011; Collins et al. 1999.",
            BRAIN_LABELS,
            f"the MNI152 T1 template at {BRAIN_SPACING:g} mm and {BRAIN_TRAIN_VARIANTS - 1} copies with random bias "
            "field, gamma and noise; labels = GM/WM probability maps thresholded at 0.5 (the larger of the two)",
            "none: the only held-out case is the template with an unseen bias field (same anatomy)",
            build_brain,
        ),
        Bundle(
            "xr-lungs-drr", "X-ray lung fields (2D), trained on synthetic radiographs", "XR", "XR", TS, TS_LICENCE,
            TS_ATTRIBUTION, XR_LABELS,
            f"{len(XR_TRAIN_ANGLES)} digitally reconstructed radiographs of ONE CT (TotalSegmentator example_ct, "
            f"rotations {', '.join(f'{a:g}' for a in XR_TRAIN_ANGLES)} degrees about the body axis); labels = "
            "projected TotalSegmentator lung lobes. The CT covers only the lung bases.",
            f"{len(XR_HELDOUT_ANGLES)} radiographs of the same CT at unseen rotations "
            f"({', '.join(f'{a:g}' for a in XR_HELDOUT_ANGLES)} degrees)",
            build_xray,
        ),
    )
}


def build(name: str, data: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT) -> Path:
    """Build one bundled model's training folder `out/name` from the shared data; returns the folder."""
    if name not in BUNDLES:
        raise ValueError(f"Unknown bundled model {name!r}; choose from {', '.join(BUNDLES)}.")
    bundle = BUNDLES[name]
    train, heldout = bundle.build(data, out)
    return write_dataset(out / name, bundle, train, heldout)


def write_samples(data: Path, sample_dir: Path = SAMPLE_DIR) -> list[Path]:
    """(Re)write the generated samples: the DRR at XR_SAMPLE_ANGLE (2D NRRD) and the 2 mm MNI152 T1 (NIfTI)."""
    case = drr(read_image(data / TS / "example_ct.nii.gz"), lung_lobes(data), XR_SAMPLE_ANGLE)
    t1, tissue = brain_template(data)
    files = [
        (case.image[:, :, 0], "xr_drr_lungs.nrrd"),
        (case.label[:, :, 0], "xr_drr_lungs_seg.nrrd"),
        (sitk.Cast(sitk.Clamp(sitk.Round(t1), sitk.sitkFloat32, 0, 255), sitk.sitkUInt8), "mni152_t1_2mm.nii.gz"),
        (tissue, "mni152_t1_2mm_tissue.nii.gz"),
    ]
    for img, name in files:
        sitk.WriteImage(img, str(sample_dir / name), True)
    return [sample_dir / name for _, name in files]


def main(argv: list[str] | None = None) -> int:
    """Build the named folders (default all), and the generated samples with --samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"which folders (default all: {', '.join(BUNDLES)})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the dataset folders")
    parser.add_argument("--samples", action="store_true", help="also (re)write the generated samples in SampleData")
    args = parser.parse_args(argv)
    for name in args.names or BUNDLES:
        folder = build(name, args.data, args.out)
        ds = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        print(f"{name}: {folder} ({ds['numTraining']} training cases, "
              f"{len(list((folder / 'imagesTs').glob('*.nii.gz')))} held out)")
    if args.samples:
        print("Samples:", *write_samples(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
