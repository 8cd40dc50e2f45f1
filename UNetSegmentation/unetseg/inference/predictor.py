"""The predictor: `segment(images, model)` returns an integer label map on exactly the input grid.

The steps: check the inputs; `prepare` them as the manifest says (reorient, crop to the body or the non-zero
region, normalise); run a backend (torch: resampling, MONAI's sliding window, TTA, devices and out-of-memory
fallback in `torch_backend`; ONNX Runtime without torch in `onnx_backend`), which returns labels on the cropped
grid slab by slab; `restore` them to the input grid (uncrop, undo the reorientation); post-process.
Torch-free at import, so the ONNX path never loads PyTorch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from unetseg.image import Image, LabelImage, check_finite, check_same_grid
from unetseg.inference import monai_pipeline, nnunet_pipeline, onnx_backend, openvino_backend
from unetseg.inference.engines import choose_backend, with_precision
from unetseg.inference.expectations import input_warnings
from unetseg.inference.limits import WorkLimits, check_work
from unetseg.inference.postprocessing import postprocess as run_postprocessing
from unetseg.inference.prepare import Preparation, prepare, restore
from unetseg.inference.windows import WindowSettings
from unetseg.models.catalog import load_model
from unetseg.vocabulary import BACKENDS, DEFAULT_OVERLAP, DEVICES, MONAI_VARIANT, NNUNET_VARIANT, check_choice

if TYPE_CHECKING:
    from unetseg.models.package import ModelPackage

ProgressCallback = Callable[[float, str], None]

# Imported models' own pipelines by the manifest's preprocessing kind: each has
# predict_labels(inputs, package, settings, backend, run, limits) -> labels on the input grid.
IMPORTED_PIPELINES: dict[str, Any] = {NNUNET_VARIANT: nnunet_pipeline, MONAI_VARIANT: monai_pipeline}

# Where each stage ends on the overall progress scale (the windows take almost all the time).
_PREPARED, _WINDOWS_DONE, _RESTORED = 0.05, 0.9, 0.95


class SegmentationCancelled(Exception):  # noqa: N818 (the name the issue and callers use)
    """Raised when the `cancel` event is set during `segment`; nothing is returned or written."""


class Progress:
    """Monotone progress over the stages, cancel checks between window batches, and the run's messages.

    Backends call `start_windows`, `advance` (after each window batch) and `note` (e.g. an out-of-memory
    retry); the fraction never goes back, a retry continues from where the failed attempt stopped.
    """

    def __init__(self, callback: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self._callback, self._cancel = callback, cancel
        self.fraction = 0.0
        self.messages: list[str] = []
        self._windows = (0, 1, 0.0)  # done, total, fraction at start

    def report(self, fraction: float, stage: str) -> None:
        """Report a stage at `fraction` (never below what was already reported)."""
        self.fraction = max(self.fraction, min(1.0, fraction))
        if self._callback is not None:
            self._callback(self.fraction, stage)

    def check_cancel(self) -> None:
        """Raise `SegmentationCancelled` if the caller asked to stop."""
        if self._cancel is not None and self._cancel.is_set():
            raise SegmentationCancelled("Segmentation cancelled.")

    def note(self, message: str) -> None:
        """Keep a message for the result and show it as the current stage."""
        self.messages.append(message)
        self.report(self.fraction, message)

    def start_windows(self, total: int) -> None:
        """Begin (or restart after a fallback) counting `total` windows."""
        self._windows = (0, max(total, 1), self.fraction)
        self.report(self.fraction, f"sliding window: 0/{total} windows")
        self.check_cancel()

    def advance(self, windows: int) -> None:
        """Count `windows` more windows done, report the real fraction, then honour a cancel request."""
        done, total, start = self._windows
        done = min(total, done + windows)
        self._windows = (done, total, start)
        self.report(start + (_WINDOWS_DONE - start) * done / total, f"sliding window: {done}/{total} windows")
        self.check_cancel()


# ----------------------------------------------------------------------------------------------- the predictor


def segment(
    images: Image | Any | Sequence[Image | Any],
    model: ModelPackage | str | Any,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    tta: bool | None = None,
    postprocess: bool | dict | None = None,
    backend: str = "torch",
    window_batch_size: int | None = None,
    limits: WorkLimits | None = None,
    precision: str = "auto",
) -> LabelImage:
    """Segment one image (or one image per sequence, on one grid) with a model package, catalog name or path.

    Returns the label map on exactly the grid of ``images[0]`` with the model's label table; warnings (e.g.
    a constant image, a device fallback) are in ``.messages``. ``tta``/``postprocess`` of None follow the
    manifest; ``postprocess`` may also be a dict of options overriding it. ``progress(fraction, stage)`` gets
    monotone fractions ending at 1.0; setting ``cancel`` stops between window batches with
    `SegmentationCancelled`. ``backend`` "torch" falls back to "onnx" when torch is not installed; "auto"
    picks the fastest engine installed here (`engines.choose_backend`). An input
    whose network grid needs more windows or memory than ``limits`` (default: `WorkLimits()`, sized to this
    machine) is refused with `WorkTooLargeError` before anything is resampled. ``precision`` (fp32, bf16, fp16,
    int8) runs the windows in that precision; "auto" picks the fastest the device computes natively and the model
    is validated for (`engines.with_precision`; the progress log names the engine and precision that ran).
    """
    check_choice("device", device, DEVICES)
    check_choice("backend", backend, BACKENDS)
    run = Progress(progress, cancel)
    run.report(0.0, "checking input")
    inputs = as_images(images)
    package = load_model(model)
    backend = choose_backend(backend, device, package, run.note)
    check_inputs(inputs, package)
    constant = constant_inputs(inputs, package)
    if len(constant) == len(inputs):
        run.note(
            f"{_are_constant(constant)} (every voxel has the same value): there is nothing to "
            "segment, so the segmentation is empty. Check that the right image was selected."
        )
        return _finish(run, inputs[0], np.zeros(inputs[0].shape, dtype=np.uint8), package)
    for warning in input_warnings(inputs, package):
        run.note(warning)
    if constant:
        # The other inputs still hold an image: segment, but say the model ran without part of its input.
        run.note(
            f"{_are_constant(constant)} (every voxel has the same value, e.g. all zero): the model segments "
            "without it, so the result may be poor. Check that the right image was selected for it."
        )
    options = postprocess_options(package, postprocess)
    settings = window_settings(package, device, tta, window_batch_size, crf=bool(options.pop("crf", False)))
    settings = with_precision(settings, package, backend, precision, lambda line: run.report(run.fraction, line))
    labels = _predict(inputs, package, settings, backend, run, limits or WorkLimits())
    run.check_cancel()
    if options:
        run.report(_RESTORED, "post-processing")
        labels = run_postprocessing(labels, tuple(reversed(inputs[0].spacing)), options)
    return _finish(run, inputs[0], labels, package)


def _predict(
    inputs: list[Image],
    package: ModelPackage,
    settings: WindowSettings,
    backend: str,
    run: Progress,
    limits: WorkLimits,
) -> np.ndarray:
    """Labels on the input grid: prepare (reorient, crop, normalise), check the work, run the backend, restore.

    An imported model runs its own tool's pipeline instead (`IMPORTED_PIPELINES`, by the manifest's
    ``preprocessing.kind``).
    """
    pipeline = IMPORTED_PIPELINES.get(package.preprocessing.get("kind"))
    if pipeline is not None:
        labels = pipeline.predict_labels(inputs, package, settings, backend, run, limits)
        run.report(_RESTORED, "labels on the input grid")
        return labels
    prepared = prepare(inputs, Preparation.from_package(package), settings)
    check_work(prepared.grid, len(inputs), settings, limits, prepared.spacing, prepared.target_spacing)
    run.report(_PREPARED, "preprocessed")
    labels = _backend_module(backend).predict_labels(
        package, prepared.volume, prepared.grid, prepared.grid_spacing, settings, run
    )
    run.check_cancel()
    labels = restore(labels, prepared)
    run.report(_RESTORED, "labels on the input grid")
    return labels


def _finish(run: Progress, grid: Image, labels: np.ndarray, package: ModelPackage) -> LabelImage:
    run.report(1.0, "done")
    return LabelImage(grid.with_array(labels), list(package.labels), list(run.messages))


# --------------------------------------------------------------------------------------------- inputs and model


def _backend_module(backend: str) -> Any:
    if backend == "onnx":
        return onnx_backend
    if backend == "openvino":
        return openvino_backend
    from unetseg.inference import torch_backend  # lazy: torch

    return torch_backend


def as_images(images: Image | Any | Sequence[Image | Any]) -> list[Image]:
    """A list of `Image` from one image or several, each an `Image` or a SimpleITK image."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("No input image given.")
    return [item if isinstance(item, Image) else Image.from_sitk(item) for item in items]


