"""The preprocessing operations: orientation, resampling, normalisation, HU priors, crops (`prepare` applies them).

Resampling runs in torch on the tensor's device (CPU or GPU): scipy/skimage resampling is nnU-Net's most
reported bottleneck. Torch is imported only by the functions that need it: orientation, normalisation and crops
of numpy arrays work without it (the ONNX Runtime backend runs on machines without PyTorch).
Arrays are in numpy order ``(z, y, x)`` (optionally with leading channel axes); functions that take a spacing
together with an array name the order they expect.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from unetseg.image import Image
from unetseg.vocabulary import HU_PRIOR_WINDOWS

if TYPE_CHECKING:
    import torch

    ArrayLike = np.ndarray | torch.Tensor

# ------------------------------------------------------------------------------------------------- orientation

# Each letter names the direction an index axis points to in LPS: (LPS axis, sign).
_AXIS_CODES = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def _parse_orientation(code: str) -> list[tuple[int, float]]:
    axes = [_AXIS_CODES.get(letter) for letter in code.upper()]
    if len(axes) != 3 or None in axes or sorted(a for a, _ in axes) != [0, 1, 2]:
        raise ValueError(
            f"Orientation {code!r} must name each body axis once, like 'RAS' or 'LPS' (one letter of L/R, P/A, S/I "
            "for each of the i, j, k axes)."
        )
    return axes  # type: ignore[return-value]


@dataclass(frozen=True)
class Reorientation:
    """The axis permutation and flips `reorient` applied, and the original geometry, to undo it exactly."""

    axes: tuple[int, int, int]  # source numpy axis of each output numpy axis (z, y, x)
    flips: tuple[bool, bool, bool]  # whether each output numpy axis was reversed
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def apply(self, array: ArrayLike) -> ArrayLike:
        """Reorient an array on the original grid (its last three axes), e.g. a second sequence or a label map."""
        return _flip(_permute(array, self.axes), self.flips)

    def undo(self, array: ArrayLike) -> ArrayLike:
        """Bring an array on the reoriented grid (its last three axes) back to the original axis order."""
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return _permute(_flip(array, self.flips), inverse)

    def undo_image(self, image: Image) -> Image:
        """Bring a reoriented image (e.g. a label map) back onto the original grid, voxel for voxel."""
        return Image(self.undo(image.array), self.spacing, self.origin, self.direction)


def _permute(array: ArrayLike, axes: Sequence[int]) -> ArrayLike:
    lead = tuple(range(array.ndim - 3))
    order = (*lead, *(len(lead) + a for a in axes))
    return np.transpose(array, order) if isinstance(array, np.ndarray) else array.permute(order)


def _flip(array: ArrayLike, flips: Sequence[bool]) -> ArrayLike:
    dims = tuple(array.ndim - 3 + n for n, f in enumerate(flips) if f)
    if isinstance(array, np.ndarray):
        return np.ascontiguousarray(np.flip(array, dims) if dims else array)
    return array.flip(dims) if dims else array


def reorient(image: Image, orientation: str | None = "RAS") -> tuple[Image, Reorientation]:
    """Permute and flip the axes to the axis-aligned orientation closest to ``orientation`` (no interpolation).

    Like SimpleITK's DICOMOrient: an oblique grid stays oblique, each index axis is matched to the body axis it
    is closest to. ``None`` leaves the image as it is. Returns the image and what undoes the change.
    """
    if orientation is None:
        identity = Reorientation((0, 1, 2), (False, False, False), image.spacing, image.origin, image.direction)
        return image, identity
    wanted = _parse_orientation(orientation)
    d = image.direction_matrix
    # The body axis of each index axis: the assignment with the largest total alignment.
    body_axis = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[c], c]) for c in range(3)))
    source = [body_axis.index(w) for w, _ in wanted]  # ITK (x, y, z) source axis of each output axis
    flip = [bool(np.sign(d[w, s]) != sign) for (w, sign), s in zip(wanted, source, strict=True)]
    size = image.size
    first_index = np.zeros(3)
    for s, f in zip(source, flip, strict=True):
        first_index[s] = size[s] - 1 if f else 0
    new_direction = np.stack([d[:, s] * (-1.0 if f else 1.0) for s, f in zip(source, flip, strict=True)], axis=1)
    reorientation = Reorientation(
        axes=tuple(2 - source[2 - n] for n in range(3)),  # numpy axis n is ITK axis 2 - n
        flips=tuple(flip[2 - n] for n in range(3)),
        spacing=image.spacing,
        origin=image.origin,
        direction=image.direction,
    )
    new_image = Image(
        reorientation.apply(image.array),
        tuple(image.spacing[s] for s in source),
        tuple(image.index_to_physical()[:3] @ np.append(first_index, 1.0)),
        tuple(new_direction.ravel()),
    )
    return new_image, reorientation


# -------------------------------------------------------------------------------------------------- resampling

_TORCH_MODES = {
    "linear": {2: "bilinear", 3: "trilinear"},
    "nearest": {2: "nearest-exact", 3: "nearest-exact"},
    "cubic": {2: "bicubic", 3: "trilinear"},  # torch has no tricubic: 3D "cubic" is trilinear
}


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, ...]:
    """The grid size after resampling, nnU-Net's rule ``round(shape × spacing / target)``; all in one axis order.

    MONAI's Spacingd rounds differently and can add a voxel that then costs a whole extra row of windows.
    """
    if not len(shape) == len(spacing) == len(target_spacing):
        raise ValueError(f"shape {shape}, spacing {spacing} and target {target_spacing} need the same length.")
    new = np.round(np.asarray(shape, float) * np.asarray(spacing, float) / np.asarray(target_spacing, float))
    return tuple(int(max(1, n)) for n in new)


def resample(t: torch.Tensor, shape: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """Resample a ``(C, *spatial)`` or ``(N, C, *spatial)`` tensor to ``shape`` on its own device.

    ``mode``: "linear", "nearest" or "cubic" ("cubic" is bicubic in 2D and trilinear in 3D, torch having no
    tricubic). Voxel centres follow ``align_corners=False``: the field of view is kept, as in nnU-Net.
    Integer tensors come back in their dtype with "nearest" and as float32 otherwise.
    """
    from torch.nn.functional import interpolate

    spatial = len(shape)
    if spatial not in (2, 3) or t.ndim not in (spatial + 1, spatial + 2):
        raise ValueError(
            f"Expected a (C, *spatial) or (N, C, *spatial) tensor for a {spatial}D shape; got {tuple(t.shape)}."
        )
    if mode not in _TORCH_MODES:
        raise ValueError(f"Unknown resampling mode {mode!r}; use one of {sorted(_TORCH_MODES)}.")
    if tuple(t.shape[-spatial:]) == tuple(shape):
        return t
    batched = t.ndim == spatial + 2
    x = t if batched else t.unsqueeze(0)
    if not x.is_floating_point():
        x = x.float()
    torch_mode = _TORCH_MODES[mode][spatial]
    options = {} if torch_mode == "nearest-exact" else {"align_corners": False}
    out = interpolate(x, size=tuple(int(s) for s in shape), mode=torch_mode, **options)
    if mode == "nearest" and not t.is_floating_point():
        out = out.to(t.dtype)
    return out if batched else out.squeeze(0)


def resample_labels(labels: ArrayLike, shape: Sequence[int]) -> ArrayLike:
    """Resample an integer label map ``(*spatial)``: each label's mask linearly, then the arg-max.

    Per-label linear interpolation (nnU-Net's order-1 rule for segmentations) gives smooth, unshifted borders,
    which nearest neighbour does not; keeping a running maximum holds two float volumes, not one per label.
    Returns the same kind (numpy or torch, device, dtype) as given.
    """
    import torch

    as_numpy = isinstance(labels, np.ndarray)
    t = torch.from_numpy(labels) if as_numpy else labels
    if tuple(t.shape) == tuple(shape):
        return labels
    best = torch.full(tuple(shape), -1.0, device=t.device)
    out = torch.zeros(tuple(shape), dtype=t.dtype, device=t.device)
    for value in torch.unique(t).tolist():
        weight = resample((t == value).float().unsqueeze(0), shape, "linear")[0]
        out.masked_fill_(weight > best, value)
        torch.maximum(best, weight, out=best)
    return out.numpy() if as_numpy else out


def resample_image(image: Image, target_spacing_xyz: Sequence[float], mode: str = "cubic") -> Image:
    """Resample an image to a spacing given in ITK order ``(x, y, z)``, with the exact resulting geometry.

    The new spacing is the field of view over the rounded size (so it can differ slightly from the target);
    a single-slice (2D) image keeps its one slice. Use `resample_labels` for label maps.
    """
    import torch

    spacing_zyx = tuple(reversed(image.spacing))
    target_zyx = tuple(reversed(tuple(float(s) for s in target_spacing_xyz)))
    if image.is_single_slice:
        target_zyx = (spacing_zyx[0], *target_zyx[1:])
    shape = target_shape(image.shape, spacing_zyx, target_zyx)
    array = resample(torch.from_numpy(np.asarray(image.array, dtype=np.float32)).unsqueeze(0), shape, mode)[0]
    return Image(array.numpy(), *resampled_geometry(image, shape))


def resampled_geometry(image: Image, shape: Sequence[int]) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) of ``image``'s field of view sampled on ``shape`` (z, y, x), as `resample` does."""
    scale = np.asarray(image.shape, float)[::-1] / np.asarray(shape, float)[::-1]  # ITK order
    spacing = np.asarray(image.spacing) * scale
    # With align_corners=False the first new voxel centre sits at index (scale - 1) / 2 of the old grid.
    first = image.index_to_physical() @ np.append((scale - 1.0) / 2.0, 1.0)
    return tuple(spacing), tuple(first[:3]), image.direction


# ----------------------------------------------------------------------------------------------- normalisation

NORMALIZATION_SCHEMES = ("ct", "zscore", "rescale01", "none")
_EPSILON = 1e-8


def normalize(
    x: ArrayLike, scheme: str, params: dict | None = None, mask: ArrayLike | None = None
) -> ArrayLike:
    """Normalise one channel's intensities as a model expects; returns float32 of the same kind (numpy/torch).

    - "ct": clip to ``params["clip"]`` (default: the fingerprint's 0.5/99.5 percentiles) then
      ``(x - params["mean"]) / params["std"]``, the dataset-wide foreground statistics (nnU-Net's CT scheme).
    - "zscore": the image's own mean and std; with ``mask`` (e.g. the non-zero region) the statistics come
      from inside the mask and the outside is set to 0 (nnU-Net's masked z-score for skull-stripped MRI).
    - "rescale01": min-max to [0, 1]; "none": unchanged (as float).

    Numpy arrays are normalised with numpy (no torch needed), tensors with torch on their own device.
    """
    as_numpy = isinstance(x, np.ndarray)
    t = np.asarray(x, dtype=np.float32) if as_numpy else x.float()
    if scheme == "ct":
        return _normalize_ct(t, params or {})
    if scheme == "zscore":
        return _zscore(t, None if mask is None else _as_bool(mask, t))
    if scheme == "rescale01":
        low = t.min()
        return (t - low) / (t.max() - low).clip(min=_EPSILON)
    if scheme == "none":
        return t.copy() if as_numpy else t.clone()
    raise ValueError(f"Unknown normalisation scheme {scheme!r}; use one of {NORMALIZATION_SCHEMES}.")


def _as_bool(mask: ArrayLike, like: ArrayLike) -> ArrayLike:
    """``mask`` as a boolean array of the same kind (and device) as ``like``."""
    if isinstance(like, np.ndarray):
        return np.asarray(mask if isinstance(mask, np.ndarray) else mask.cpu().numpy(), dtype=bool)
    import torch

    m = torch.from_numpy(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
    return m.to(device=like.device, dtype=torch.bool)


def _std_mean(t: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Population standard deviation and mean, in one pass for tensors."""
    if isinstance(t, np.ndarray):
        return t.std(), t.mean()
    import torch

    return torch.std_mean(t, correction=0)


def _where(condition: ArrayLike, a: ArrayLike, b: float) -> ArrayLike:
    if isinstance(a, np.ndarray):
        return np.where(condition, a, np.float32(b))
    import torch

    return torch.where(condition, a, b)


def _normalize_ct(t: ArrayLike, params: dict) -> ArrayLike:
    if "clip" in params:
        low, high = params["clip"]
    elif "percentile_00_5" in params and "percentile_99_5" in params:
        low, high = params["percentile_00_5"], params["percentile_99_5"]
    else:
        low = high = None
    missing = [k for k in ("mean", "std") if k not in params] + (["clip"] if low is None else [])
    if missing:
        raise ValueError(
            f"CT normalisation needs {missing} in its parameters (from the dataset fingerprint, see "
            "ct_params_from_intensities)."
        )
    out = t.clip(float(low), float(high))  # a new array: the in-place steps below leave `t` alone
    out -= float(params["mean"])
    out /= max(float(params["std"]), _EPSILON)
    return out


def _zscore(t: ArrayLike, mask: ArrayLike | None) -> ArrayLike:
    if mask is None:
        std, mean = _std_mean(t)
        return (t - mean) / std.clip(min=_EPSILON)
    if mask.shape != t.shape:
        raise ValueError(f"The normalisation mask {tuple(mask.shape)} must match the image {tuple(t.shape)}.")
    if not bool(mask.any()):
        return _where(mask, t, 0.0)  # all zero
    std, mean = _std_mean(t[mask])
    return _where(mask, (t - mean) / std.clip(min=_EPSILON), 0.0)


def ct_params_from_intensities(values: np.ndarray) -> dict[str, float]:
    """Foreground intensity statistics for the "ct" scheme and the fingerprint (nnU-Net's names)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("No foreground intensities to compute CT normalisation statistics from.")
    low, median, high = np.percentile(v, [0.5, 50.0, 99.5])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(median),
        "min": float(v.min()),
        "max": float(v.max()),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
    }


def hu_prior_channels(hu: ArrayLike) -> ArrayLike:
    """Three binary float channels ``(3, *spatial)`` (lung, soft tissue, bone) from a CT in Hounsfield units."""
    channels = [(hu >= low) & (hu <= high) for _, low, high in HU_PRIOR_WINDOWS]
    if isinstance(hu, np.ndarray):
        return np.stack(channels).astype(np.float32)
    import torch

    return torch.stack(channels).float()


# ------------------------------------------------------------------------------------------------------ crops


def nonzero_bbox(arrays: ArrayLike | Sequence[ArrayLike], margin: int = 0) -> tuple[slice, ...]:
    """Bounding box (one slice per axis, widened by ``margin`` voxels) of the voxels non-zero in any array.

    Give one array, or a list of same-shape arrays (one per channel) for the union. An all-zero input gives
    the full extent, so cropping to it is a no-op.
    """
    channels = [arrays] if hasattr(arrays, "ndim") else list(arrays)  # one numpy array or tensor, or several
    masks = [c != 0 for c in channels]
    return _mask_bbox(_union(masks), margin)


def body_bbox(ct_hu: ArrayLike, threshold: float = -500.0, margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of the voxels above ``threshold`` HU: the body in a CT, where the air around is not zero."""
    return _mask_bbox(ct_hu > threshold, margin)


def _union(masks: list[ArrayLike]) -> ArrayLike:
    union = masks[0]
    for m in masks[1:]:
        if m.shape != union.shape:
            raise ValueError(f"All channels must have one shape; got {tuple(union.shape)} and {tuple(m.shape)}.")
        union = union | m
    return union


def _mask_bbox(mask: ArrayLike, margin: int) -> tuple[slice, ...]:
    slices = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        if isinstance(mask, np.ndarray):
            profile = mask.any(axis=others)
        else:
            profile = mask.any(dim=others).cpu().numpy() if others else mask.cpu().numpy()
        hits = np.flatnonzero(profile)
        if hits.size == 0:
            return tuple(slice(0, n) for n in mask.shape)
        slices.append(slice(max(0, int(hits[0]) - margin), min(mask.shape[axis], int(hits[-1]) + 1 + margin)))
    return tuple(slices)


def crop(array: ArrayLike, bbox: Sequence[slice]) -> ArrayLike:
    """The part of ``array`` inside ``bbox``; the box applies to the last ``len(bbox)`` axes."""
    return array[(Ellipsis, *bbox)]


def uncrop(array: ArrayLike, bbox: Sequence[slice], full_shape: Sequence[int], fill: float = 0) -> ArrayLike:
    """Put a cropped array back into a ``full_shape`` (spatial) array filled with ``fill``; leading axes kept."""
    shape = (*array.shape[: array.ndim - len(bbox)], *full_shape)
    if isinstance(array, np.ndarray):
        out = np.full(shape, fill, dtype=array.dtype)
    else:
        import torch

        out = torch.full(shape, fill, dtype=array.dtype, device=array.device)
    out[(Ellipsis, *bbox)] = array
    return out
