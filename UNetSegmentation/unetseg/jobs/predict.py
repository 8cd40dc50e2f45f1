"""The `unetseg predict` job: read the images, segment them, write the label map atomically, report.

With ``json_progress`` every progress step, message, error and the result is one JSON line on stdout (the
protocol of `progress.py`, read by the Slicer panel's background process). A failure prints an error (a JSON
line, or a sentence on stderr), returns a non-zero exit code and leaves no output file; so does SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from unetseg.inference.predictor import SegmentationCancelled, segment
from unetseg.io import LABEL_MAP_SUFFIXES, SEGMENTATION_SUFFIX, atomic_write, read_images, write_label_image
from unetseg.jobs.progress import ProgressEmitter
from unetseg.models.package import PackageError

# Errors a user can cause (bad input, model or output path); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, PackageError, SegmentationCancelled)
EXIT_FAILED, EXIT_CANCELLED = 1, 3


def check_output_name(path: Path) -> None:
    """Raise ValueError unless the output's extension names a format the writer knows (checked up front)."""
    name = path.name.lower()
    if not (name.endswith(SEGMENTATION_SUFFIX) or name.endswith(LABEL_MAP_SUFFIXES)):
        raise ValueError(
            f"Unsupported output extension for {path.name}: use {SEGMENTATION_SUFFIX} (Slicer segmentation) or "
            f"one of {', '.join(LABEL_MAP_SUFFIXES)} (label map)."
        )


@contextmanager
def _terminate_as_cancel() -> Iterator[None]:
    """Turn SIGTERM (how a GUI stops the process) into `SegmentationCancelled`, so temporary files go away."""

    def handler(signum: int, frame: object) -> None:
        raise SegmentationCancelled("Segmentation cancelled (terminated).")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def predict_to_file(
    inputs: Sequence[str],
    model: str,
    output: str,
    device: str = "auto",
    tta: bool | None = None,
    postprocess: bool | None = None,
    backend: str = "torch",
    progress: ProgressEmitter | None = None,
) -> tuple[Path, list[str]]:
    """Segment the image file(s) with a model and write the result to `output`; return its path and messages."""
    target = Path(output).expanduser().absolute()
    check_output_name(target)
    with atomic_write(target) as temporary:  # checks the folder now; removes the partial file on any failure
        images = read_images(list(inputs))
        result = segment(images, model, device=device, progress=progress, tta=tta, postprocess=postprocess,
                         backend=backend)  # fmt: skip
        write_label_image(temporary, result)
    return target, result.messages


def run_predict(
    inputs: Sequence[str],
    model: str,
    output: str,
    device: str = "auto",
    tta: bool | None = None,
    postprocess: bool | None = None,
    backend: str = "torch",
    json_progress: bool = False,
) -> int:
    """`predict_to_file` with reporting for the command line; returns the process exit code."""
    emitter = ProgressEmitter() if json_progress else None
    try:
        with _terminate_as_cancel():
            path, messages = predict_to_file(inputs, model, output, device, tta, postprocess, backend, emitter)
    except USER_ERRORS as error:
        _report_error(emitter, error)
        return EXIT_CANCELLED if isinstance(error, SegmentationCancelled) else EXIT_FAILED
    except Exception as error:
        _report_error(emitter, error)
        raise
    for message in messages:
        if emitter:
            emitter.log(message)
        else:
            print(message, file=sys.stderr)
    if emitter:
        emitter.result(output=path, messages=messages)
    else:
        print(f"Wrote {path}")
    return 0


def _report_error(emitter: ProgressEmitter | None, error: BaseException) -> None:
    message = str(error) or type(error).__name__
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    if emitter:
        emitter.error(message)
    else:
        print(f"unetseg predict: {message}", file=sys.stderr)
