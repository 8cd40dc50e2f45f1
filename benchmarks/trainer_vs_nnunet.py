"""Benchmark (issue 16): the project's trainer against nnU-Net v2's own, on the same data, split, budget and threads.

Per setting (`trainer_vs_nnunet_data`: spinal-cord MRI leaving one contrast out, and the BraTS sample's
train/validation split), both tools train on the same files for the same CPU wall-clock budget (``--minutes``,
default 15, each) with the same torch thread count (``--threads``, default 2; OMP/MKL variables set too), each in
its own process, the order rotating from one setting to the next:

- nnU-Net v2 (the real ``nnunetv2`` package): its default plan (3d_fullres) and stock ``nnUNetTrainer`` on fold
  ``all``, its loop stopped between iterations when the budget is spent and its poly learning rate decayed over the
  budget (`trainer_vs_nnunet_tools.train_within_budget`);
- ``unetseg train --variant nnunet --time-budget MINUTES --val-fraction 0`` (its plan's defaults otherwise).

Both check the clock between iterations, so the last one may end up to one iteration past the budget ("training s"
in the table). Planning and preprocessing run in the same process but outside the budget on both sides. Each then
predicts the held-out cases with its own predictor (nnUNetPredictor with its defaults, mirroring TTA; ``unetseg
predict --tta --precision fp32``, the same mirroring and arithmetic), and both are scored by the same code,
`unetseg.evaluation.metrics.dice`, per structure and case. Printed and written to ``WORK/results.json``: Dice,
iterations done, seconds per iteration, the peak memory of each command's process tree (summed RSS and PSS,
`process_memory`), and Markdown tables for the README (also ``WORK/results.md``). Everything is written under
``--work`` (outside the repository: the BraTS sample is non-commercial); nothing is downloaded; a setting whose data
folder is absent is skipped. Needs ``nnunetv2`` in this interpreter (the Makefile installs it):

    python benchmarks/trainer_vs_nnunet.py [--minutes 15] [--threads 2] [--settings cord brats] [--together]
                                           [--no-tta] [--unetseg-args ...]
                                           [--data ../shared/data] [--work /tmp/unetseg-trainer-vs-nnunet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_memory import run_measured  # sibling scripts
from train_real import DEFAULT_DATA, REPO_ROOT
from trainer_vs_nnunet_data import SETTINGS, Prepared, Setting

from unetseg.evaluation.metrics import dice
from unetseg.models.manifest import MANIFEST_FILE

TOOLS = ("nnU-Net v2", "unetseg")
TOOLS_SCRIPT = Path(__file__).resolve().with_name("trainer_vs_nnunet_tools.py")
DEFAULT_WORK = Path("/tmp/unetseg-trainer-vs-nnunet")


def environment(work: Path, threads: int) -> dict:
    """The subprocesses' environment: nnU-Net's folders, no compilation, the thread count for every library."""
    threads_text = str(threads)
    env = dict(os.environ, nnUNet_raw=str(work / "nnunet" / "raw"),
               nnUNet_preprocessed=str(work / "nnunet" / "preprocessed"),
               nnUNet_results=str(work / "nnunet" / "results"), nnUNet_compile="false",
               nnUNet_def_n_proc=threads_text, OMP_NUM_THREADS=threads_text, MKL_NUM_THREADS=threads_text,
               OPENBLAS_NUM_THREADS=threads_text)
    env.pop("nnUNet_n_proc_DA", None)  # the tools process sets it (the planner and the trainer need other values)
    return env


def tool_command(threads: int, *args: str) -> list[str]:
    return [sys.executable, str(TOOLS_SCRIPT), "--threads", str(threads), *args]


def train(tool: str, setting: Setting, prepared: Prepared, args: argparse.Namespace, env: dict) -> dict:
    """Train one tool under the budget in its own measured process; its figures and model folder."""
    folder = args.work / setting.key
    log = folder / "logs" / f"train-{_slug(tool)}.log"
    if tool == "unetseg":
        out = folder / "unetseg-model"
        shutil.rmtree(out, ignore_errors=True)
        argv = tool_command(args.threads, "unetseg", "train", str(prepared.raw), "--out", str(out),
                            "--variant", "nnunet", "--time-budget", str(args.minutes), "--device", "cpu",
                            "--val-fraction", "0", "--iterations-per-epoch", str(args.iterations_per_epoch),
                            "--cache-dir", str(args.work / "unetseg-cache"), "--progress", "text",
                            *shlex.split(args.unetseg_args))
        seconds, rss, pss = run_measured(argv, env, log)
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        prov = manifest["provenance"]
        plans = json.loads((out / "plans.json").read_text(encoding="utf-8"))
        figures = {"iterations": prov["iterations"], "epochs": prov["epochs"], "train_s": prov["wall_time_s"],
                   "patch_size": manifest["inference"]["patch_size"],
                   "batch_size": plans["configurations"][plans["default_configuration"]]["batch_size"],
                   "model": str(out)}
    else:
        shutil.rmtree(Path(env["nnUNet_results"]) / setting.dataset_name, ignore_errors=True)
        summary = folder / "nnunet-summary.json"
        argv = tool_command(args.threads, "nnunet-train", "--dataset-id", str(setting.dataset_id),
                            "--minutes", str(args.minutes), "--iterations-per-epoch", str(args.iterations_per_epoch),
                            "--summary", str(summary))
        seconds, rss, pss = run_measured(argv, env, log)
        figures = json.loads(summary.read_text(encoding="utf-8"))
    figures.update(process_s=round(seconds, 1), train_peak_rss=rss, train_peak_pss=pss,
                   s_per_iteration=round(figures["train_s"] / max(figures["iterations"], 1), 2))
    print(f"[{setting.key}] {tool}: {figures['iterations']} iterations in {figures['train_s']} s "
          f"({figures['s_per_iteration']} s/it), process {seconds:.0f} s, peak RSS {rss / 2**30:.2f} GiB", flush=True)
    return figures


def predict(tool: str, setting: Setting, prepared: Prepared, figures: dict, args: argparse.Namespace,
            env: dict) -> Path:
    """Predict the held-out cases with the tool's own predictor (measured); the folder of ``<case>.nii.gz``."""
    out = args.work / setting.key / "predictions" / _slug(tool)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = args.work / setting.key / "logs" / f"predict-{_slug(tool)}.log"
    if tool == "unetseg":
        peak_rss = peak_pss = 0
        seconds = 0.0
        for case in prepared.test_labels:
            inputs = [a for c in range(prepared.channels)
                      for a in ("-i", str(prepared.test_images / f"{case}_{c:04d}.nii.gz"))]
            argv = tool_command(args.threads, "unetseg", "predict", "-m", figures["model"], *inputs,
                                "-o", str(out / f"{case}.nii.gz"), "--device", "cpu",
                                "--tta" if args.tta else "--no-tta", "--precision", "fp32", "--progress", "text")
            s, rss, pss = run_measured(argv, env, log.with_name(f"{log.stem}-{case}.log"))
            seconds, peak_rss, peak_pss = seconds + s, max(peak_rss, rss), max(peak_pss, pss)
    else:
        argv = tool_command(args.threads, "nnunet-predict", "--model", figures["model"], "--images",
                            str(prepared.test_images), "--out", str(out), *([] if args.tta else ["--no-tta"]))
        seconds, peak_rss, peak_pss = run_measured(argv, env, log)
    figures.update(predict_s=round(seconds, 1), predict_peak_rss=peak_rss, predict_peak_pss=peak_pss)
    return out


