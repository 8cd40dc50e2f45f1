"""Train the bundled models with the project's own trainer and write them, with their cards, into the repository.

For each model in `MODELS`: build its training folder (`bundled_datasets.py`: every permissive case of its
groups, in one orientation), run `unetseg train` on the CPU within the stated time budget, measure its Dice on the
held-out cases (where any exist), on the training cases and on its bundled sample, store the weights in half
precision when that costs no accuracy, and write the package to ``UNetSegmentation/Resources/Models/<name>/`` with
provenance (data, licence, cases, the exact training command, CPU time) and those metrics, and its ONNX export
beside it (`bundled_onnx.py`, so a stock Slicer runs it without PyTorch). A model whose data has two or more
training groups (subjects, contrasts) also gets one leave-one-out twin per group, trained by the same command
without that group and measured on it: the card's ``leave-out-KEY`` figures (the twins stay in
``DATA_ROOT/leave-out-models``, where `model_cards.py` re-measures them). Finally each sample in samples.json gets
its model.

    python benchmarks/bundled_models.py [NAME ...] [--data-root /work/bundled-data] [--budget-scale 1.0]

Each training runs on one thread, so two invocations (different NAMEs) share a 2-core
machine; the whole set with its twins is about 85 training minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundled_datasets  # sibling scripts
import bundled_onnx
import model_cards

from unetseg.vocabulary import DEFAULT_AUGMENTATIONS, NNUNET_AUGMENTATIONS

HALF_TOLERANCE = 0.01  # fp16 storage is kept when it changes no mean Dice by more than this
SIZE_LIMIT_MB = 40.0


@dataclass(frozen=True)
class ModelSpec:
    """How one bundled model is trained and checked."""

    name: str
    title: str  # the human name the panel shows (with modality, body region and variant)
    body_region: str
    variant: str
    minutes: float
    train_args: tuple[str, ...] = ()
    sample: str | None = None  # the bundled sample its card (and the test) measures it on
    sample_labels: tuple[str, ...] | None = None  # labels the sample's reference holds (default: all)
    heldout_labels: tuple[str, ...] | None = None  # labels the held-out references hold (default: all)
    heldout_is_generalisation: bool = True
    links_sample: bool = True  # samples.json names this model as the one that segments its sample
    postprocessing: tuple[tuple[str, object], ...] = (("largest_component", True),)  # stored in the manifest
    inference_patch: tuple[int, ...] | None = None  # a larger window than the training patch (None: the same)
    subjects: int = 1  # how many people the training data comes from (the card says it is a demonstration)


# Short CPU runs favour AdamW, small patches and no per-epoch validation (the cards measure held-out data).
FAST = ("--optimizer", "adamw", "--lr", "3e-3", "--iterations-per-epoch", "25", "--val-every", "1000",
        "--val-fraction", "0")
MODELS = {
    m.name: m
    for m in (
        ModelSpec("xr-lungs-drr", "Lung fields (synthetic radiographs)", "chest", "unet", 6,
                  (*FAST, "--width", "0.25", "--batch-size", "8"), sample="xr_drr_lungs"),
        ModelSpec("ct-spleen", "Spleen", "abdomen", "unet", 10,
                  (*FAST, "--width", "0.125", "--patch-size", "16", "80", "80"), sample="spleen2", subjects=2),
        ModelSpec("mr-spinalcord-t2", "Spinal cord (T2)", "cervical spine", "attention_unet", 8,
                  (*FAST, "--width", "0.125", "--patch-size", "48", "32", "48"), sample="spinalcord_t2"),
        # a whole-brain window shifts instance-norm statistics (Dice 0.76 vs 0.91 at 64³ on the sample). Grey and
        # white matter are told apart by their T1 contrast, so the MRI contrast augmentations work against the task
        # (robustness Dice 0.78 with them, 0.89 with nnU-Net's set; 14 minutes each): nnU-Net's set only.
        ModelSpec("mr-brain-tissue-t1", "Grey and white matter (T1)", "brain", "unet", 14,
                  (*FAST, "--width", "0.125", "--patch-size", "48", "48", "48", "--augment",
                   *(f"{name}=off" for name in DEFAULT_AUGMENTATIONS["MR"] if name not in NNUNET_AUGMENTATIONS)),
                  sample="mni152_t1_2mm", heldout_is_generalisation=False, postprocessing=(),
                  inference_patch=(64, 64, 64)),
        # nnU-Net's 2D configuration, run slice by slice: 3D patches buy too few steps for 6 organs on a CPU
        ModelSpec("ct-abdomen-fast", "Abdominal organs, fast (3 mm)", "abdomen", "nnunet", 15,
                  (*FAST, "--configuration", "2d", "--width", "0.25", "--batch-size", "12"),
                  sample="ts_example_ct_sm", sample_labels=("spleen",), heldout_labels=("spleen",)),
    )
}
TRAIN_ENV = {"OMP_NUM_THREADS": "1"}  # one thread: on a busy 2-core machine this trains faster than two


def train_command(spec: ModelSpec, dataset: Path, out: Path, minutes: float) -> list[str]:
    """The `unetseg train` command line for one model (CPU, fixed seed, time budget)."""
    env = [f"{k}={v}" for k, v in TRAIN_ENV.items()]
    return [*env, "unetseg", "train", str(dataset), "--variant", spec.variant, "--out", str(out), "--device", "cpu",
            "--seed", "0", "--time-budget", f"{minutes:g}", *spec.train_args]


def shown_command(spec: ModelSpec, folder: str, minutes: float, leave_out: str | None = None) -> str:
    """The card's command: build training folder `folder` under ./bundled-data, then train into ./`folder`."""
    build = f"python benchmarks/bundled_datasets.py {spec.name}" + (f" --leave-out {leave_out}" if leave_out else "")
    train = train_command(spec, Path("bundled-data") / folder, Path(folder), minutes)
    return f"{build} --out bundled-data && {shlex.join(train)}"


