"""Post-processing of label maps: largest component, hole filling, small-island removal, and an optional CRF.

Label maps are numpy integer arrays in ``(z, y, x)`` order; components are 26-connected (8-connected on a
single slice), as in nnU-Net and MONAI. The morphology uses SimpleITK; the dense CRF is a small PyTorch
mean-field implementation because pydensecrf no longer builds and MONAI's CRF needs a compiled extension.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as nnf

from .preprocessing import nonzero_bbox

POSTPROCESS_OPTIONS = ("largest_component", "fill_holes", "min_island_mm3", "crf")
_BILATERAL_CACHE_BYTES = 512 * 2**20


# ------------------------------------------------------------------------------------------------- morphology


def _to_sitk(mask: np.ndarray) -> sitk.Image:
    """A uint8 SimpleITK image of a mask; a single slice becomes a 2D image so 2D rules apply."""
    return sitk.GetImageFromArray((mask[0] if mask.shape[0] == 1 else mask).astype(np.uint8))


def _from_sitk(img: sitk.Image, shape: tuple[int, ...]) -> np.ndarray:
    return sitk.GetArrayFromImage(img).reshape(shape)


def _components_by_size(mask: np.ndarray, minimum_size: int = 0) -> np.ndarray:
    """Component ids 1..n, largest first; components under ``minimum_size`` voxels become 0."""
    components = sitk.ConnectedComponent(_to_sitk(mask), True)  # fully connected: 26 (8 in 2D)
    return _from_sitk(sitk.RelabelComponent(components, minimumObjectSize=minimum_size), mask.shape)


def _largest(mask: np.ndarray) -> np.ndarray:
    return _components_by_size(mask) == 1


def _filled(mask: np.ndarray) -> np.ndarray:
    return _from_sitk(sitk.BinaryFillhole(_to_sitk(mask), fullyConnected=False, foregroundValue=1), mask.shape) > 0


def _map_labels(labels: np.ndarray, values: Iterable[int], change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``change`` (mask → new mask) to each label inside its bounding box.

    Voxels dropped from a mask become background; voxels added to a mask take the label only where they were
    background, so one label never overwrites another.
    """
    out = labels.copy()
    for value in values:
        mask = labels == value
        if not mask.any():
            continue
        box = nonzero_bbox(mask, margin=1)
        old = mask[box]
        new = change(old)
        region = out[box]  # a view: writing to it writes to `out`
        region[old & ~new] = 0
        region[new & ~old & (region == 0)] = value
    return out


def _present(labels: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(labels) if v != 0]


def keep_largest_component(labels: np.ndarray, label_values: Iterable[int]) -> np.ndarray:
    """Keep only the largest connected component of each given label; the rest becomes background."""
    return _map_labels(labels, label_values, _largest)


def fill_holes(labels: np.ndarray, label_values: Iterable[int]) -> np.ndarray:
    """Fill background cavities fully enclosed by a label, in 3D (2D for a single slice).

    3D rather than slice by slice: a tube open at its ends (a vessel wall, bowel) keeps its lumen, only truly
    enclosed cavities are filled. Enclosed voxels of another label (a lesion inside an organ) are kept.
    """
    return _map_labels(labels, label_values, _filled)


def remove_small_islands(labels: np.ndarray, spacing: Sequence[float], min_volume_mm3: float) -> np.ndarray:
    """Set to background every connected component smaller than ``min_volume_mm3``, label by label.

    ``spacing`` is the voxel size in mm (only its product matters here; give it in the array's (z, y, x) order).
    """
    voxels = math.ceil(min_volume_mm3 / float(np.prod(spacing)) - 1e-9)
    if voxels <= 1:
        return labels.copy()
    return _map_labels(labels, _present(labels), lambda mask: _components_by_size(mask, voxels) > 0)


def postprocess(
    labels: np.ndarray,
    spacing: Sequence[float],
    options: dict,
    probabilities: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
) -> np.ndarray:
    """Run the enabled steps: CRF, small-island removal, largest component, hole filling (in that order).

    ``spacing``: voxel size in mm in the array's ``(z, y, x)`` order. ``options``: ``largest_component``
    (True for every label, or a list of labels), ``fill_holes`` (bool), ``min_island_mm3`` (float),
    ``crf`` (bool; needs the class ``probabilities`` (C, z, y, x) and the ``image`` on the same grid).
    """
    unknown = set(options) - set(POSTPROCESS_OPTIONS)
    if unknown:
        raise ValueError(f"Unknown post-processing option(s) {sorted(unknown)}; allowed: {POSTPROCESS_OPTIONS}.")
    out = labels
    if options.get("crf"):
        if probabilities is None or image is None:
            raise ValueError(
                "The CRF step refines class probabilities: pass `probabilities` and `image` on the label grid, "
                "or call dense_crf before the arg-max."
            )
        refined = dense_crf(probabilities, image, spacing).argmax(0).cpu().numpy()
        out = refined.reshape(labels.shape).astype(labels.dtype)
    if options.get("min_island_mm3", 0) > 0:
        out = remove_small_islands(out, spacing, float(options["min_island_mm3"]))
    largest = options.get("largest_component", False)
    if largest:
        out = keep_largest_component(out, _present(out) if largest is True else [int(v) for v in largest])
    if options.get("fill_holes"):
        out = fill_holes(out, _present(out))
    return out if out is not labels else labels.copy()


# ---------------------------------------------------------------------------------------------------- dense CRF


