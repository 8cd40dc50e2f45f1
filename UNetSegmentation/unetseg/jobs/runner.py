"""How every `unetseg` command runs: the exit-code table, cancel on SIGINT/SIGTERM, and reporting.

A job is a function ``work(job, options)`` in one of the `unetseg.jobs` modules. `run_job` gives it a `Job`
(where to report — JSON lines on stdout with ``--progress json``, readable text otherwise — and the cancel
event), and turns how it ended into one exit code and one message: a user's error (bad input, model, dataset
or output path; an output refused because it would destroy data) is a sentence, never a traceback; only a bug
keeps its traceback. Torch-free: the job's module is imported after the signal handlers are in place.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from unetseg.jobs.progress import ProgressEmitter

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_SOME_FAILED = 0, 1, 2, 3, 4
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "failed: bad input, model, dataset or output, or refused to overwrite data (see the message)",
    EXIT_USAGE: "wrong command line: unknown option, missing or invalid argument",
    EXIT_CANCELLED: "cancelled by Ctrl-C (SIGINT) or SIGTERM; no partial output is left (a cohort keeps its "
    "finished cases: rerun to resume)",
    EXIT_SOME_FAILED: "a cohort finished but some cases failed: each is in the run log with its error",
}

# Errors a user can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)
# Job modules whose work checks the cancel event itself, and so stops at a safe point on the first signal.
POLLING_JOBS = ("predict", "train")

Work = Callable[["Job", dict[str, Any]], None]


class JobCancelled(BaseException):
    """Raised in a job when it is cancelled; a BaseException so domain code's ``except Exception`` lets it through."""


class SomeCasesFailed(Exception):  # noqa: N818 (says what happened, like JobCancelled)
    """Raised by a cohort that finished with failed cases (after reporting its summary): exit code 4."""


class Job:
    """What a running command gets: the cancel event and where its progress, messages and result go."""

    def __init__(self, command: str, argv: list[str], json_progress: bool, cancel: threading.Event) -> None:
        self.command, self.argv, self.cancel = command, argv, cancel
        self.emitter = ProgressEmitter() if json_progress else None

    def log(self, message: str) -> None:
        """A message for the user: a ``log`` event, or a line on stderr."""
        if self.emitter is not None:
            self.emitter.log(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        """The failure that ends the job: an ``error`` event, or ``unetseg COMMAND: message`` on stderr."""
        if self.emitter is not None:
            self.emitter.error(message, stage=self.emitter.stage or self.command)
        else:
            print(f"unetseg {self.command}: {message}", file=sys.stderr, flush=True)

    def result(self, text: str, **fields: Any) -> None:
        """What the job produced: a ``result`` event with ``fields``, or ``text`` on stdout."""
        if self.emitter is not None:
            self.emitter.result(**fields)
        else:
            print(text, flush=True)

    def check_cancel(self) -> None:
        """Raise `JobCancelled` if a signal asked the job to stop (call it before committing an output)."""
        if self.cancel.is_set():
            raise JobCancelled(f"{self.command} cancelled.")


@contextlib.contextmanager
def cancel_on_signals(polls: bool) -> Iterator[threading.Event]:
    """SIGINT and SIGTERM cancel the block: they set the yielded event; a job that ``polls`` it stops at its
    next check (between training iterations, between window batches), any other job — or a second signal —
    stops at once with `JobCancelled`. Outside the main thread signals are left alone."""
    event = threading.Event()

    def handler(signum: int, frame: object) -> None:
        first = not event.is_set()
        event.set()
        if not (polls and first):
            raise JobCancelled(f"Cancelled ({signal.Signals(signum).name}).")

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield event
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def describe(error: BaseException) -> str:
    """The sentence a user reads for an error (a missing file's name included)."""
    message = str(error) or type(error).__name__
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return message


def run_job(command: str, target: str, options: dict[str, Any], argv: list[str], json_progress: bool = False) -> int:
    """Run ``target`` ("module:function" under `unetseg.jobs`) with ``options``; return the exit code."""
    module_name, function = target.split(":")
    with cancel_on_signals(polls=module_name in POLLING_JOBS) as cancel:
        job = Job(command, argv, json_progress, cancel)
        try:
            module = importlib.import_module(f"unetseg.jobs.{module_name}")  # lazy: the job may load torch
            getattr(module, function)(job, options)
        except (JobCancelled, KeyboardInterrupt) as error:
            job.error(describe(error) if isinstance(error, JobCancelled) else f"{command} cancelled.")
            return EXIT_CANCELLED
        except SomeCasesFailed as error:
            job.error(describe(error))
            return EXIT_SOME_FAILED
        except USER_ERRORS as error:
            job.error(describe(error))
            return EXIT_CANCELLED if cancel.is_set() else EXIT_FAILED
        except Exception as error:
            job.error(describe(error))
            if cancel.is_set():  # the job's own cancel exception (SegmentationCancelled, TrainingCancelled)
                return EXIT_CANCELLED
            raise
    return EXIT_OK


def exit_code_table() -> str:
    """The exit codes as lines of text (for ``unetseg --help`` and the README)."""
    return "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