def run_training(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run the trainer as a child process (log to `log`); return its CPU seconds and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        args = cmd[cmd.index("unetseg") + 1:]
        proc = subprocess.run([sys.executable, "-m", "unetseg", *args], stdout=out,
                              stderr=subprocess.STDOUT, check=False, env={**os.environ, **TRAIN_ENV})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"Training failed (exit {proc.returncode}); see {log}:\n{tail}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def _cases(folder: Path, split: str, data_root: Path) -> list[dict]:
    """The cases of a training folder's split ("Tr" or "Ts"), as paths relative to the data root."""
    labels = sorted((folder / f"labels{split}").glob("*.nii.gz"))
    return [{"images": [str((folder / f"images{split}" / f"{lab.name[:-7]}_0000.nii.gz").relative_to(data_root))],
             "label": str(lab.relative_to(data_root))} for lab in labels]


def measure_all(package, spec: ModelSpec, folder: Path, data_root: Path, shared: Path) -> dict:
    """The card's metrics entries: held-out (or robustness), training set, and the bundled sample."""
    doc = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    names = [label.name for label in package.labels]
    metrics = {}
    heldout = _cases(folder, "Ts", data_root)
    if heldout:
        labels = list(spec.heldout_labels or names)
        dice = model_cards.measure(package, {"cases": heldout, "dice": dict.fromkeys(labels)}, data_root, shared)
        kind = "heldout" if spec.heldout_is_generalisation else "robustness"
        metrics[kind] = model_cards.metric_entry(doc["heldout_data"], dice, cases=heldout)
    training = _cases(folder, "Tr", data_root)
    dice = model_cards.measure(package, {"cases": training, "dice": dict.fromkeys(names)}, data_root, shared)
    metrics["training"] = model_cards.metric_entry(model_cards.TRAINING_ONLY, dice, cases=training)
    if spec.sample:
        labels = list(spec.sample_labels or names)
        dice = model_cards.measure(package, {"sample": spec.sample, "dice": dict.fromkeys(labels)}, data_root, shared)
        metrics["sample"] = model_cards.metric_entry(f"bundled sample {spec.sample}", dice, sample=spec.sample)
    return metrics


def card(trained, spec: ModelSpec, folder: Path, command: str, cpu_s: float, wall_s: float) -> dict:
    """The bundled manifest: the trainer's (labels with colours and terminology from dataset.json), with our
    name, description, post-processing and provenance."""
    doc = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    manifest = json.loads(json.dumps(trained.manifest))
    data = doc["training_data"].rstrip(".")
    manifest.update(name=spec.name, title=spec.title, body_region=spec.body_region, version="1.0",
                    description=f"{doc['description']}. Trained by benchmarks/bundled_models.py with `unetseg train` "
                    f"on the CPU. Data: {data}.")
    manifest["inference"]["postprocessing"] = dict(spec.postprocessing)
    manifest["preprocessing"]["orientation"] = doc.get("orientation")  # the one its training cases were written in
    if spec.inference_patch:
        manifest["inference"]["patch_size"] = list(spec.inference_patch)
    trainer_metrics = manifest.get("provenance", {}).get("metrics")
    manifest["provenance"] = {
        **manifest.get("provenance", {}),
        "training_data": doc["training_data"],
        "heldout_data": doc["heldout_data"],
        "data_folder": ", ".join(f"../shared/data/{s}" for s in doc["source"].split(", ")),  # one or several
        "licence": doc["licence"],
        "attribution": doc["reference"],
        "cases": doc["numTraining"],
        "date": datetime.date.today().isoformat(),
        "command": command,
        "cpu_time_s": round(cpu_s, 1),
        "wall_time_s": round(wall_s, 1),
        "trainer_validation": trainer_metrics,
        "subjects": spec.subjects,
        "demonstration": True,
    }
    return manifest


def choose_precision(trained, manifest: dict, spec: ModelSpec, folder: Path, data_root: Path, shared: Path,
                     work: Path):
    """Save fp32 and fp16 versions and measure both; fp16 unless it loses accuracy. Returns (metrics, half, state)."""
    from unetseg.models.package import save_package
    from unetseg.models.weights import load_state_dict

    state = load_state_dict(trained)
    packages = {}
    for half in (False, True):
        pkg = save_package(work / f"half{int(half)}" / spec.name, manifest, state, half=half)
        packages[half] = (pkg, measure_all(pkg, spec, folder, data_root, shared))
    full, half = packages[False][1], packages[True][1]
    lossless = all(abs(full[k]["mean_dice"] - half[k]["mean_dice"]) <= HALF_TOLERANCE for k in full)
    for label, m in (("fp32", full), ("fp16", half)):
        print(f"  {label}: " + ", ".join(f"{k} {v['mean_dice']:.3f}" for k, v in m.items()))
    print(f"  -> stored as {'fp16' if lossless else 'fp32'}")
    return packages[lossless][1], lossless, state


def leave_out_metrics(spec: ModelSpec, data_root: Path, shared: Path, minutes: float, log_dir: Path) -> dict:
    """Train the spec's leave-one-out models (same command, one group out) and measure each on the group it never
    saw; the card's ``leave-out-KEY`` entries. The packages stay under ``model_cards.leave_out_dir(data_root)``
    (not shipped), where `model_cards.py` re-measures them."""
    from unetseg.models.package import load_package

    metrics = {}
    for key in bundled_datasets.leave_out_keys_of(spec.name, shared):
        folder = bundled_datasets.build(f"{spec.name}{bundled_datasets.LEAVE_OUT}{key}", shared, data_root)
        out = model_cards.leave_out_dir(data_root) / folder.name
        shutil.rmtree(out, ignore_errors=True)
        cmd = train_command(spec, folder, out, minutes)
        print(f"{folder.name}: {shlex.join(cmd)}")
        run_training(cmd, log_dir / f"train-{folder.name}.log")
        package = load_package(out)
        doc = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        cases = _cases(folder, "Ts", data_root)
        labels = list(spec.heldout_labels or [label.name for label in package.labels])
        dice = model_cards.measure(package, {"cases": cases, "dice": dict.fromkeys(labels)}, data_root, shared)
        entry = model_cards.metric_entry(doc["heldout_data"], dice, cases=cases)
        metrics[f"{model_cards.LEAVE_OUT_KIND}{key}"] = {**entry, "model": folder.name,
                                                          "command": shown_command(spec, folder.name, minutes, key)}
        print(f"  {folder.name}: held-out Dice {entry['dice']}")
    return metrics


def bundle_model(spec: ModelSpec, data_root: Path, shared: Path, budget_scale: float, log_dir: Path) -> Path:
    """Train, measure and write one bundled model (and measure it through its leave-one-out twins); returns its
    package folder in the repository."""
    from unetseg.models.package import load_package, save_package

    folder = bundled_datasets.build(spec.name, shared, data_root)
    minutes = round(spec.minutes * budget_scale, 2)
    with tempfile.TemporaryDirectory(prefix=f"bundle-{spec.name}-") as tmp:
        work = Path(tmp)
        cmd = train_command(spec, folder, work / "trained", minutes)
        print(f"{spec.name}: {shlex.join(cmd)}")
        cpu_s, wall_s = run_training(cmd, log_dir / f"train-{spec.name}.log")
        trained = load_package(work / "trained")
        manifest = card(trained, spec, folder, shown_command(spec, spec.name, minutes), cpu_s, wall_s)
        metrics, half, state = choose_precision(trained, manifest, spec, folder, data_root, shared, work)
        metrics.update(leave_out_metrics(spec, data_root, shared, minutes, log_dir))
        manifest["provenance"]["metrics"] = metrics
        manifest["provenance"]["weights_precision"] = "float16" if half else "float32"
        target = model_cards.MODELS_DIR / spec.name
        if target.exists():
            shutil.rmtree(target)
        save_package(target, manifest, state, half=half)
    bundled_onnx.export_bundled(target)
    print(f"  wrote {target} ({sum(f.stat().st_size for f in target.iterdir()) / 1e6:.1f} MB, "
          f"CPU {cpu_s / 60:.1f} min, wall {wall_s / 60:.1f} min): {json.dumps(metrics)}")
    return target


def recard(spec: ModelSpec, data_root: Path, shared: Path) -> Path:
    """Re-measure a bundled package with the spec's inference settings, keeping its weights and provenance."""
    from unetseg.models.package import load_package, save_package
    from unetseg.models.weights import load_state_dict

    target = model_cards.MODELS_DIR / spec.name
    pkg = load_package(target)
    manifest = json.loads(json.dumps(pkg.manifest))
    manifest["inference"]["postprocessing"] = dict(spec.postprocessing)
    manifest["inference"]["patch_size"] = list(spec.inference_patch or manifest["provenance"]["options"]["patch_size"])
    half = manifest["provenance"].get("weights_precision") == "float16"
    state = load_state_dict(pkg)
    folder = bundled_datasets.build(spec.name, shared, data_root)
    kept = {k: v for k, v in manifest["provenance"]["metrics"].items() if k.startswith(model_cards.LEAVE_OUT_KIND)}
    with tempfile.TemporaryDirectory(prefix=f"recard-{spec.name}-") as tmp:
        manifest["provenance"]["metrics"] = measure_all(save_package(Path(tmp) / spec.name, manifest, state, half),
                                                        spec, folder, data_root, shared) | kept
    save_package(target, manifest, state, half=half)
    bundled_onnx.export_bundled(target)
    means = {k: v["mean_dice"] for k, v in manifest["provenance"]["metrics"].items()}
    print(f"{spec.name}: re-measured {means}")
    return target


def link_samples() -> None:
    """Set each sample's "model" in samples.json to the bundled model that segments it (when it exists)."""
    path = bundled_datasets.SAMPLE_DIR / "samples.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    owners = {m.sample: m.name for m in MODELS.values()
              if m.sample and m.links_sample and (model_cards.MODELS_DIR / m.name).is_dir()}
    for sample in doc["samples"]:
        sample["model"] = owners.get(sample["name"], sample.get("model"))
    write_samples_index(doc)


