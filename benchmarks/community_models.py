"""Benchmark (issue 13): ``nnUNetv2_predict`` against ``unetseg predict`` (torch, ONNX Runtime, OpenVINO) on one model.

The model is a real nnU-Net v2 model with nnU-Net's default plan for its data (default planner, 3d_fullres,
PlainConvUNet with its planned stages and 32…320 features), trained by the stock ``nnUNetTrainer`` on synthetic CT
(a body, an organ, a bone; nothing is downloaded): fold 0 from scratch for ``--epochs`` x ``--iterations``
iterations, folds 1-4 from fold 0's weights (nnU-Net's pretrained-weights start) for ``--finetune`` iterations
each. It is imported twice into a private model folder, with fold 0 only and with all five folds, exported to ONNX
and checked for lower precisions as ``unetseg models validate-precision`` does (an import alone keeps nnU-Net's fp32:
a lower precision is the user's opt-in).

Each contender is a whole command in its own process, on a 256x256x200 CT, interleaved over ``--reps``
repetitions (contender order rotates per repetition): nnU-Net with ``-npp 1 -nps 1 -device cpu`` (1 fold and 5
folds, with and without TTA), and ``unetseg predict --device cpu`` with the same folds and TTA on torch, ONNX
Runtime, OpenVINO and ONNX Runtime's OpenVINO build (``onnx-openvino``: ``--backend onnx`` with the
``onnxruntime-openvino`` build in ``--ort-openvino`` first on PYTHONPATH; the last three torch-free, on the same ONNX
export), each with ``--precision fp32`` (nnU-Net's
arithmetic) and ``--precision auto`` (the default: a lower precision where the check validated it on that engine
and this CPU computes it natively). Printed per configuration and command: what ran (engine, precision), the
median wall time and its ratio to nnU-Net's, the peak memory of the command's whole process tree (sampled every
0.1 s; nnU-Net's worker processes count) as summed RSS and as summed PSS (shared library pages divided among the
processes mapping them), and the smallest per-label Dice between the command's labels and nnU-Net's. Needs
``nnunetv2`` in this interpreter (the Makefile installs it):

    python benchmarks/community_models.py --work /tmp/unetseg-community [--reps 3] [--heavy-reps 1] [--ours ...]
        [--validate-on-case]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
# ours: "backend precision"; fp32 is nnU-Net's arithmetic, auto what `unetseg predict` runs by default (a lower
# precision where validate-precision validated it on that engine and this CPU computes it natively)
OURS = tuple(f"{backend} {precision}" for precision in ("fp32", "auto")
             for backend in ("torch", "onnx", "openvino", "onnx-openvino"))  # fmt: skip
ORT_OPENVINO = Path(sys.prefix) / "ort-openvino"  # where the Makefile sets ONNX Runtime's OpenVINO build aside
ENGINE_LINE = re.compile(r"engine: (\S+) .*?precision (\w+)")
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


def make_model(work: Path, iterations: int, epochs: int, finetune: int, cases: int = 6) -> None:
    """Raw data, nnU-Net's default plan (3d_fullres), preprocessing, then five folds: fold 0 trained from scratch
    for ``epochs`` x ``iterations`` iterations (nnU-Net's poly learning rate over those epochs), folds 1-4 from
    fold 0's weights (nnU-Net's ``-pretrained_weights``) for ``finetune`` iterations each, so that every fold is
    a confident network at a CPU cost this machine affords (what is already there is kept: an interrupted run
    resumes with the next fold)."""
    os.environ.update(nnunet_env(work))
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
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
    torch.set_num_threads(os.cpu_count() or 1)  # as nnUNetv2_train does on the CPU (preprocessing lowered it)
    first = model_folder(work) / "fold_0" / "checkpoint_final.pth"
    for fold in range(5):
        if (model_folder(work) / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            continue
        torch.manual_seed(fold)
        trainer = get_trainer_from_args(DATASET, CONFIGURATION, fold, TRAINER, PLANS, device=torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch = (epochs, iterations) if fold == 0 else (1, finetune)
        trainer.num_val_iterations_per_epoch = 1
        if fold:
            trainer.initialize()
            load_pretrained_weights(trainer.network, str(first), verbose=False)
        t0 = time.perf_counter()
        trainer.run_training()
        print(f"fold {fold} trained ({trainer.num_epochs} x {trainer.num_iterations_per_epoch} iterations) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


def prepare_contenders(work: Path, on_case: bool) -> dict[str, str]:
    """The benchmark CT, and the model imported as one package per fold choice, with ONNX exports, checked for
    lower precisions on the synthetic phantom (``validate-precision NAME``) or, with ``on_case``, on another CT of
    the benchmark's kind (``validate-precision NAME --image``: the user's own case; never the measured CT)."""
    write(make_case(np.random.default_rng(99), CT_SHAPE, CT_SPACING)[0], CT_SPACING,
          work / "input" / "ct_0000.nii.gz")
    from unetseg.inference.onnx_backend import export_onnx
    from unetseg.io import read_images
    from unetseg.models.catalog import Catalog
    from unetseg.models.importers import import_any
    from unetseg.models.precision_check import check_precisions

    case = work / "validation" / "ct_0000.nii.gz"
    if on_case:
        write(make_case(np.random.default_rng(98), CT_SHAPE, CT_SPACING)[0], CT_SPACING, case)
    catalog = Catalog(bundled_dir=work / "no-bundled", user_dir=work / "models")
    names = {"1 fold": "bench-ct-1fold", "5 folds": "bench-ct-5folds"}
    for folds, name in names.items():
        if not (work / "models" / name / "model.onnx").is_file():
            import_any(model_folder(work), catalog, name=name, folds=["0"] if folds == "1 fold" else None,
                       replace=True)
            export_onnx(catalog.get(name))
        if on_case or not catalog.get(name).inference.get("precision"):
            check_precisions(catalog.get(name), report=print, images=read_images([case]) if on_case else None)
    return names


def command(work: Path, contender: str, folds: str, tta: bool, model: str) -> tuple[list[str], Path]:
    """The command line of one run and where its labels land."""
    out = work / "out" / f"{contender.replace(' ', '-')}-{folds.replace(' ', '')}-{'tta' if tta else 'notta'}"
    out.mkdir(parents=True, exist_ok=True)
    if contender == "nnunet":
        argv = [str(BIN / "nnUNetv2_predict"), "-i", str(work / "input"), "-o", str(out), "-d", DATASET, "-c",
                CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", *(["0"] if folds == "1 fold" else "01234"),
                "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        return argv + ([] if tta else ["--disable_tta"]), out / "ct.nii.gz"
    backend, precision = contender.split()
    argv = [str(BIN / "unetseg"), "predict", "-m", model, "-i", str(work / "input" / "ct_0000.nii.gz"),
            "-o", str(out / "ct.nii.gz"), "--device", "cpu", "--backend", backend.removesuffix("-openvino"),
            "--tta" if tta else "--no-tta",
            "--precision", precision]
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


def benchmark(work: Path, reps: int, heavy_reps: int, ours: tuple[str, ...], on_case: bool,
              ort_openvino: Path) -> dict:  # fmt: skip
    names = prepare_contenders(work, on_case)
    env = dict(nnunet_env(work), UNETSEG_MODELS_DIR=str(work / "models"))
    # ONNX Runtime's OpenVINO build shadows onnxruntime for the onnx-openvino commands
    ov_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ort_openvino), env.get("PYTHONPATH")])))
    contenders = ("nnunet", *ours)
    results: dict = {}
    for rep in range(reps):
        for folds, tta in CONFIGS:
            key = f"{folds}, {'TTA' if tta else 'no TTA'}"
            if key == HEAVY and rep >= heavy_reps:
                continue
            turn = rep % len(contenders)
            for contender in contenders[turn:] + contenders[:turn]:  # rotate who runs first
                argv, out = command(work, contender, folds, tta, names[folds])
                log = work / "logs" / f"{contender.replace(' ', '-')}-{rep}-{key}.log"
                seconds, rss, pss = run_measured(argv, ov_env if contender.startswith("onnx-openvino") else env, log)
                entry = results.setdefault(key, {}).setdefault(contender, {"seconds": [], "rss": [], "pss": [],
                                                                           "out": str(out)})
                entry["seconds"].append(round(seconds, 1))
                entry["rss"].append(rss)
                entry["pss"].append(pss)
                engine = ENGINE_LINE.search(log.read_text(encoding="utf-8", errors="replace"))
                if engine:  # what ran: "onnxruntime int8"
                    entry["ran"] = f"{engine.group(1)} {engine.group(2)}"
                print(f"[rep {rep + 1}/{reps}] {key:16s} {contender:14s} {seconds:7.1f} s  RSS {rss / 2**30:.2f} GiB"
                      f"  PSS {pss / 2**30:.2f} GiB  {entry.get('ran', '')}", flush=True)
            for contender in ours:
                results[key][contender]["dice"] = min_dice(Path(results[key][contender]["out"]),
                                                           Path(results[key]["nnunet"]["out"]))
    return results


def table(results: dict) -> str:
    """One row per configuration and command: median wall time, its ratio to nnU-Net's, peak memory, Dice."""
    lines = ["| configuration | command (what ran) | wall time | vs nnU-Net | peak RSS / PSS | min Dice vs nnU-Net |",
             "|---|---|---|---|---|---|"]
    for key, row in results.items():
        base = statistics.median(row["nnunet"]["seconds"])
        runs = len(row["nnunet"]["seconds"])
        for contender, cell in row.items():
            t = statistics.median(cell["seconds"])
            name = "`nnUNetv2_predict`" if contender == "nnunet" else f"`{contender}` ({cell.get('ran', '?')})"
            memory = f"{max(cell['rss']) / 2**30:.2f} / {max(cell['pss']) / 2**30:.2f} GiB"
            dice = f"{cell['dice']:.4f}" if "dice" in cell else "—"
            lines.append(f"| {key} ({runs} run{'s' if runs > 1 else ''}) | {name} | {t:.1f} s | {t / base:.2f}x "
                         f"| {memory} | {dice} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/unetseg-community"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--heavy-reps", type=int, help=f"repetitions of '{HEAVY}' (default: --reps)")
    parser.add_argument("--epochs", type=int, default=3, help="fold 0's training epochs")
    parser.add_argument("--iterations", type=int, default=10, help="fold 0's iterations per epoch")
    parser.add_argument("--finetune", type=int, default=3, help="iterations of folds 1-4 from fold 0's weights")
    parser.add_argument("--train-only", action="store_true", help="make the model, measure nothing")
    parser.add_argument("--ours", nargs="+", default=list(OURS), choices=OURS, metavar="'BACKEND PRECISION'",
                        help=f"our commands to measure (default: all of {', '.join(OURS)})")
    parser.add_argument("--ort-openvino", type=Path, default=ORT_OPENVINO,
                        help="the onnxruntime-openvino build, installed with pip --target (default: %(default)s)")
    parser.add_argument("--validate-on-case", action="store_true",
                        help="check lower precisions on another CT of this kind, not on the synthetic phantom")
    args = parser.parse_args(argv)
    if any(c.startswith("onnx-openvino") for c in args.ours) and not (args.ort_openvino / "onnxruntime").is_dir():
        parser.error(f"no onnxruntime-openvino build in {args.ort_openvino}: install it there with "
                     f"pip install --no-deps --target {args.ort_openvino} onnxruntime-openvino, or leave out "
                     "the onnx-openvino commands (--ours)")  # fmt: skip
    work = args.work.resolve()
    make_model(work, args.iterations, args.epochs, args.finetune)
    if args.train_only:
        return 0
    results = benchmark(work, args.reps, args.reps if args.heavy_reps is None else args.heavy_reps,
                        tuple(args.ours), args.validate_on_case, args.ort_openvino)
    (work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
