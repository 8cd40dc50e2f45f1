"""Build the training folders of the bundled models from ../shared/data, outside the repository.

One nnU-Net-v2-raw-format folder per bundled model (``dataset.json``, ``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``), plus ``imagesTs``/``labelsTs`` with the held-out cases where any exist. Every
folder is rebuilt deterministically from the shared data, so the model cards can be recomputed anywhere.

    python benchmarks/bundled_datasets.py [NAME ...] [--leave-out KEY] [--list] [--data ../shared/data]
                                          [--out /work/bundled-data] [--samples]

A model's data is a list of groups (subjects, contrasts, patients; ``--list`` shows them). NAME alone trains on
every group; ``NAME --leave-out KEY`` (or the folder name ``NAME-leave-out-KEY``) builds the leave-one-out
variant whose imagesTs holds group KEY, never in its imagesTr. The shipped model trains on the first, the card's
held-out figure comes from the second. ``BUNDLES`` says what each model holds and leaves unused; the groups are
built per modality in bundled_ct_cases.py, bundled_mr_cases.py and bundled_xray_cases.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundled_cases import LEAVE_OUT, Bundle, Split, arrange, leave_out_keys, read_image  # sibling scripts
from bundled_ct_cases import CT_ABDOMEN_LABELS, SPLEEN_LABELS, TS, ct_abdomen_groups, ct_spleen_groups
from bundled_mr_cases import (
    BRAIN_LABELS,
    CORD_LABELS,
    CORD_NOT_USED,
    brain_groups,
    brain_template,
    spinalcord_groups,
)
from bundled_xray_cases import XR_LABELS, XR_SAMPLE_ANGLE, drr, lung_lobes, xray_groups

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = Path("/work/bundled-data")
SAMPLE_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "SampleData"


def write_dataset(folder: Path, bundle: Bundle, split: Split) -> Path:
    """Write an nnU-Net v2 raw folder (the project's writer) plus imagesTs/labelsTs and provenance keys.

    Replaces `folder`; the extra dataset.json keys (licence, label colours and terminology, how the held-out
    cases were made, what data is left unused) are ignored by nnU-Net and read by `bundled_models.py`.
    """
    from unetseg.image import Image
    from unetseg.training.dataset_checks import ensure_valid
    from unetseg.training.datasets import write_nnunet_dataset

    if folder.exists():
        shutil.rmtree(folder)

    def oriented(image: sitk.Image) -> sitk.Image:  # axis permutation and flips only: no interpolation
        return image if bundle.orientation is None else sitk.DICOMOrient(image, bundle.orientation)

    dataset = write_nnunet_dataset(
        folder, [([Image.from_sitk(oriented(c.image))], Image.from_sitk(oriented(c.label))) for c in split.train],
        [bundle.channel],
        {label.value: label.name for label in bundle.labels}, names=[c.name for c in split.train],
    )
    ensure_valid(dataset)
    for case in split.heldout:
        for sub, img, file in (("imagesTs", case.image, f"{case.name}_0000"), ("labelsTs", case.label, case.name)):
            (folder / sub).mkdir(exist_ok=True)
            sitk.WriteImage(oriented(img), str(folder / sub / f"{file}.nii.gz"), True)
    doc = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    doc.update(
        name=split.folder, description=bundle.title, licence=split.licence, reference=split.attribution,
        source=split.source, training_data=split.training_data, heldout_data=split.heldout_data,
        orientation=bundle.orientation,
        label_details=[label.to_dict() for label in bundle.labels],
        **({"data_not_used": bundle.not_used} if bundle.not_used else {}),
    )
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------ registry

BUNDLES: dict[str, Bundle] = {
    b.name: b
    for b in (
        Bundle("ct-abdomen-fast", "CT abdomen, fast (3 mm): spleen, kidneys, liver, stomach, urinary bladder", "CT",
               "CT", CT_ABDOMEN_LABELS, ct_abdomen_groups,
               "MSD spleen2 as a training case: only its spleen is labelled, while the left kidney and the stomach "
               "lie in the crop unlabelled (the trainer has no ignore label, so they would be taught as background); "
               "it is held out instead"),
        Bundle("ct-spleen", "CT spleen", "CT", "CT", SPLEEN_LABELS, ct_spleen_groups),
        Bundle("mr-spinalcord-t2", "MRI spinal cord (T2w and T1w)", "MR", "MR", CORD_LABELS, spinalcord_groups,
               CORD_NOT_USED),
        Bundle("mr-brain-tissue-t1", "MRI brain tissue (T1): grey and white matter", "MR", "T1", BRAIN_LABELS,
               brain_groups),
        Bundle("xr-lungs-drr", "X-ray lung fields (2D), trained on synthetic radiographs", "XR", "XR", XR_LABELS,
               xray_groups, orientation=None),
    )
}


def parse_folder(folder: str) -> tuple[str, str | None]:
    """The bundle name and left-out group of a training folder's name (``NAME`` or ``NAME-leave-out-KEY``)."""
    name, _, key = folder.partition(LEAVE_OUT)
    if name not in BUNDLES:
        raise ValueError(f"Unknown bundled model {name!r}; choose from {', '.join(BUNDLES)}.")
    return name, key or None


def build(folder: str, data: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT) -> Path:
    """Build one training folder `out/folder` (a bundle name, or ``NAME-leave-out-KEY``) from the shared data."""
    name, leave_out = parse_folder(folder)
    bundle = BUNDLES[name]
    split = arrange(name, bundle.groups(data), leave_out)
    return write_dataset(out / split.folder, bundle, split)


def leave_out_keys_of(name: str, data: Path = DEFAULT_DATA) -> list[str]:
    """The groups bundle `name` has leave-one-out builds for (none when fewer than two of its groups train)."""
    return leave_out_keys(BUNDLES[name].groups(data))


def describe(name: str, data: Path) -> str:
    """A bundle's groups (cases that train, cases that test) and its leave-one-out folder names."""
    groups = BUNDLES[name].groups(data)
    lines = [f"{name}:"]
    for g in groups:
        lines.append(f"  {g.key:<14} train {', '.join(c.name for c in g.train) or '-'}; "
                     f"test {', '.join(c.name for c in g.test) or '-'}")
    keys = leave_out_keys(groups)
    lines.append("  leave-one-out: " + (", ".join(f"{name}{LEAVE_OUT}{k}" for k in keys) or "none"))
    return "\n".join(lines)


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
    """Build the named folders (default all), their leave-one-out variants with --leave-out, samples with --samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*",
                        help=f"bundles or NAME{LEAVE_OUT}KEY folders (default all: {', '.join(BUNDLES)})")
    parser.add_argument("--leave-out", metavar="KEY", help="build each NAME's variant that holds group KEY out")
    parser.add_argument("--list", action="store_true", help="list each bundle's groups and leave-one-out folders")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the dataset folders")
    parser.add_argument("--samples", action="store_true", help="also (re)write the generated samples in SampleData")
    args = parser.parse_args(argv)
    names = args.names or list(BUNDLES)
    if args.list:
        print("\n".join(describe(parse_folder(n)[0], args.data) for n in names))
        return 0
    if args.leave_out:
        if not args.names:
            parser.error("--leave-out needs the NAME of the bundle to leave a group out of")
        names = [f"{n}{LEAVE_OUT}{args.leave_out}" for n in names]
    for name in names:
        try:
            folder = build(name, args.data, args.out)
        except ValueError as error:  # an unknown model or group: say so, without a traceback
            parser.error(str(error))
        ds = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        print(f"{folder.name}: {folder} ({ds['numTraining']} training cases, "
              f"{len(list((folder / 'imagesTs').glob('*.nii.gz')))} held out)")
    if args.samples:
        print("Samples:", *write_samples(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