def write_samples_index(doc: dict) -> None:
    """Write samples.json as it is kept: indented, one-item lists on one line."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    path = bundled_datasets.SAMPLE_DIR / "samples.json"
    path.write_text(re.sub(r'\[\n\s+("[^"\n]*")\n\s+\]', r"[\1]", text) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"which models (default all: {', '.join(MODELS)})")
    parser.add_argument("--data-root", type=Path, default=bundled_datasets.DEFAULT_OUT)
    parser.add_argument("--shared-data", type=Path, default=bundled_datasets.DEFAULT_DATA)
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every time budget")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--recard", action="store_true",
                        help="only re-measure the bundled packages with the current inference settings")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    import torch

    torch.set_num_threads(int(TRAIN_ENV["OMP_NUM_THREADS"]))  # the measurements too: the machine is shared
    for name in args.names or MODELS:
        if args.recard:
            recard(MODELS[name], args.data_root, args.shared_data)
        else:
            bundle_model(MODELS[name], args.data_root, args.shared_data, args.budget_scale, args.log_dir)
    link_samples()
    total = sum(f.stat().st_size for f in model_cards.MODELS_DIR.rglob("*") if f.is_file()) / 1e6
    print(f"All bundled models: {total:.1f} MB (limit {SIZE_LIMIT_MB:g} MB).")
    return 0 if total <= SIZE_LIMIT_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
