"""MONAI's spatial conventions and transforms in numpy: what an imported bundle's Orientation, Spacing and Invert do.

MONAI holds an image as a channel-first array over the file's own (i, j, k) axes with a RAS affine (nibabel's
convention); this project holds ``(z, y, x)`` arrays with LPS geometry. `monai_volume` converts. The transforms
are MONAI 1.x's rules, re-implemented so that the ONNX path needs neither torch nor MONAI (MONAI imports torch)
and the torch path needs no nibabel (MONAI's Orientation does):

- `orient`: nibabel's ``io_orientation`` / ``ornt_transform`` (flips, then a transpose) and the new affine;
- `spacing_grid`: ``Spacing``'s output grid — ``zoom_affine`` (the direction kept, new voxel sizes) and
  ``compute_shape_offset`` (``round(extent / spacing + 1)`` voxels, which can be one more than other rules give),
  a target within ``AFFINE_TOL`` of the input spacing keeping it;
- `resample`: ``grid_sample`` on the axis-aligned map Spacing makes (source voxel = xform @ output voxel),
  linear or nearest (round half to even), border or zeros padding, computed in float64 for images as MONAI does.
  Inverting a Spacing is the same resampling back to the recorded grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from unetseg.image import Image

AFFINE_TOL = 1e-3
"""MONAI's tolerance (monai.data.utils.AFFINE_TOL) for "the same affine" and "the same spacing"."""
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def monai_volume(images: Sequence[Image], rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The inputs as MONAI's LoadImage + EnsureChannelFirst give them: a float32 ``(C, i, j[, k])`` array and
    its ``(rank + 1)``-square RAS affine (``rank`` 2: a single-slice image as a 2D one)."""
    arrays = [np.asarray(image.array, dtype=np.float32).transpose(2, 1, 0) for image in images]
    affine = _RAS_FROM_LPS @ images[0].index_to_physical()
    if rank == 2:
        arrays = [a[..., 0] for a in arrays]
        affine = to_affine_nd(2, affine)
    return np.stack(arrays), affine


def labels_to_image(labels: np.ndarray) -> np.ndarray:
    """A label map over MONAI's ``(i, j[, k])`` axes as this project's ``(z, y, x)`` array."""
    return np.ascontiguousarray(labels.transpose(2, 1, 0) if labels.ndim == 3 else labels.T[np.newaxis])


def to_affine_nd(rank: int, affine: np.ndarray) -> np.ndarray:
    """The ``rank``-D affine within a larger (or smaller) one, as MONAI's ``to_affine_nd``."""
    out = np.eye(rank + 1)
    d = max(min(rank, len(affine) - 1), 1)
    out[:d, :d] = affine[:d, :d]
    if d > 1:
        out[:d, -1] = affine[:d, -1]
    return out


# ------------------------------------------------------------------------------------------------- orientation


@dataclass(frozen=True)
class Reorder:
    """The flips (of input axes) and then the transpose an Orientation applies to channel-first arrays."""

    flips: tuple[int, ...]
    transpose: tuple[int, ...]

    def shape(self, shape: Sequence[int]) -> list[int]:
        """The spatial shape after the reorder."""
        return [int(shape[t]) for t in self.transpose]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` (C, *spatial) flipped and transposed."""
        array = np.flip(array, [f + 1 for f in self.flips]) if self.flips else array
        return np.ascontiguousarray(array.transpose((0, *(t + 1 for t in self.transpose))))

    def undo(self, array: np.ndarray) -> np.ndarray:
        """``array`` (C, *spatial) back in the axis order and directions before the reorder."""
        array = array.transpose(np.argsort((0, *(t + 1 for t in self.transpose))))
        return np.ascontiguousarray(np.flip(array, [f + 1 for f in self.flips]) if self.flips else array)


def _io_orientation(affine: np.ndarray) -> np.ndarray:
    """For each array axis, the closest world axis and its direction (nibabel's io_orientation)."""
    rank = len(affine) - 1
    rzs = affine[:rank, :rank]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    zooms[zooms == 0] = 1
    p, s, qs = np.linalg.svd(rzs / zooms, full_matrices=False)
    keep = s > s.max() * rank * np.finfo(s.dtype).eps
    r = p[:, keep] @ qs[keep]
    ornt = np.full((rank, 2), np.nan)
    for in_ax in np.argsort(np.min(-(r**2), axis=0), kind="stable"):
        col = r[:, in_ax]
        if not np.allclose(col, 0):
            out_ax = int(np.argmax(np.abs(col)))
            ornt[in_ax] = (out_ax, -1 if col[out_ax] < 0 else 1)
            r[out_ax, :] = 0
    if np.isnan(ornt).any():
        raise ValueError("The image's direction matrix is degenerate: its axes cannot be oriented.")
    return ornt


def _axcodes_ornt(axcodes: str) -> np.ndarray:
    """nibabel's axcodes2ornt with the RAS labels (L/R, P/A, I/S)."""
    ornt = []
    for code in axcodes:
        axis = next(i for i, pair in enumerate(_AXIS_LABELS) if code in pair)
        ornt.append((axis, -1 if code == _AXIS_LABELS[axis][0] else 1))
    if len({a for a, _ in ornt}) != len(ornt):
        raise ValueError(f"Orientation axcodes {axcodes!r} name one axis twice.")
    return np.asarray(ornt, dtype=float)


def orientation(affine: np.ndarray, shape: Sequence[int], axcodes: str) -> tuple[np.ndarray, Reorder]:
    """MONAI's Orientation to ``axcodes`` of an image of spatial ``shape`` on ``affine``: its new affine and the
    `Reorder` of its array."""
    rank = len(shape)
    start, end = _io_orientation(affine), _axcodes_ornt(axcodes[:rank])
    if len(end) != rank:
        raise ValueError(f"Orientation axcodes {axcodes!r} do not fit a {rank}D image.")
    ornt = np.empty_like(start)
    for end_in, (end_out, end_flip) in enumerate(end):
        start_in = int(np.flatnonzero(start[:, 0] == end_out)[0])
        ornt[start_in] = (end_in, 1 if start[start_in, 1] == end_flip else -1)
    undo_reorder = np.eye(rank + 1)[[*(int(v) for v in ornt[:, 0]), rank], :]
    undo_flip = np.diag([*ornt[:, 1], 1.0])
    center = -(np.asarray(shape, dtype=float) - 1) / 2.0
    undo_flip[:rank, rank] = ornt[:, 1] * center - center
    flips = tuple(int(i) for i in np.flatnonzero(ornt[:, 1] == -1))
    transpose = tuple(int(i) for i in np.argsort(ornt[:, 0]))
    return affine @ (undo_flip @ undo_reorder), Reorder(flips, transpose)


# ------------------------------------------------------------------------------------------------- spacing


def spacing_grid(affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float]) -> tuple[np.ndarray, list[int]]:
    """The affine and shape MONAI's Spacing (diagonal=False, scale_extent=False) resamples an image to."""
    rank = len(shape)
    current = np.sqrt(np.sum(affine[:rank, :rank] ** 2, axis=0))
    current[current == 0] = 1.0
    wanted = np.asarray((list(pixdim) + [pixdim[-1]] * rank)[:rank], dtype=float)
    out = np.where(np.abs(current - wanted) <= AFFINE_TOL, current, wanted)  # close enough: keep the input's
    out = np.where(out > 0, out, current)  # a value <= 0 keeps that axis's spacing
    out[out == 0] = 1.0
    rzs = affine[:-1, :-1]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    new_affine = np.eye(rank + 1)
    new_affine[:-1, :-1] = rzs @ np.linalg.inv(zs) @ np.diag(np.sign(np.diag(zs)) * np.abs(out))
    out_shape, offset = _shape_offset(np.asarray(shape, dtype=float), affine, new_affine)
    new_affine[:rank, -1] = offset
    return new_affine, [int(n) for n in out_shape]


def _shape_offset(shape: np.ndarray, in_affine: np.ndarray, out_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's compute_shape_offset: the output shape covering the input's corner voxels, and its origin."""
    corners = np.asarray(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape((len(shape), -1))
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    corners_out = np.linalg.solve(out_affine, in_affine) @ corners
    world = in_affine @ corners
    distances = corners_out[:-1].copy()
    out_shape = np.round(np.ptp(corners_out[:-1] / corners_out[-1], axis=1) + 1.0)
    for i in range(world.shape[1]):
        if np.allclose(np.min(distances - distances[:, i : i + 1], 1), 0.0, rtol=AFFINE_TOL):
            return out_shape, world[:-1, i]  # the smallest corner becomes the origin
    centre = in_affine[:-1, :-1] @ (shape / 2.0) + in_affine[:-1, -1] - out_affine[:-1, :-1] @ (out_shape / 2.0)
    return out_shape, centre


def unchanged(
    src_affine: np.ndarray, dst_affine: np.ndarray, src_shape: Sequence[int], dst_shape: Sequence[int]
) -> bool:
    """MONAI's test for "no resampling needed": same shape and the same affine (or an identity map) within tolerance."""
    if list(src_shape) != list(dst_shape):
        return False
    xform = np.linalg.solve(src_affine, dst_affine)
    return bool(
        np.allclose(src_affine, dst_affine, atol=AFFINE_TOL) or np.allclose(xform, np.eye(len(xform)), atol=AFFINE_TOL)
    )


def tracked_affine(
    src_affine: np.ndarray, dst_affine: np.ndarray, src_shape: Sequence[int], dst_shape: Sequence[int]
) -> np.ndarray:
    """The affine MONAI's MetaTensor carries after resampling to ``dst_affine``: unchanged when no resampling
    was needed, else ``src @ solve(src, dst)`` (the inverse resamples from it, to the last bit as MONAI)."""
    if unchanged(src_affine, dst_affine, src_shape, dst_shape):
        return src_affine
    return src_affine @ np.linalg.solve(src_affine, dst_affine)


def resample(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    shape: Sequence[int],
    mode: str = "bilinear",
    padding_mode: str = "border",
    dtype: type = np.float64,
) -> np.ndarray:
    """``array`` (C, *spatial) on ``src_affine`` resampled to ``shape`` voxels on ``dst_affine`` as MONAI's
    SpatialResample does (float32 out; computed in ``dtype``). Only the axis-aligned maps Spacing makes."""
    if unchanged(src_affine, dst_affine, array.shape[1:], shape):
        return array.astype(np.float32)
    rank = len(shape)
    xform = np.linalg.solve(src_affine, dst_affine)
    scale = np.diag(xform)[:rank]
    if np.abs(xform[:rank, :rank] - np.diag(scale)).max() > 1e-6 * max(1.0, np.abs(scale).max()):
        raise ValueError("Resampling between grids of different directions is not supported here.")
    theta = _normalizing(array.shape[1:]) @ xform @ np.linalg.inv(_normalizing(shape))
    out = array.astype(dtype, copy=False)
    order = sorted(range(rank), key=lambda a: shape[a] / array.shape[a + 1])  # shrinking axes first
    for axis in order:
        n_in, n_out = array.shape[axis + 1], shape[axis]
        grid = _affine_grid_base(n_out) * theta[axis, axis] + theta[axis, rank]
        out = _resample_axis(out, axis + 1, ((grid + 1) * n_in - 1) / 2, mode, padding_mode)
    return out.astype(np.float32)


def _normalizing(shape: Sequence[int]) -> np.ndarray:
    """MONAI's normalize_transform (align_corners=False): voxel indices to grid_sample's [-1, 1] coordinates."""
    size = np.asarray(shape, dtype=np.float64)
    matrix = np.diag(np.concatenate([2.0 / size, [1.0]]))
    matrix[:-1, -1] = 1.0 / size - 1.0
    return matrix


def _affine_grid_base(n: int) -> np.ndarray:
    """torch's affine_grid base coordinates along an axis of ``n`` (align_corners=False), to the last bit:
    ``linspace(-1, 1, n) * (n - 1) / n``, torch's linspace computing ``start + step * i`` (from the end for the
    second half) with one rounding (a fused multiply-add, done exactly here with fractions).

    Exactness matters at ties: with nearest interpolation a source coordinate of exactly k + 0.5 (common with
    round spacing ratios) goes whichever way MONAI's floating-point path sends it."""
    if n <= 1:
        return np.zeros(max(n, 1))
    step = 2.0 / (n - 1)
    half = n // 2
    values = [
        float(Fraction(-1) + Fraction(step) * i) if i < half else float(Fraction(1) - Fraction(step) * (n - 1 - i))
        for i in range(n)
    ]
    return np.asarray(values) * (n - 1) / n


def _resample_axis(array: np.ndarray, axis: int, coords: np.ndarray, mode: str, padding_mode: str) -> np.ndarray:
    """One axis of grid_sample (align_corners=False): values at source voxel coordinates ``coords``."""
    n = array.shape[axis]
    if padding_mode == "border":
        coords = np.clip(coords, 0, n - 1)
    elif padding_mode != "zeros":
        raise ValueError(f"Resampling with padding_mode {padding_mode!r} is not supported (border or zeros).")
    shape = [1] * array.ndim
    shape[axis] = len(coords)
    if mode == "nearest":
        taps = [(np.rint(coords).astype(np.int64), np.ones(len(coords)))]
    elif mode == "bilinear":
        lower = np.floor(coords).astype(np.int64)
        upper_weight = coords - lower
        taps = [(lower, 1.0 - upper_weight), (lower + 1, upper_weight)]
    else:
        raise ValueError(f"Resampling mode {mode!r} is not supported (bilinear or nearest).")
    out = None
    for index, weight in taps:
        inside = (index >= 0) & (index < n)
        weight = np.where(inside, weight, 0.0).astype(array.dtype).reshape(shape)
        part = np.take(array, np.clip(index, 0, n - 1), axis=axis) * weight
        out = part if out is None else out + part
    return out
