"""Train on real data within a stated CPU time budget and report held-out figures (prints; not a CI test).

Two tasks from ``../shared/data`` (both **non-commercial** data: the packages go to ``--work``, outside the
repository, and must never be committed):

- ISBI 2012 EM membranes (the U-Net paper's task): a 2D U-Net trained on sections 0–19, evaluated on 20–24:
  pixel error (share of wrongly classified pixels, membrane vs. cell) and Dice of the membrane class.
- BraTS 2015 sample (FLAIR + T1c → necrosis, oedema, non-enhancing and enhancing tumour): an nnU-Net-planned
  3D network trained on ``train/`` (2 cases), evaluated on ``validation/`` (2 cases): Dice of the BraTS
  regions whole tumour (labels 1–4), tumour core (1, 3, 4) and enhancing tumour (4). The images are
  multiplied by their brain masks first, so background is 0 as in skull-stripped BraTS releases.

The held-out cases are the trainer's validation split (monitoring only: the package holds the final weights,
nothing is selected on them). Both run the project's own trainer (`training.train`) and predictor
(`inference.segment`) with the time budgets given on the command line; the figures depend on the budget and
the machine, which are printed.

    python benchmarks/train_real.py [--data ../shared/data] [--work /tmp/unetseg-train-real]
                                    [--isbi-minutes 5] [--brats-minutes 8] [--only isbi|brats] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_WORK = Path("/tmp/unetseg-train-real")
ISBI_TRAIN, ISBI_TEST = range(0, 20), range(20, 25)
BRATS_LABELS = {1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
BRATS_REGIONS = {"whole tumour": (1, 2, 3, 4), "tumour core": (1, 3, 4), "enhancing tumour": (4,)}


def _write(image: sitk.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return str(path)


# ------------------------------------------------------------------------------------------------ ISBI 2012


def isbi_dataset(data: Path, work: Path) -> tuple[Path, list[str], list[tuple[Path, np.ndarray]]]:
    """A case list of all 25 sections (membrane = 1), the held-out names (20–24) and their (image, mask)."""
    src = data / "isbi2012-em-membranes" / "train"
    folder = work / "isbi-data"
    cases, heldout = [], []
    for i in [*ISBI_TRAIN, *ISBI_TEST]:
        image = sitk.Cast(sitk.ReadImage(str(src / "image" / f"{i}.png")), sitk.sitkFloat32)
        membrane = (sitk.GetArrayFromImage(sitk.ReadImage(str(src / "label" / f"{i}.png"))) == 0).astype(np.uint8)
        label = sitk.GetImageFromArray(membrane)
        label.CopyInformation(image)
        image_path = _write(image, folder / f"section_{i:02d}.nrrd")
        cases.append({"name": f"section_{i:02d}", "image": image_path,
                      "label": _write(label, folder / f"section_{i:02d}_label.nrrd")})
        if i in ISBI_TEST:
            heldout.append((Path(image_path), membrane))
    doc = {"cases": cases, "channel_names": ["EM"], "labels": {"1": "membrane"}, "modality": "XR",
           "name": "isbi2012-em-membranes-unet", "licence": "ISBI 2012 challenge terms: non-commercial",
           "description": "2D U-Net for EM membranes (research model; marked XR only because the manifest "
                          "knows CT/MR/XR)",
           "training_data": "ISBI 2012 EM sections 0-19 (shared/data/isbi2012-em-membranes)"}
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return folder, [f"section_{i:02d}" for i in ISBI_TEST], heldout


def evaluate_isbi(package: Path, heldout: list[tuple[Path, np.ndarray]]) -> dict:
    """Pixel error and membrane Dice over the held-out sections (pooled pixels), plus per-section Dice."""
    from unetseg.evaluation.metrics import dice
    from unetseg.inference.predictor import segment
    from unetseg.io import read_image

    wrong, total, inter, sizes, per_section = 0, 0, 0, 0, []
    for path, membrane in heldout:
        pred = segment(read_image(path), str(package), device="cpu").image.array[0] == 1
        ref = membrane.astype(bool)
        wrong += int((pred != ref).sum())
        total += ref.size
        inter += int((pred & ref).sum())
        sizes += int(pred.sum() + ref.sum())
        per_section.append(round(dice(pred, ref), 4))
    membrane = sum(int(m.sum()) for _, m in heldout)
    return {"pixel_error": round(wrong / total, 4), "membrane_dice": round(2 * inter / sizes, 4),
            "pixel_error_if_all_cell": round(membrane / total, 4),  # the trivial baseline to beat
            "membrane_dice_per_section": per_section}


# ------------------------------------------------------------------------------------------------ BraTS


def brats_dataset(data: Path, work: Path) -> tuple[Path, list[str], dict[str, tuple[list[Path], Path]]]:
    """A case list of all four cases (FLAIR, T1c masked to the brain), the validation names, their files."""
    src = data / "brats2015-deepmedic-sample"
    folder = work / "brats-data"
    cases, validation = [], {}
    for split in ("train", "validation"):
        for case in sorted((src / split).iterdir()):
            mask = sitk.ReadImage(str(case / "brainmask.nii.gz")) > 0.5
            images = []
            for seq in ("Flair", "T1c"):
                image = sitk.ReadImage(str(case / f"{seq}_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
                masked = sitk.Mask(image, sitk.Cast(mask, sitk.sitkUInt8))
                images.append(_write(masked, folder / case.name / f"{seq}.nii.gz"))
            label = _write(sitk.Cast(sitk.ReadImage(str(case / "OTMultiClass.nii.gz")), sitk.sitkUInt8),
                           folder / case.name / "label.nii.gz")
            cases.append({"name": case.name, "images": images, "label": label})
            if split == "validation":
                validation[case.name] = ([Path(p) for p in images], Path(label))
    doc = {"cases": cases, "channel_names": ["FLAIR", "T1c"], "labels": {str(k): v for k, v in BRATS_LABELS.items()},
           "modality": "MR", "name": "brats2015-sample-nnunet", "licence": "CC BY-NC-SA 3.0 CH (non-commercial)",
           "training_data": "BraTS 2015 sample train/ (2 cases; shared/data/brats2015-deepmedic-sample)"}
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return folder, sorted(validation), validation


def evaluate_brats(package: Path, validation: dict[str, tuple[list[Path], Path]]) -> dict:
    """Dice of the BraTS regions per validation case and their mean."""
    from unetseg.evaluation.metrics import dice
    from unetseg.inference.predictor import segment
    from unetseg.io import read_image, read_label_image

    per_case = {}
    for name, (images, label) in validation.items():
        pred = segment([read_image(p) for p in images], str(package), device="cpu").image.array
        ref = read_label_image(label).image.array
        per_case[name] = {region: round(dice(np.isin(pred, values), np.isin(ref, values)), 4)
                          for region, values in BRATS_REGIONS.items()}
    means = {region: round(float(np.mean([c[region] for c in per_case.values()])), 4) for region in BRATS_REGIONS}
    return {"mean": means, "per_case": per_case}


# ------------------------------------------------------------------------------------------------ driver


def run_task(name: str, dataset: Path, out: Path, minutes: float, options: dict, cache: Path) -> tuple[Path, dict]:
    """Train one task under its time budget; return the package folder and timing figures."""
    from unetseg.jobs.train import print_progress
    from unetseg.training.trainer import train

    if out.exists():
        shutil.rmtree(out)
    wall, cpu = time.perf_counter(), time.process_time()
    package = train(dataset, out, time_budget_min=minutes, device="cpu", progress=print_progress, cache_dir=cache,
                    command=f"benchmarks/train_real.py ({name})", **options)
    prov = package.provenance
    return package.path, {
        "budget_min": minutes, "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s_process": round(time.process_time() - cpu, 1), "epochs": prov["epochs"],
        "iterations": prov["iterations"], "variant": package.variant, "patch_size": package.inference["patch_size"],
        "network": {k: package.network_config.get(k) for k in ("features", "filters", "width") if k in
                    package.network_config},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data copies, packages, results (not the repo)")
    parser.add_argument("--isbi-minutes", type=float, default=5.0)
    parser.add_argument("--brats-minutes", type=float, default=8.0)
    parser.add_argument("--only", choices=["isbi", "brats"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"No shared data at {args.data}; nothing to do.", file=sys.stderr)
        return 1
    if args.work.resolve().is_relative_to(REPO_ROOT):
        parser.error("--work must be outside the repository: these weights are trained on non-commercial data.")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
                                f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)"}
    cache = args.work / "cache"
    if args.only in (None, "isbi"):
        dataset, test_names, heldout = isbi_dataset(args.data, args.work)
        options = {"variant": "unet", "width": 0.25, "patch_size": [256, 256], "batch_size": 4,
                   "iterations_per_epoch": 50, "val_cases": test_names, "val_every": 1000}
        package, timing = run_task("isbi", dataset, args.work / "isbi-unet", args.isbi_minutes, options, cache)
        results["isbi2012"] = {**timing, **evaluate_isbi(package, heldout), "package": str(package)}
        print(json.dumps({"isbi2012": results["isbi2012"]}, indent=2), flush=True)
    if args.only in (None, "brats"):
        dataset, val_names, validation = brats_dataset(args.data, args.work)
        options = {"variant": "nnunet", "gpu_memory_gb": 1.0, "width": 0.5, "iterations_per_epoch": 50,
                   "val_cases": val_names, "val_every": 1000}
        package, timing = run_task("brats", dataset, args.work / "brats-nnunet", args.brats_minutes, options, cache)
        results["brats2015_sample"] = {**timing, **evaluate_brats(package, validation), "package": str(package)}
        print(json.dumps({"brats2015_sample": results["brats2015_sample"]}, indent=2), flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