def check_inputs(inputs: list[Image], package: ModelPackage) -> None:
    """Raise ValueError for input the model cannot segment: wrong count, different grids, 2D/3D, NaN/Inf."""
    names = list(package.input_names)
    if len(inputs) != len(names):
        raise ValueError(
            f"Model '{package.manifest['name']}' reads {len(names)} image(s) ({', '.join(names)}), in this order; "
            f"got {len(inputs)}. Give one image per input."
        )
    labels = [f"Input '{name}'" for name in names]
    check_same_grid(inputs, labels)
    for label, image in zip(labels, inputs, strict=True):
        check_finite(image.array, label)
    dims = int(package.manifest["spatial_dims"])
    if dims == 3 and inputs[0].is_single_slice:
        raise ValueError(
            f"Model '{package.manifest['name']}' is a 3D model but the image is a single slice. Use a 2D model "
            "for single images such as radiographs, or give the whole volume."
        )
    if dims == 2 and not inputs[0].is_single_slice and not package.preprocessing.get("slice_wise", False):
        raise ValueError(
            f"Model '{package.manifest['name']}' is a 2D model for single-slice images, but the image has "
            f"{inputs[0].shape[0]} slices. Give one slice, or use a model whose manifest sets slice_wise."
        )


def constant_inputs(inputs: list[Image], package: ModelPackage) -> list[str]:
    """Names of the inputs whose voxels all have one value (all zero, say): nothing there to segment."""
    return [
        name
        for name, image in zip(package.input_names, inputs, strict=True)
        if image.array.size == 0 or image.array.min() == image.array.max()
    ]


