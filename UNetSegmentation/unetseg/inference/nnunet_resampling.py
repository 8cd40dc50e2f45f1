"""nnU-Net v2's resampling, reproduced with numpy and scipy (``preprocessing/resampling/default_resampling.py``).

The rules: the new shape is ``round(old_spacing / new_spacing * old_shape)`` per axis; an image whose spacing
(current, else new) is anisotropic (max/min > 3) is resampled in-plane slice by slice with spline order ``order``
and along its one coarse axis with ``order_z`` (0: nearest); otherwise all axes at once with ``order``. In-plane and
isotropic resizing is ``skimage.transform.resize(mode='edge', anti_aliasing=False)``, i.e. ``scipy.ndimage.zoom``
with ``grid_mode=True`` and ``mode='nearest'`` clipped to the input's range; the coarse axis is
``map_coordinates`` at ``scale * (i + 0.5) - 0.5``. An unchanged shape is not resampled at all. Each channel is
computed in float64 and stored in the input's dtype (float32 images, fp16 logits), as nnU-Net stores it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISO_THRESHOLD = 3.0
"""nnU-Net's ``ANISO_THRESHOLD``: spacing ratios above it get a separate, lower-order pass along the coarse axis."""


def new_shape(old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: Python's round (half to even) of the scaled size, per axis."""
    return tuple(round(s_old / s_new * n) for s_old, s_new, n in zip(old_spacing, new_spacing, old_shape,
                                                                           strict=True))


def _coarse_axes(spacing: Sequence[float]) -> list[int]:
    largest = max(spacing)
    return [i for i, s in enumerate(spacing) if largest / s == 1]


def separate_axis(force_separate_z: bool | None, current: Sequence[float], new: Sequence[float],
                  threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis resampled on its own (``determine_do_sep_z_and_axis``), or None; ties (2 or 3 axes) give None."""
    if force_separate_z is not None:
        axes = _coarse_axes(current) if force_separate_z else []
    elif max(current) / min(current) > threshold:
        axes = _coarse_axes(current)
    elif max(new) / min(new) > threshold:
        axes = _coarse_axes(new)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def resize(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(x, shape, order, mode='edge', anti_aliasing=False)`` of a float64 array.

    Order 1 is computed axis by axis (linear interpolation is separable, and stays within the input's range),
    the same values as ``zoom``'s eight-tap sum up to rounding, several times faster.
    """
    if tuple(x.shape) == tuple(shape):
        return x.copy()
    if order == 1:
        for axis, size in enumerate(shape):
            if x.shape[axis] != size:
                x = along_axis(x, size, axis, 1)
        return x
    zoom = [n_out / n_in for n_out, n_in in zip(shape, x.shape, strict=True)]
    out = ndimage.zoom(x, zoom, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, x.min(), x.max(), out=out)
    return out


def along_axis(x: np.ndarray, size: int, axis: int, order: int) -> np.ndarray:
    """``map_coordinates(order, mode='nearest')`` of ``x`` to ``size`` along ``axis`` (identity on the others)."""
    n = x.shape[axis]
    coords = n / size * (np.arange(size) + 0.5) - 0.5
    if order == 0:
        index = ndimage.map_coordinates(np.arange(n, dtype=np.float64), [coords], order=0, mode="nearest")
        return np.take(x, index.astype(np.intp), axis=axis)
    if order == 1:
        clamped = np.clip(coords, 0, n - 1)
        low = np.floor(clamped).astype(np.intp)
        high = np.minimum(low + 1, n - 1)
        weight = (clamped - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) if a != axis else coords
                         for a, s in enumerate(x.shape)], indexing="ij")
    return ndimage.map_coordinates(x, grid, order=order, mode="nearest")


def resample(data: np.ndarray, shape: Sequence[int], current_spacing: Sequence[float], new_spacing: Sequence[float],
             order: int = 3, order_z: int = 0, force_separate_z: bool | None = None,
             separate_z_anisotropy_threshold: float = ANISO_THRESHOLD, is_seg: bool = False) -> np.ndarray:
    """``resample_data_or_seg_to_shape`` for images and logits ``(C, *spatial)`` → ``(C, *shape)``, same dtype."""
    if is_seg:
        raise ValueError("nnU-Net's segmentation resampling is not needed at inference and is not reproduced.")
    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    axis = separate_axis(force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold)
    out = np.empty((data.shape[0], *shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        x = data[c].astype(np.float64)
        if axis is None:
            out[c] = resize(x, shape, order)
            continue
        plane = [s for a, s in enumerate(shape) if a != axis]
        slices = [resize(np.take(x, i, axis=axis), plane, order) for i in range(x.shape[axis])]
        x = np.stack(slices, axis=axis)
        out[c] = along_axis(x, shape[axis], axis, order_z) if x.shape[axis] != shape[axis] else x
    return out


def resample_by_name(data: np.ndarray, shape: Sequence[int], current_spacing: Sequence[float],
                     new_spacing: Sequence[float], function: dict) -> np.ndarray:
    """Resample as a plans file's ``resampling_fn_*`` (``{"fn": name, "kwargs": {...}}``) says."""
    name, kwargs = function["fn"], dict(function.get("kwargs") or {})
    if name == "no_resampling_hack":
        return data
    if name != "resample_data_or_seg_to_shape":
        raise ValueError(f"nnU-Net's resampling function {name!r} is not reproduced.")
    return resample(data, shape, current_spacing, new_spacing, **kwargs)
