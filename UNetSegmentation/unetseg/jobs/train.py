"""The `unetseg train` job: run the trainer with the parsed arguments; report progress and the trained package."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from unetseg.jobs.runner import Job
from unetseg.training.setup import TrainOptions
from unetseg.training.trainer import train


def print_progress(fraction: float | None, stage: str, message: str | None = None, **fields: Any) -> None:
    """A plain-text progress callback for the terminal (``--progress text``)."""
    if message:
        print(f"[{100 * (fraction or 0):5.1f}%] {message}", flush=True)


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg train`: `train` with the parsed options, stopping between iterations when cancelled."""
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    fields = {k: v for k, v in options.items() if k in known and v is not None}
    pkg = train(options["dataset"], options["out"], plans=options.get("plans"), init=options.get("init"),
                resume=bool(options.get("resume")), progress=job.emitter or print_progress, cancel=job.cancel,
                cache_dir=options.get("cache_dir"), command=command_line(job.argv), **fields)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 alone reports
    job.result(pkg.describe(), output=str(pkg.path), name=pkg.name, metrics=pkg.provenance.get("metrics", {}))


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this run, for the model card."""
    return shlex.join(["unetseg", *(sys.argv[1:] if argv is None else argv)])