def _are_constant(names: list[str]) -> str:
    quoted = ", ".join(f"'{name}'" for name in names)
    return f"Input {quoted} is constant" if len(names) == 1 else f"Inputs {quoted} are constant"


# ----------------------------------------------------------------------------------------------- windows


def window_settings(
    package: ModelPackage, device: str, tta: bool | None, batch_size: int | None, crf: bool = False
) -> WindowSettings:
    """The sliding-window settings from the manifest's inference defaults and the call's overrides."""
    inference = package.inference
    use_tta = bool(inference.get("tta", False)) if tta is None else tta
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"window_batch_size must be at least 1; got {batch_size}.")
    num_classes = int(package.network_config["num_classes"])
    values = [0, *(label.value for label in package.labels)]
    if len(values) != num_classes:
        raise ValueError(
            f"Model '{package.manifest['name']}' lists {len(values) - 1} labels but its network has "
            f"{num_classes} output channels (background included): fix the manifest's labels."
        )
    return WindowSettings(
        spatial_dims=int(package.manifest["spatial_dims"]),
        roi_size=tuple(int(p) for p in inference["patch_size"]),
        label_values=tuple(values),
        overlap=float(inference.get("overlap", DEFAULT_OVERLAP)),
        mirror_axes=tuple(int(a) for a in inference.get("mirror_axes", ())) if use_tta else (),
        device=device,
        batch_size=batch_size,
        crf=crf,
    )


# ---------------------------------------------------------------------------------------------- postprocessing


def postprocess_options(package: ModelPackage, override: bool | dict | None) -> dict:
    """The post-processing steps to run: the manifest's, updated by the call's dict; False switches all off.

    The dense CRF (``"crf"``) refines class scores, so the backend runs it on the network grid before the
    arg-max; the other steps work on the label map.
    """
    if override is False:
        return {}
    options = dict(package.inference.get("postprocessing") or {})
    if isinstance(override, dict):
        options.update(override)
    return options
