"""The `unetseg train` job: run the trainer with the parsed arguments, report progress, errors and the result."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from unetseg.jobs.progress import ProgressEmitter
from unetseg.models.package import PackageError
from unetseg.training.dataset_checks import DatasetError
from unetseg.training.setup import TrainOptions
from unetseg.training.trainer import TrainingCancelled, train


def print_progress(fraction: float | None, stage: str, message: str | None = None, **fields: Any) -> None:
    """A plain-text progress callback for the terminal (``--progress text``)."""
    if message:
        print(f"[{100 * (fraction or 0):5.1f}%] {message}", flush=True)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT while the block runs, so a killed run stops between iterations."""
    event = threading.Event()
    handled = [s for s in (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread()]
    previous = {s: signal.signal(s, lambda *_: event.set()) for s in handled}
    try:
        yield event
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_train_command(args: dict, argv: Sequence[str]) -> int:
    """`unetseg train`: run `train` with the parsed arguments; report errors (exit 2) and a cancel (exit 130)."""
    emitter = ProgressEmitter() if args.get("progress") == "json" else None
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    options = {k: v for k, v in args.items() if k in known and v is not None}
    with cancel_on_signals() as cancel:
        try:
            pkg = train(args["dataset"], args["out"], plans=args.get("plans"), init=args.get("init"),
                        resume=bool(args.get("resume")), progress=emitter or print_progress, cancel=cancel,
                        cache_dir=args.get("cache_dir"), command=command_line(argv), **options)
        except TrainingCancelled as err:
            _report_failure(emitter, str(err))
            return 130
        except (DatasetError, PackageError, ValueError, FileNotFoundError) as err:
            _report_failure(emitter, str(err))
            return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 alone reports
    if emitter is not None:
        emitter.result(output=str(pkg.path), name=pkg.name, metrics=pkg.provenance.get("metrics", {}))
    else:
        print(pkg.describe())
    return 0


def _report_failure(emitter: Any, message: str) -> None:
    if emitter is not None:
        emitter.error(message, stage="train")
    else:
        print(f"unetseg train: {message}", file=sys.stderr)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this run, for the model card."""
    return shlex.join(["unetseg", *(sys.argv[1:] if argv is None else argv)])
