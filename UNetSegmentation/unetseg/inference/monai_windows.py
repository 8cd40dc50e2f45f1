"""How an imported bundle's inferer covers its preprocessed volume, and its run with ONNX Runtime (torch-free).

MONAI's inferers, as a bundle declares them: ``SlidingWindowInferer`` (roi, overlap, constant or Gaussian
blending; a roi of -1 takes the whole axis), ``SliceInferer`` (a 2D network over the slices along one axis: a 3D
window one voxel thick, squeezed before the network) and ``SimpleInferer`` (the network on the whole volume).
`export_scores` runs them (ONNX Runtime or OpenVINO) with the windows and weights of
`unetseg.inference.windows`, which reproduce MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unetseg.inference.onnx_backend import WindowRunner
from unetseg.inference.openvino_backend import export_session
from unetseg.inference.windows import WindowSettings, call_shape, count_windows, sliding_window


def window_plan(inferer: dict, spatial: Sequence[int]) -> tuple[tuple[int, ...], int | None]:
    """The window over the volume's ``spatial`` axes (the whole volume for ``whole_image``) and, for
    ``slices``, the axis whose slices the 2D network sees."""
    if inferer["kind"] == "whole_image":
        return tuple(int(n) for n in spatial), None
    roi = list(inferer["roi_size"])
    slice_axis = int(inferer.get("spatial_dim", 0)) if inferer["kind"] == "slices" else None
    if slice_axis is not None:
        roi.insert(slice_axis, 1)
    if len(roi) != len(spatial):
        raise ValueError(f"The bundle's window {inferer['roi_size']} does not fit a {len(spatial)}D volume.")
    return tuple(int(n) if r == -1 else int(r) for r, n in zip(roi, spatial, strict=True)), slice_axis


def window_count(inferer: dict, spatial: Sequence[int]) -> int:
    """How many windows the inferer runs over a volume of ``spatial`` shape."""
    roi, _ = window_plan(inferer, spatial)
    if inferer["kind"] == "whole_image":
        return 1
    return count_windows(spatial, roi, float(inferer["overlap"]))


def batch_size(inferer: dict, settings: WindowSettings) -> int:
    """Windows per network call: the caller's, else the bundle's ``sw_batch_size``."""
    return settings.batch_size or int(inferer.get("sw_batch_size", 1))


def export_scores(backend: str, package: Any, volume: np.ndarray, inferer: dict, settings: WindowSettings,
                  run: Any) -> np.ndarray:  # fmt: skip
    """The network's blended scores (K, *spatial) over a preprocessed ``volume`` (C, *spatial), with ONNX
    Runtime or OpenVINO (``backend``) on the package's export."""
    roi, slice_axis = window_plan(inferer, volume.shape[1:])
    network_roi = [n for axis, n in enumerate(roi) if axis != slice_axis]
    windows = window_count(inferer, volume.shape[1:])
    calls = call_shape(batch_size(inferer, settings), windows, (volume.shape[0], *network_roi))
    session = export_session(backend, package, settings, calls)
    runner = WindowRunner(session, settings, run)

    def predict(windows: np.ndarray) -> np.ndarray:
        if slice_axis is None:
            return runner(np.ascontiguousarray(windows))
        return np.expand_dims(runner(np.ascontiguousarray(windows.squeeze(slice_axis + 2))), slice_axis + 2)

    x = np.ascontiguousarray(volume[np.newaxis], dtype=np.float32)
    run.start_windows(windows)
    if inferer["kind"] == "whole_image":
        return predict(x)[0]
    return sliding_window(
        x,
        roi,
        batch_size(inferer, settings),
        predict,
        float(inferer["overlap"]),
        float(inferer["sigma_scale"]),
        inferer["mode"],
    )[0]
