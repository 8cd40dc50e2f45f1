"""Benchmark (issue 13): ``nnUNetv2_predict`` against ``unetseg predict`` (torch and ONNX) on one nnU-Net model.

The model is a real nnU-Net v2 model with nnU-Net's default plan for its data (default planner, 3d_fullres,
PlainConvUNet with its planned stages and 32…320 features), trained by the stock ``nnUNetTrainer`` for a handful
of iterations on each of five folds (synthetic CT: a body, two organs, a bone; nothing is downloaded). It is
imported twice into a private model folder, with fold 0 only and with all five folds, and exported to ONNX.

Each contender is a whole command in its own process, on a 256x256x200 CT, interleaved over ``--reps``
repetitions (contender order rotates per repetition): nnU-Net with ``-npp 1 -nps 1 -device cpu`` (1 fold and 5
folds, with and without TTA), and ``unetseg predict --device cpu --precision fp32`` (nnU-Net's arithmetic) with
the same folds and TTA, torch, ONNX Runtime and OpenVINO (the last two torch-free, on the same ONNX export).
Printed per configuration: the median wall time, the peak memory of the command's whole process tree (sampled
every 0.1 s; nnU-Net's worker processes count) as summed RSS and as summed PSS (shared library pages divided among
the processes mapping them), the ratio to nnU-Net, and the smallest per-label Dice between the contender's labels
and nnU-Net's. Needs ``nnunetv2`` in this interpreter (the Makefile installs it):

    python benchmarks/community_models.py --work /tmp/unetseg-community [--reps 3] [--heavy-reps 1] [--iterations 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_memory import run_measured  # sibling script

DATASET_ID, DATASET = 910, "Dataset910_BenchCT"
TRAINER, PLANS, CONFIGURATION = "nnUNetTrainer", "nnUNetPlans", "3d_fullres"
LABELS = {"background": 0, "organ": 1, "bone": 2}
TRAIN_SPACING, TRAIN_SHAPE = (1.6, 1.6, 2.0), (80, 128, 128)  # x, y, z mm; z, y, x voxels
CT_SPACING, CT_SHAPE = (0.8, 0.8, 0.8), (200, 256, 256)  # the benchmark CT: 256x256x200
CONTENDERS = ("nnunet", "torch", "onnx", "openvino")
OURS = CONTENDERS[1:]
HEAVY = "5 folds, TTA"  # 40 network passes per command: ``--heavy-reps`` may run it fewer times
CONFIGS = (("1 fold", False), ("1 fold", True), ("5 folds", False), ("5 folds", True))
BIN = Path(sys.executable).parent


def make_case(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...]):
    """A CT-like volume (HU) and its labels: air, a body ellipsoid, an organ ellipsoid (1) and a bone bar (2)."""
    zz, yy, xx = (np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape)
    z, y, x = zz[:, None, None] * spacing[2], yy[None, :, None] * spacing[1], xx[None, None, :] * spacing[0]
    half = np.array(shape) * np.array(spacing[::-1]) / 2
    body = (z / half[0]) ** 2 + (y / (0.8 * half[1])) ** 2 + (x / (0.9 * half[2])) ** 2 <= 1
    c = rng.uniform(-15, 15, 3)
    organ = ((z - c[0]) / 35) ** 2 + ((y - c[1]) / 30) ** 2 + ((x - c[2] + 30) / 40) ** 2 <= rng.uniform(0.7, 1.2)
    bone = (np.abs(y - 0.55 * half[1] * 0.8) < 12) & (np.abs(x - c[2]) < 15) & np.ones_like(z, dtype=bool)
    image = np.full(shape, -1000.0, np.float32)
    image[body] = 40.0
    image[organ & body] = 160.0
    image[bone & body] = 700.0
    image += rng.normal(0, 30, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[organ & body], label[bone & body] = 1, 2
    return image, label


def write(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def nnunet_env(work: Path) -> dict:
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_compile="false")
    env.pop("nnUNet_n_proc_DA", None)  # the planner would set torch's threads to 0
    return env


def model_folder(work: Path) -> Path:
    return work / "results" / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"


def make_model(work: Path, iterations: int, cases: int = 6) -> None:
    """Raw data, nnU-Net's default plan (3d_fullres), preprocessing, then 5 folds trained for a few iterations
    (what is already there is kept: an interrupted run resumes with the next fold)."""
    os.environ.update(nnunet_env(work))
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    if not (work / "preprocessed" / DATASET / f"{PLANS}_{CONFIGURATION}").is_dir():
        rng = np.random.default_rng(0)
        raw = work / "raw" / DATASET
        for i in range(cases):
            image, label = make_case(rng, TRAIN_SHAPE, TRAIN_SPACING)
            write(image, TRAIN_SPACING, raw / "imagesTr" / f"case{i:03d}_0000.nii.gz")
            write(label, TRAIN_SPACING, raw / "labelsTr" / f"case{i:03d}.nii.gz")
        (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                      "numTraining": cases, "file_ending": ".nii.gz"}),
                                          encoding="utf-8")
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], PLANS, configurations=[CONFIGURATION], num_processes=[1])
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 (nnU-Net's name): augment in this process
    for fold in range(5):
        if (model_folder(work) / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            continue
        torch.manual_seed(fold)
        trainer = get_trainer_from_args(DATASET, CONFIGURATION, fold, TRAINER, PLANS, device=torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, iterations, 1
        t0 = time.perf_counter()
        trainer.run_training()
        print(f"fold {fold} trained ({iterations} iterations) in {time.perf_counter() - t0:.0f} s", flush=True)


def prepare_contenders(work: Path) -> dict[str, str]:
    """The benchmark CT, and the model imported as one package per fold choice, with ONNX exports."""
    write(make_case(np.random.default_rng(99), CT_SHAPE, CT_SPACING)[0], CT_SPACING,
          work / "input" / "ct_0000.nii.gz")
    from unetseg.inference.onnx_backend import export_onnx
    from unetseg.models.catalog import Catalog
    from unetseg.models.importers import import_any

    catalog = Catalog(bundled_dir=work / "no-bundled", user_dir=work / "models")
    names = {"1 fold": "bench-ct-1fold", "5 folds": "bench-ct-5folds"}
    for folds, name in names.items():
        if not (work / "models" / name / "model.onnx").is_file():
            # the conversion alone (the CLI's import also checks lower precisions: not what is measured here)
            import_any(model_folder(work), catalog, name=name, folds=["0"] if folds == "1 fold" else None,
                       replace=True)
            export_onnx(catalog.get(name))
    return names


def command(work: Path, contender: str, folds: str, tta: bool, model: str) -> tuple[list[str], Path]:
    """The command line of one run and where its labels land."""
    out = work / "out" / f"{contender}-{folds.replace(' ', '')}-{'tta' if tta else 'notta'}"
    out.mkdir(parents=True, exist_ok=True)
    if contender == "nnunet":
        argv = [str(BIN / "nnUNetv2_predict"), "-i", str(work / "input"), "-o", str(out), "-d", DATASET, "-c",
                CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", *(["0"] if folds == "1 fold" else "01234"),
                "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        return argv + ([] if tta else ["--disable_tta"]), out / "ct.nii.gz"
    argv = [str(BIN / "unetseg"), "predict", "-m", model, "-i", str(work / "input" / "ct_0000.nii.gz"),
            "-o", str(out / "ct.nii.gz"), "--device", "cpu", "--backend", contender, "--tta" if tta else "--no-tta",
            "--precision", "fp32"]
    return argv, out / "ct.nii.gz"


def min_dice(a_path: Path, b_path: Path) -> float:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_path)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_path)))
    scores = []
    for value in (1, 2):
        x, y = a == value, b == value
        both = float(x.sum() + y.sum())
        scores.append(2 * float((x & y).sum()) / both if both else 1.0)  # absent from both: they agree
    return min(scores)


def benchmark(work: Path, reps: int, heavy_reps: int) -> dict:
    names = prepare_contenders(work)
    env = dict(nnunet_env(work), UNETSEG_MODELS_DIR=str(work / "models"))
    results: dict = {}
    for rep in range(reps):
        for folds, tta in CONFIGS:
            key = f"{folds}, {'TTA' if tta else 'no TTA'}"
            if key == HEAVY and rep >= heavy_reps:
                continue
            turn = rep % len(CONTENDERS)
            for contender in CONTENDERS[turn:] + CONTENDERS[:turn]:  # rotate who runs first
                argv, out = command(work, contender, folds, tta, names[folds])
                seconds, rss, pss = run_measured(argv, env, work / "logs" / f"{contender}-{rep}-{key}.log")
                entry = results.setdefault(key, {}).setdefault(contender, {"seconds": [], "rss": [], "pss": [],
                                                                           "out": str(out)})
                entry["seconds"].append(round(seconds, 1))
                entry["rss"].append(rss)
                entry["pss"].append(pss)
                print(f"[rep {rep + 1}/{reps}] {key:16s} {contender:6s} {seconds:7.1f} s  RSS {rss / 2**30:.2f} GiB"
                      f"  PSS {pss / 2**30:.2f} GiB", flush=True)
            for contender in OURS:
                results[key][contender]["dice"] = min_dice(Path(results[key][contender]["out"]),
                                                           Path(results[key]["nnunet"]["out"]))
    return results


def table(results: dict) -> str:
    lines = ["| configuration | `nnUNetv2_predict` | `unetseg predict` (torch) | `--backend onnx` "
             "| `--backend openvino` | Dice torch / ONNX / OpenVINO vs nnU-Net |", "|---|---|---|---|---|---|"]

    def memory(cell: dict) -> str:
        return f"{max(cell['rss']) / 2**30:.2f} GiB RSS / {max(cell['pss']) / 2**30:.2f} GiB PSS"

    for key, row in results.items():
        base = statistics.median(row["nnunet"]["seconds"])
        cells = [f"{base:.1f} s, {memory(row['nnunet'])}"]
        for contender in OURS:
            t = statistics.median(row[contender]["seconds"])
            cells.append(f"{t:.1f} s ({t / base:.2f}x), {memory(row[contender])}")
        dice = " / ".join(f"{row[contender]['dice']:.4f}" for contender in OURS)
        runs = len(row["nnunet"]["seconds"])
        lines.append(f"| {key} ({runs} run{'s' if runs > 1 else ''}) | " + " | ".join(cells) + f" | {dice} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/unetseg-community"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--heavy-reps", type=int, help=f"repetitions of '{HEAVY}' (default: --reps)")
    parser.add_argument("--iterations", type=int, default=3, help="training iterations per fold")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    make_model(work, args.iterations)
    results = benchmark(work, args.reps, args.reps if args.heavy_reps is None else args.heavy_reps)
    (work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
