"""An optional dense-CRF refinement of class probabilities: a small PyTorch mean-field implementation.

Written by hand because pydensecrf no longer builds and MONAI's CRF needs a compiled extension. Kept apart from
`postprocessing` so the label-map steps (and the ONNX Runtime backend that runs them) need no PyTorch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import torch
from torch.nn import functional as nnf

_BILATERAL_CACHE_BYTES = 512 * 2**20


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