def dense_crf(
    probabilities: torch.Tensor,
    image: torch.Tensor,
    spacing: Sequence[float],
    iterations: int = 5,
    *,
    spatial_sigma_mm: float = 2.0,
    spatial_weight: float = 3.0,
    bilateral_sigma_mm: float = 3.0,
    intensity_sigma: float = 0.5,
    bilateral_weight: float = 3.0,
    window: int = 5,
) -> torch.Tensor:
    """Refine class probabilities ``(C, *spatial)`` with a mean-field CRF (experimental; off by default).

    Messages come from a separable Gaussian kernel in mm (smoothness) and a bilateral kernel over a local
    ``window`` of voxels on the z-scored ``image`` (appearance, ConvCRF-style truncation); both kernels are
    normalised (like pydensecrf's default), so each weight is the most log-odds a neighbourhood can shift.
    Potts compatibility. ``spacing`` is in mm in the spatial axes' order (``(z, y, x)`` for 3D, ``(y, x)`` for
    2D). Works in 2D and 3D, on the tensors' device. Returns refined probabilities of the same shape.
    """
    dims = probabilities.ndim - 1
    if dims not in (2, 3) or tuple(image.shape) != tuple(probabilities.shape[1:]) or len(spacing) != dims:
        raise ValueError(
            f"dense_crf needs probabilities (C, *spatial), an image (*spatial) and one spacing per spatial axis; "
            f"got {tuple(probabilities.shape)}, {tuple(image.shape)} and {tuple(spacing)}."
        )
    if window < 3 or window % 2 == 0:
        raise ValueError(f"The bilateral window must be an odd number of voxels ≥ 3; got {window}.")
    q = probabilities.float()
    log_unary = torch.log(q.clamp(min=1e-6))
    spatial = _GaussianMessages(spacing, spatial_sigma_mm, q.device)
    bilateral = _BilateralMessages(image.float().to(q.device), spacing, bilateral_sigma_mm, intensity_sigma, window)
    for _ in range(iterations):
        logits = log_unary + spatial_weight * spatial(q) + bilateral_weight * bilateral(q)
        q = torch.softmax(logits, dim=0)
    return q


class _GaussianMessages:
    """Normalised separable Gaussian filtering in mm, excluding each voxel itself, with zero padding."""

    def __init__(self, spacing: Sequence[float], sigma_mm: float, device: torch.device) -> None:
        self.kernels = []
        for axis, step in enumerate(spacing):
            sigma = sigma_mm / float(step)
            radius = max(1, math.ceil(2.0 * sigma))
            offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
            self.kernels.append((axis, torch.exp(-0.5 * (offsets / sigma) ** 2), radius))
        self.dims = len(spacing)
        self.norm: torch.Tensor | None = None

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        conv = nnf.conv3d if self.dims == 3 else nnf.conv2d
        channels = x.shape[0]
        y = x.unsqueeze(0)
        for axis, kernel, radius in self.kernels:
            shape = [1] * self.dims
            shape[axis] = kernel.numel()
            padding = [0] * self.dims
            padding[axis] = radius
            weight = kernel.reshape(1, 1, *shape).expand(channels, 1, *shape)
            y = conv(y, weight, padding=tuple(padding), groups=channels)
        return y[0]

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.norm is None:  # the neighbours' total weight (smaller at the borders), computed once
            self.norm = (self._filter(torch.ones_like(q[:1])) - 1.0).clamp(min=1e-6)
        return (self._filter(q) - q) / self.norm


class _BilateralMessages:
    """Normalised bilateral filtering over a local window (shifted tensors), excluding each voxel itself."""

    def __init__(
        self, image: torch.Tensor, spacing: Sequence[float], sigma_mm: float, intensity_sigma: float, window: int
    ) -> None:
        std, mean = torch.std_mean(image, correction=0)
        self.features = (image - mean) / std.clamp(min=1e-6)
        self.radius = window // 2
        dims = image.ndim
        self.offsets = [o for o in itertools.product(range(-self.radius, self.radius + 1), repeat=dims) if any(o)]
        self.spatial = [
            sum((o_a * float(s)) ** 2 for o_a, s in zip(o, spacing, strict=True)) / (2 * sigma_mm**2)
            for o in self.offsets
        ]
        self.intensity_scale = 1.0 / (2 * intensity_sigma**2)
        self.padded_features = self._pad(self.features)
        # The weights do not change between iterations: keep them when they fit the budget, else recompute.
        fits = len(self.offsets) * image.numel() * image.element_size() <= _BILATERAL_CACHE_BYTES
        self.cached = list(self._weights()) if fits else None
        self.norm = sum(self.cached or self._weights()).clamp(min=1e-6)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the last spatial axes; padded voxels get weight 0 through the validity mask."""
        return nnf.pad(x, (self.radius,) * (2 * self.features.ndim))

    def _shifted(self, padded: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
        r = self.radius
        shape = self.features.shape
        index = tuple(slice(r + o, r + o + n) for o, n in zip(offset, shape, strict=True))
        return padded[(Ellipsis, *index)]

    def _weights(self) -> Iterable[torch.Tensor]:
        valid = self._pad(torch.ones_like(self.features))
        for offset, spatial in zip(self.offsets, self.spatial, strict=True):
            difference = self._shifted(self.padded_features, offset) - self.features
            yield torch.exp(-spatial - self.intensity_scale * difference**2) * self._shifted(valid, offset)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        padded = self._pad(q)
        message = torch.zeros_like(q)
        for offset, weight in zip(self.offsets, self.cached or self._weights(), strict=True):
            message += weight * self._shifted(padded, offset)
        return message / self.norm
