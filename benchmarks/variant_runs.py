"""One run of the variant comparison: train one variant with one seed, then evaluate it on the held-out cases.

`run_job` runs in a fresh process (see `compare_variants.run_isolated`) so that its peak memory is its own. It
trains with the project's trainer (`training.train`), segments every evaluation case with the project's
predictor (`inference.segment`, no TTA, no post-processing, for every variant alike), saves each prediction,
and scores it with `metrics.compute_metrics` — the same code for every variant.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CURVE_POINTS = 300  # training-curve events kept per run
PRELOAD = ["torch", "monai", "unetseg.training.trainer", "unetseg.inference.predictor"]  # for the fork server


@dataclass
class Job:
    """Everything one run needs; plain values so it crosses a process boundary."""

    setting: str
    variant: str
    seed: int
    dataset: str  # nnU-Net folder holding the training and the evaluation cases
    plans: str
    eval_cases: list[str]
    monitor_cases: list[str]  # the evaluation cases the trainer validates on (the curve only; never selects)
    regions: dict[str, list[int]]
    pixel_error_region: str | None
    out_dir: str  # the model package goes here
    prediction_dir: str
    cache_dir: str
    budget_min: float
    device: str
    train_options: dict = field(default_factory=dict)


def prediction_path(prediction_dir: str | Path, case: str) -> Path:
    """Where a run saves its label map for `case` (the test recomputes the table's cells from these)."""
    return Path(prediction_dir) / f"{case}.nii.gz"


def run_job(job: Job) -> dict:
    """Train, evaluate, and return the run's record (losses/Dice curve, timings, memory, per-case metrics)."""
    import torch

    from unetseg.training import trainer as training

    curve: list[dict] = []
    start = time.perf_counter()
    cpu_start = time.process_time()

    def progress(fraction, stage, message=None, **fields) -> None:
        numbers = {k: v for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        curve.append({"t": time.perf_counter() - start, "stage": stage, **numbers})

    package = training.train(
        job.dataset, job.out_dir, variant=job.variant, plans=job.plans, time_budget_min=job.budget_min,
        device=job.device, seed=job.seed, progress=progress, cache_dir=job.cache_dir,
        val_cases=job.monitor_cases, **job.train_options,
    )
    train_wall = time.perf_counter() - start
    train_cpu = time.process_time() - cpu_start
    prov = package.provenance
    record = {
        "setting": job.setting, "variant": job.variant, "seed": job.seed,
        "parameters": parameter_count(package.network_config),
        "network": package.network_config,
        "patch_size": package.inference["patch_size"],
        "batch_size": prov["options"].get("batch_size"),
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "trainer_wall_s": prov.get("wall_time_s"),
        "iterations": prov.get("iterations"),
        "epochs": prov.get("epochs"),
        "curve": _thin(curve),
        "cases": evaluate(package, job),
    }
    record["inference_s_per_case"] = round(float(np.mean([c["seconds"] for c in record["cases"]])), 2)
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # Linux: KiB
    record["peak_gpu_mb"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                             if torch.cuda.is_available() and job.device in ("auto", "cuda") else None)
    return record


def parameter_count(network_config: dict) -> int:
    """Trainable parameters of the network a manifest describes."""
    from unetseg.networks.factory import build_network

    return int(sum(p.numel() for p in build_network(network_config).parameters() if p.requires_grad))


def evaluate(package, job: Job) -> list[dict]:
    """Segment each evaluation case, save the label map, and score every region with `metrics.compute_metrics`."""
    from unetseg.inference.predictor import segment
    from unetseg.training.datasets import load_dataset, read_case

    dataset = load_dataset(job.dataset)
    by_name = {case.name: case for case in dataset.cases}
    to_source = source_values(package)
    rows = []
    for name in job.eval_cases:
        images, reference = read_case(by_name[name])
        start = time.perf_counter()
        result = segment(images, package, device=job.device, tta=False, postprocess=False)
        seconds = time.perf_counter() - start
        pred = to_source[result.image.array]
        _save(prediction_path(job.prediction_dir, name), reference.with_array(pred))
        rows.append({"case": name, "seconds": round(seconds, 2),
                     **score(pred, reference.array, tuple(reference.spacing)[::-1], job.regions,
                             job.pixel_error_region)})
    return rows


def source_values(package) -> np.ndarray:
    """A lookup table from the model's class indices to the dataset's label values."""
    mapping = package.provenance.get("source_label_values") or {}
    lut = np.zeros(max(label.value for label in package.labels) + 1, dtype=np.uint8)
    for label in package.labels:
        lut[label.value] = mapping.get(label.name, label.value)
    return lut


def score(pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, ...], regions: dict[str, list[int]],
          pixel_error_region: str | None) -> dict:
    """Dice and HD95 of every region (a union of label values), and the pixel error of one region."""
    from unetseg.evaluation.metrics import compute_metrics

    out: dict = {"regions": {}}
    for region, values in regions.items():
        p, r = np.isin(pred, values).astype(np.uint8), np.isin(ref, values).astype(np.uint8)
        m = compute_metrics(p, r, [1], spacing_zyx)[1]
        out["regions"][region] = {"dice": m["dice"], "hd95": m["hd95"] if math.isfinite(m["hd95"]) else None,
                                  "flag": m["flag"]}
    if pixel_error_region is not None:
        values = regions[pixel_error_region]
        out["pixel_error"] = float(np.mean(np.isin(pred, values) != np.isin(ref, values)))
    return out


def _save(path: Path, image) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image.to_sitk(), str(path), useCompression=True)


def _thin(curve: list[dict]) -> list[dict]:
    """At most `CURVE_POINTS` training events, always keeping every end-of-epoch event (they carry the Dice)."""
    epochs = [e for e in curve if e["stage"] == "epoch"]
    steps = [e for e in curve if e["stage"] != "epoch"]
    keep = max(0, CURVE_POINTS - len(epochs))
    if len(steps) > keep:
        steps = [steps[i] for i in np.linspace(0, len(steps) - 1, keep).round().astype(int)] if keep else []
    return sorted(epochs + steps, key=lambda e: e["t"])
