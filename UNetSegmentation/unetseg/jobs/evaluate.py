"""The `unetseg evaluate` job: score a folder of predictions against references and show the summary."""

from __future__ import annotations

from typing import Any

from unetseg.evaluation.report import evaluate_folders, format_summary
from unetseg.jobs.runner import Job


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg evaluate`: write the per-case CSV and show the summary table (or return it as the result)."""
    summary = evaluate_folders(options["pred_dir"], options["ref_dir"], options["out"])
    job.result(format_summary(summary), **summary)
