"""The predictor's path for imported nnU-Net v2 models: nnU-Net's own preprocessing, windows and export.

`predict_labels` prepares the inputs as ``nnUNetv2_predict`` does (`nnunet_prepare.preprocess`), runs nnU-Net's
sliding window (`nnunet_windows`) with the package's fold ensemble on torch or its ONNX export on ONNX Runtime
or OpenVINO
(mirroring TTA over the checkpoint's axes when on), and exports the labels back to the input grid. Torch-free at
import, so the ONNX path runs without PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from unetseg.image import Image
from unetseg.inference import onnx_backend
from unetseg.inference.limits import WorkLimits, check_work
from unetseg.inference.mirroring import MirroredTiles
from unetseg.inference.nnunet_prepare import NnUNetRules, export, preprocess
from unetseg.inference.nnunet_resampling import new_shape
from unetseg.inference.nnunet_windows import count_tiles, sliding_window
from unetseg.inference.openvino_backend import export_session
from unetseg.inference.windows import WindowSettings, call_shape
from unetseg.models.package import ModelPackage

# Where the stages end on the overall progress scale (the predictor's: prepared at 0.05, windows done by 0.9).
_PREPARED, _EXPORTING = 0.05, 0.9


def predict_labels(inputs: list[Image], package: ModelPackage, settings: WindowSettings, backend: str, run: Any,
                   limits: WorkLimits) -> np.ndarray:
    """Labels ``(z, y, x)`` on the grid of ``inputs[0]``, as ``nnUNetv2_predict`` would write them."""
    rules = NnUNetRules.from_package(package)
    spacing = tuple(reversed(inputs[0].spacing))  # (z, y, x), as nnU-Net's SimpleITK reader gives it
    _check_work(inputs, rules, settings, limits, spacing)
    arrays = np.stack([image.array for image in inputs])
    run.report(0.0, "nnU-Net preprocessing")
    pre = preprocess(arrays, spacing, rules)
    del arrays
    run.report(_PREPARED, "preprocessed")
    tiles = count_tiles(pre.data.shape[1:], rules.patch_size)
    predict, batch = _window_runner(backend, package, settings, run, call_shape(
        settings.batch_size or 1, tiles, (pre.data.shape[0], *rules.patch_size)))
    run.start_windows(tiles)
    logits = sliding_window(pre.data, rules.patch_size, rules.heads, rules.folds, predict, batch)
    run.check_cancel()
    pre.data = None
    run.report(_EXPORTING, "nnU-Net export")
    return export(logits, pre, rules)


def _check_work(inputs: list[Image], rules: NnUNetRules, settings: WindowSettings, limits: WorkLimits,
                spacing: tuple[float, ...]) -> None:
    """Refuse, before anything is resampled, an input whose network grid needs more than ``limits`` allow."""
    spacing_t = tuple(spacing[a] for a in rules.transpose_forward)
    shape_t = tuple(inputs[0].shape[a] for a in rules.transpose_forward)
    target = rules.target_spacing(spacing_t)
    check_work(new_shape(shape_t, spacing_t, target), len(inputs), settings, limits, spacing_t, target)


def _window_runner(backend: str, package: ModelPackage, settings: WindowSettings, run: Any,
                   calls: tuple[int, ...]) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """Tiles → mirror-averaged, fold-stacked logits, on ONNX Runtime, OpenVINO or torch; and the tiles per call.
    ``calls``: the input shape of the network's calls (`windows.call_shape`)."""
    if backend in ("onnx", "openvino"):
        session = export_session(backend, package, settings, calls)

        def forward(batch: np.ndarray) -> np.ndarray:
            return session.run([onnx_backend.OUTPUT_NAME], {onnx_backend.INPUT_NAME: batch})[0]

        on_cuda = backend == "onnx" and "CUDAExecutionProvider" in session.get_providers()
        # one mirrored copy per call on the CPU: as fast as two, and ONNX Runtime's arena then keeps one window's
        # activations (community benchmark, 1 fold with TTA: 36 s either way, peak RSS 2.1 against 3.8 GiB)
        copies = len(settings.mirror_sets()) if on_cuda else 1
        return MirroredTiles(forward, settings.mirror_sets(), copies, run), settings.batch_size or 1
    from unetseg.inference.torch_runner import window_runner  # lazy: torch

    return window_runner(package, settings, run)