def score(predictions: Path, prepared: Prepared, structures: dict[str, tuple[int, ...]]) -> dict:
    """Dice per held-out case and structure (the project's metric code), predictions and labels on one grid."""
    scores = {}
    for case, label_path in prepared.test_labels.items():
        pred_image, ref_image = sitk.ReadImage(str(predictions / f"{case}.nii.gz")), sitk.ReadImage(str(label_path))
        if pred_image.GetSize() != ref_image.GetSize():
            raise RuntimeError(f"{predictions / case}: grid {pred_image.GetSize()} != {ref_image.GetSize()}")
        pred, ref = sitk.GetArrayFromImage(pred_image), sitk.GetArrayFromImage(ref_image)
        scores[case] = {name: round(dice(np.isin(pred, values), np.isin(ref, values)), 4)
                        for name, values in structures.items()}
    return scores


def run_setting(index: int, setting: Setting, args: argparse.Namespace, env: dict) -> dict:
    """Prepare, train both tools (rotating order), predict, score."""
    prepared = setting.prepare(args.data, Path(env["nnUNet_raw"]), args.work / setting.key / "heldout")
    order = TOOLS[index % 2:] + TOOLS[:index % 2]
    if args.together:  # both at once, each on its own cores: the same machine load for both
        with ThreadPoolExecutor(len(order)) as pool:
            futures = {tool: pool.submit(train, tool, setting, prepared, args, env) for tool in order}
            results = {tool: future.result() for tool, future in futures.items()}
    else:
        results = {tool: train(tool, setting, prepared, args, env) for tool in order}
    for tool in order:
        predictions = predict(tool, setting, prepared, results[tool], args, env)
        results[tool]["dice"] = score(predictions, prepared, setting.structures)
        print(f"[{setting.key}] {tool} held-out Dice: {results[tool]['dice']}", flush=True)
    return {"title": setting.title, "order": list(order), "structures": list(setting.structures),
            "together": args.together, "tta": args.tta, "unetseg_args": args.unetseg_args,
            "training_cases": sorted(p.name.removesuffix(".nii.gz") for p in (prepared.raw / "labelsTr").iterdir()),
            "heldout_cases": list(prepared.test_labels), "tools": results}


