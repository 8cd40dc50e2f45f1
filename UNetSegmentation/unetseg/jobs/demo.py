"""The `unetseg demo` job: segment the bundled CT sample with the bundled default model (`unetseg.demo`)."""

from __future__ import annotations

from typing import Any

from unetseg.demo import run_demo
from unetseg.jobs.runner import Job


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg demo`: what `run_demo` prints; a missing sample or model is a failure."""
    if run_demo(options["out"]) != 0:
        raise ValueError("The demo could not run (see above).")
