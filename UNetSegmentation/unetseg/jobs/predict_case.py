"""One case: read its images, segment them, write the result atomically (label map, Slicer segmentation or DICOM SEG).

Shared by single-case `unetseg predict` and every cohort worker (in this process, a worker process, a Ray actor).
A failure or a cancel leaves no output file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetseg.inference.limits import WorkLimits
from unetseg.inference.predictor import SegmentationCancelled, segment
from unetseg.io import LABEL_MAP_SUFFIXES, SEGMENTATION_SUFFIX, atomic_write, read_images, write_label_image
from unetseg.io.dicom_seg import DICOM_SEG_SUFFIX, series_files, write_dicom_seg
from unetseg.jobs.cohort_inputs import output_suffix
from unetseg.jobs.progress import ProgressEmitter
from unetseg.models.catalog import load_model
from unetseg.models.package import ModelPackage
from unetseg.vocabulary import DEFAULT_MAX_WINDOWS


def check_output_name(path: Path, output_format: str | None = None) -> None:
    """Raise ValueError unless the output's extension names a format the writer knows (and ``output_format``,
    when given); checked up front."""
    name = path.name.lower()
    if not (name.endswith(SEGMENTATION_SUFFIX) or name.endswith(LABEL_MAP_SUFFIXES) or name.endswith(DICOM_SEG_SUFFIX)):
        raise ValueError(
            f"Unsupported output extension for {path.name}: use {SEGMENTATION_SUFFIX} (Slicer segmentation), "
            f"one of {', '.join(LABEL_MAP_SUFFIXES)} (label map) or {DICOM_SEG_SUFFIX} (DICOM SEG)."
        )
    if output_format is not None:
        suffix = output_suffix(output_format)
        if not name.endswith(suffix) or (suffix == ".nrrd" and name.endswith(SEGMENTATION_SUFFIX)):
            raise ValueError(f"Output {path.name} does not end in {suffix} as --format {output_format} asks; "
                             "give -o a matching name.")  # fmt: skip


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


def work_limits(options: dict[str, Any]) -> WorkLimits:
    """The `--max-memory-gb` / `--max-windows` ceilings (defaults sized to this machine)."""
    return WorkLimits(options.get("max_memory_gb"), options.get("max_windows") or DEFAULT_MAX_WINDOWS)


def predict_to_file(
    inputs: Sequence[str],
    model: ModelPackage | str,
    output: str,
    device: str = "auto",
    tta: bool | None = None,
    postprocess: bool | None = None,
    backend: str = "torch",
    progress: ProgressEmitter | None = None,
    cancel: threading.Event | None = None,
    output_format: str | None = None,
    limits: WorkLimits | None = None,
    precision: str = "auto",
) -> tuple[Path, list[str]]:
    """Segment the image file(s) with a model and write the result to `output`; return its path and messages.

    The output's extension chooses the format (``.dcm``: a DICOM SEG referencing the DICOM series given as the
    first input). Setting ``cancel`` stops the run (between window batches, or before the output replaces anything).
    """
    target = Path(output).expanduser().absolute()
    check_output_name(target, output_format)
    check_not_an_input(target, inputs)
    dicom_seg = target.name.lower().endswith(DICOM_SEG_SUFFIX)
    if dicom_seg:
        series_files(Path(inputs[0]).expanduser())  # refuse a non-DICOM source before segmenting
    with atomic_write(target) as temporary:  # checks the folder now; removes the partial file on any failure
        images = read_images(list(inputs))
        package = load_model(model)
        result = segment(images, package, device=device, progress=progress, cancel=cancel, tta=tta,
                         postprocess=postprocess, backend=backend, limits=limits, precision=precision)  # fmt: skip
        if dicom_seg:
            write_dicom_seg(temporary, result, Path(inputs[0]).expanduser(), package.name, package.version)
        else:
            write_label_image(temporary, result)
        if cancel is not None and cancel.is_set():
            raise SegmentationCancelled("Segmentation cancelled.")
    return target, result.messages
