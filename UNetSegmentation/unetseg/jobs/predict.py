"""The `unetseg predict` job: one case (`predict_case`), or a cohort (`cohort`) when the one ``-i`` is a folder of
cases, a glob or a CSV/TSV list.

With ``--progress json`` every progress step, message, error and the result is one JSON line on stdout (the
protocol of `progress.py`, read by the Slicer panel's background process). A failure or a cancel leaves no
output file (`runner` reports it and chooses the exit code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unetseg.inference.engines import ENGINE_PREFIX
from unetseg.jobs.cohort import COHORT_OPTIONS, run_cohort
from unetseg.jobs.cohort_inputs import is_cohort
from unetseg.jobs.predict_case import predict_to_file, work_limits
from unetseg.jobs.runner import Job


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg predict`: a cohort, or `predict_to_file` with the job's progress and cancel (messages logged)."""
    if is_cohort(options["input"]):
        run_cohort(job, options)
        return
    given = [f"--{name.replace('_', '-')}" for name, default in COHORT_OPTIONS.items()
             if options.get(name, default) != default]  # fmt: skip
    if given:
        raise ValueError(f"{', '.join(given)} apply to a cohort only: give -i a folder of cases, a glob or a "
                         "CSV/TSV list.")  # fmt: skip
    progress = job.emitter or engine_lines(job)
    path, messages = predict_to_file(options["input"], options["model"], options["output"], options["device"],
                                     options["tta"], options["postprocess"], options["backend"], progress,
                                     job.cancel, options.get("format"), work_limits(options),
                                     options.get("precision", "auto"))  # fmt: skip
    for message in messages:
        job.log(message)
    job.result(f"Wrote {path}", output=path, messages=messages)


def engine_lines(job: Job) -> Callable[[float, str], None]:
    """Text mode's progress: only the line naming the engine and precision, on stderr (JSON mode has every stage)."""

    def progress(_fraction: float, stage: str) -> None:
        if stage.startswith(ENGINE_PREFIX):
            job.log(stage)

    return progress
