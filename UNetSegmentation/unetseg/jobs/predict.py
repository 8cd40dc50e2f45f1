"""The `unetseg predict` job: read the images, segment them, write the label map atomically, report.

With ``--progress json`` every progress step, message, error and the result is one JSON line on stdout (the
protocol of `progress.py`, read by the Slicer panel's background process). A failure or a cancel leaves no
output file (`runner` reports it and chooses the exit code).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetseg.inference.predictor import SegmentationCancelled, segment
from unetseg.io import LABEL_MAP_SUFFIXES, SEGMENTATION_SUFFIX, atomic_write, read_images, write_label_image
from unetseg.jobs.progress import ProgressEmitter
from unetseg.jobs.runner import Job


def check_output_name(path: Path) -> None:
    """Raise ValueError unless the output's extension names a format the writer knows (checked up front)."""
    name = path.name.lower()
    if not (name.endswith(SEGMENTATION_SUFFIX) or name.endswith(LABEL_MAP_SUFFIXES)):
        raise ValueError(
            f"Unsupported output extension for {path.name}: use {SEGMENTATION_SUFFIX} (Slicer segmentation) or "
            f"one of {', '.join(LABEL_MAP_SUFFIXES)} (label map)."
        )


def check_not_an_input(target: Path, inputs: Sequence[str]) -> None:
    """Raise ValueError when the output is one of the input files (by any path: links, ``..``, another spelling).

    Writing there would replace the image with its label map. Compared by device and inode
    (`os.path.samefile`), so symbolic and hard links are caught too.
    """
    if not target.exists():
        return  # a file that does not exist yet cannot be an input
    for given in inputs:
        source = Path(given).expanduser()
        if source.exists() and os.path.samefile(source, target):
            how = "" if source.absolute() == target else f" (as {target}, the same file through a link or another path)"
            raise ValueError(
                f"The output is the input image {source}{how}: writing it would destroy the image. "
                f"Choose another output path, e.g. {target.with_name(_stem(source.name) + '-segmentation.seg.nrrd')}."
            )


def _stem(name: str) -> str:
    """A file name without its image extension (``ct.nii.gz`` → ``ct``, ``ct.seg.nrrd`` → ``ct``)."""
    lower = name.lower()
    for suffix in (SEGMENTATION_SUFFIX, *LABEL_MAP_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def predict_to_file(
    inputs: Sequence[str],
    model: str,
    output: str,
    device: str = "auto",
    tta: bool | None = None,
    postprocess: bool | None = None,
    backend: str = "torch",
    progress: ProgressEmitter | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Path, list[str]]:
    """Segment the image file(s) with a model and write the result to `output`; return its path and messages.

    Setting ``cancel`` stops the run (between window batches, or before the output replaces anything).
    """
    target = Path(output).expanduser().absolute()
    check_output_name(target)
    check_not_an_input(target, inputs)
    with atomic_write(target) as temporary:  # checks the folder now; removes the partial file on any failure
        images = read_images(list(inputs))
        result = segment(images, model, device=device, progress=progress, cancel=cancel, tta=tta,
                         postprocess=postprocess, backend=backend)  # fmt: skip
        write_label_image(temporary, result)
        if cancel is not None and cancel.is_set():
            raise SegmentationCancelled("Segmentation cancelled.")
    return target, result.messages


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg predict`: `predict_to_file` with the job's progress and cancel; messages are logged."""
    path, messages = predict_to_file(options["input"], options["model"], options["output"], options["device"],
                                     options["tta"], options["postprocess"], options["backend"], job.emitter,
                                     job.cancel)  # fmt: skip
    for message in messages:
        job.log(message)
    job.result(f"Wrote {path}", output=path, messages=messages)
