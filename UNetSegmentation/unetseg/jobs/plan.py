"""The `unetseg plan` job: validate a dataset, fingerprint it, plan every configuration, write ``plans.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetseg.jobs.runner import Job
from unetseg.training.dataset_checks import ensure_valid
from unetseg.training.datasets import load_dataset
from unetseg.training.fingerprint import compute_fingerprint
from unetseg.training.planning import load_plans, plan_configurations, save_plans


def plan_dataset(dataset_path: str | Path, gpu_memory_gb: float = 8.0, out: str | Path | None = None) -> Path:
    """Validate a dataset, fingerprint it, plan all configurations and write ``plans.json``; returns its path."""
    dataset = load_dataset(dataset_path)
    ensure_valid(dataset)
    fp = compute_fingerprint(dataset)
    plans = plan_configurations(fp, gpu_memory_gb)
    default_out = Path(dataset_path) if Path(dataset_path).is_dir() else Path(dataset_path).parent
    return save_plans(out or default_out / "plans.json", plans, fp)


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg plan`: write the plans and show each configuration's summary (a bad dataset: the full report)."""
    path = plan_dataset(options["dataset"], options["gpu_memory_gb"], options["out"])
    plans = load_plans(path)
    summaries = [plan.summary() for plan in plans.values()]
    job.result("\n".join([*summaries, f"Plans written to {path}"]), output=str(path), configurations=sorted(plans))