def _slug(tool: str) -> str:
    return "nnunet" if tool.startswith("nnU-Net") else "unetseg"


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}"


def table(key: str, result: dict, minutes: float, threads: int) -> str:
    """One setting as Markdown: per tool, iterations, s/iteration, peak memory, Dice (mean, and per case)."""
    structures, cases = result["structures"], result["heldout_cases"]
    notes = [f"{minutes:g} min CPU budget each", f"{threads} thread(s)"]
    if result.get("together"):
        notes.append("both trained at the same time")
    if not result.get("tta", True):
        notes.append("predicted without TTA")
    if result.get("unetseg_args"):
        notes.append(f"`unetseg train ... {result['unetseg_args']}`")
    lines = [f"**{result['title']}** ({key}; {', '.join(notes)}; Dice on {', '.join(cases)})", "",
             "| tool | iterations | training s | s / iteration | peak RSS train / predict (GiB) | "
             + " | ".join(f"Dice {s}" for s in structures) + " |",
             "|---|---|---|---|---|" + "---|" * len(structures)]
    for tool in TOOLS:
        row = result["tools"][tool]
        cells = []
        for structure in structures:
            values = [row["dice"][case][structure] for case in cases]
            cell = f"{np.mean(values):.3f}"
            cells.append(cell + (f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""))
        lines.append(f"| {tool} | {row['iterations']} | {row['train_s']:.0f} | {row['s_per_iteration']:.2f} | "
                     f"{_gib(row['train_peak_rss'])} / {_gib(row['predict_peak_rss'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget per tool and setting")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every process")
    parser.add_argument("--iterations-per-epoch", type=int, default=250, help="both tools' default: 250")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["cord", "brats"])
    parser.add_argument("--together", action="store_true",
                        help="train both tools at the same time (give each --threads; 1 each on a 2-core machine)")
    parser.add_argument("--unetseg-args", default="",
                        help="more `unetseg train` options, one string (e.g. \"--width 0.25\"); printed in the table")
    parser.add_argument("--no-tta", dest="tta", action="store_false",
                        help="predict without mirroring on both sides (8x faster on 3D; the default mirrors)")
    args = parser.parse_args(argv)
    args.work, args.data = args.work.resolve(), args.data.resolve()
    if args.work.is_relative_to(REPO_ROOT):
        parser.error("--work must be outside the repository: the BraTS sample is non-commercial data.")
    env = environment(args.work, args.threads)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)",
                     "minutes": args.minutes, "threads": args.threads, "together": args.together, "tta": args.tta,
                     "iterations_per_epoch": args.iterations_per_epoch, "settings": {}}
    for index, key in enumerate(args.settings):
        setting = SETTINGS[key]
        if not (args.data / setting.source).is_dir():
            print(f"[{key}] skipped: no {args.data / setting.source}", flush=True)
            continue
        results["settings"][key] = run_setting(index, setting, args, env)
        (args.work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    tables = [table(key, result, args.minutes, args.threads) for key, result in results["settings"].items()]
    (args.work / "results.md").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
