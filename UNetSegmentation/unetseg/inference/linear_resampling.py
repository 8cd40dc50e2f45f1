"""Linear resampling as gather-and-blend along each axis, for numpy arrays and torch tensors alike.

Used for the slab-wise return of class scores to the input grid (a slab of output slices needs only the few
source slices around it, which `torch.nn.functional.interpolate` cannot address), and as the image resampler
of the torch-free ONNX path. The sampling positions are those of ``interpolate(mode="trilinear",
align_corners=False)``: voxel centres aligned, edge values repeated. Written by hand because neither torch nor
MONAI resamples a sub-range of the output grid, and the ONNX path has no torch.

Torch-free at import: the array library comes in through `ArrayOps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArrayOps:
    """How to turn numpy index/weight arrays into the working array type, and results back into numpy."""

    asarray: Callable[[np.ndarray], Any] = np.asarray
    to_numpy: Callable[[Any], np.ndarray] = np.asarray


NUMPY = ArrayOps()


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second (align_corners=False)."""
    source = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, (source - lower).astype(np.float32)


def _resample_axis(array: Any, axis: int, taps: tuple[np.ndarray, ...], ops: ArrayOps) -> Any:
    """Resample one axis of `array` with precomputed taps (a no-op when the axis keeps its size and positions)."""
    lower, upper, weight = taps
    if len(lower) == array.shape[axis] and not weight.any() and np.array_equal(lower, np.arange(len(lower))):
        return array
    index = (slice(None),) * axis
    shape = [1] * array.ndim
    shape[axis] = len(weight)
    w = ops.asarray(weight.reshape(shape))
    low = array[(*index, ops.asarray(lower))]
    high = array[(*index, ops.asarray(upper))]
    return low + (high - low) * w


def resample_linear(array: Any, shape: Sequence[int], ops: ArrayOps = NUMPY) -> Any:
    """Resample the trailing ``len(shape)`` axes of `array` (leading axes are channels) to `shape`."""
    first = array.ndim - len(shape)
    for offset, n_out in enumerate(shape):
        axis = first + offset
        array = _resample_axis(array, axis, linear_taps(array.shape[axis], n_out), ops)
    return array


def slab_depth(channels: int, plane_voxels: int, budget_values: int = 1 << 24) -> int:
    """How many output slices one slab may hold so that its float scores stay within `budget_values` values."""
    return max(1, budget_values // max(1, channels * plane_voxels))


def argmax_on_grid(
    scores: Any,
    shape: Sequence[int],
    label_values: Sequence[int],
    ops: ArrayOps = NUMPY,
    budget_values: int = 1 << 24,
) -> np.ndarray:
    """Resample (C, z, y, x) class scores to the 3D `shape` slab by slab and arg-max each slab into labels.

    Memory never holds full-resolution scores for all classes: one slab of output slices at a time.
    `label_values[c]` is the label written for channel c.
    """
    z_taps = linear_taps(scores.shape[1], shape[0])
    lut = np.asarray(label_values)
    labels = np.zeros(tuple(shape), dtype=np.min_scalar_type(int(lut.max(initial=0))))
    depth = slab_depth(scores.shape[0], shape[1] * shape[2], budget_values)
    for z0 in range(0, shape[0], depth):
        rows = slice(z0, min(z0 + depth, shape[0]))
        first = int(z_taps[0][rows].min())
        last = int(z_taps[1][rows].max()) + 1
        slab_taps = (z_taps[0][rows] - first, z_taps[1][rows] - first, z_taps[2][rows])
        slab = _resample_axis(scores[:, first:last], 1, slab_taps, ops)
        slab = resample_linear(slab, (slab.shape[1], *shape[1:]), ops)
        labels[rows] = lut[ops.to_numpy(slab.argmax(0))]
    return labels
