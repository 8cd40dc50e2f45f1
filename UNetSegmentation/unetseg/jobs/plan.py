"""The `unetseg plan` job: validate a dataset, fingerprint it, plan every configuration, write ``plans.json``."""

from __future__ import annotations

import sys
from pathlib import Path

from unetseg.training.dataset_checks import DatasetError, ensure_valid
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


def run_plan(dataset: str, gpu_memory_gb: float, out: str | None) -> int:
    """`unetseg plan`: print each configuration's summary; a clear message and exit code 2 on a bad dataset."""
    try:
        path = plan_dataset(dataset, gpu_memory_gb, out)
    except DatasetError as err:
        print(err, file=sys.stderr)
        return 2
    for plan in load_plans(path).values():
        print(plan.summary())
    print(f"Plans written to {path}")
    return 0
