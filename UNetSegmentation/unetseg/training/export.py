"""The trained model's package: its manifest (model card, preprocessing, inference defaults, provenance),
``plans.json`` and the final weights, written into the run's output folder."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

from unetseg import __version__
from unetseg.inference.expectations import expected_from
from unetseg.models.package import ModelPackage, save_package
from unetseg.training.cache import training_preparation
from unetseg.training.checkpoints import RunState, plain
from unetseg.training.planning import save_plans
from unetseg.training.setup import Setup, TrainOptions
from unetseg.vocabulary import DEFAULT_OVERLAP


def manifest(setup: Setup, opts: TrainOptions, state: RunState, metrics: dict, out_dir: Path,
             command: str | None, init: ModelPackage | None) -> dict:
    """The model.json of the trained network."""
    plan, info = setup.plan, setup.dataset_info
    slice_wise = plan.spatial_dims == 2 and max(c.image.shape[1] for c in setup.train_cases) > 1
    name = opts.name or _safe_name(info.get("name") or out_dir.name)
    return {
        "name": name,
        "version": "1.0",
        "description": opts.description or info.get("description") or
        f"{opts.variant} trained by unetseg {__version__} on {len(setup.dataset.cases)} case(s)",
        "modality": setup.modality,
        "variant": setup.network["variant"],
        "spatial_dims": plan.spatial_dims,
        "network": setup.network,
        "inputs": [{"name": n} for n in setup.dataset.channel_names],
        "labels": setup.labels,
        "preprocessing": {**training_preparation(plan).to_manifest(), "slice_wise": slice_wise},
        "inference": {"patch_size": list(setup.patch_size), "overlap": DEFAULT_OVERLAP,
                      "mirror_axes": list(setup.mirror_axes), "tta": False, "postprocessing": {}},
        "expects": expected_from(setup.modality, plan.normalization, plan.target_spacing, setup.patch_size),
        "provenance": {
            "training_data": str(info.get("training_data") or setup.dataset.root or "in-memory dataset"),
            "licence": str(info.get("licence") or info.get("license") or "unknown"),
            "cases": len(setup.dataset.cases),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": command or "unetseg.training.trainer.train",
            "cpu_time_s": round(state.cpu_seconds, 1),
            "wall_time_s": round(state.train_seconds, 1),
            "metrics": metrics,
            "epochs": state.epoch,
            "iterations": state.iteration,
            "training_cases": [c.name for c in setup.train_cases],
            "validation_cases": [c.name for c in setup.val_cases],
            "source_label_values": {lab["name"]: v for lab, v in zip(setup.labels, plan.label_values[1:], strict=True)},
            "fine_tuned_from": init.name if init is not None else None,
            "plans": "plans.json",
            "options": plain(dataclasses.asdict(opts)),
            "trainer": f"unetseg {__version__}",
        },
    }


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")
    return (name or "model")[:100]


def write_package(setup: Setup, opts: TrainOptions, state: RunState, metrics: dict, weights: dict[str, torch.Tensor],
                  out_dir: Path, command: str | None, init: ModelPackage | None) -> ModelPackage:
    """plans.json and the model package (the given final weights, the manifest with `metrics`)."""
    save_plans(out_dir / "plans.json", {setup.plan.configuration: setup.plan})
    doc = manifest(setup, opts, state, metrics, out_dir, command, init)
    return save_package(out_dir, doc, weights, half=opts.half)
