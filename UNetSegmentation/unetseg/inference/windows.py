"""Sliding-window geometry (window positions, Gaussian blending weights) and a numpy sliding window.

Both inference backends share this geometry: the torch backend hands it to MONAI's
`sliding_window_inference` (window count for progress, the Gaussian as ``roi_weight_map``), and the ONNX
backend runs `sliding_window` below. The positions reproduce MONAI's `dense_patch_slices` and the weights its
`compute_importance_map`, so both backends stitch exactly the same windows with the same weights.

This module must not import torch: the ONNX backend runs on workstations without PyTorch. That is also why
`sliding_window` is written by hand here (MONAI's implementation needs torch tensors).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from unetseg.vocabulary import DEFAULT_OVERLAP

# nnU-Net's Gaussian blending (sigma 1/8 of the window), with the vocabulary's overlap (not MONAI's 0.25 overlap
# with constant blending).
DEFAULT_SIGMA_SCALE = 0.125


@dataclass(frozen=True)
class WindowSettings:
    """What a backend needs to run a model's windows over a prepared volume and return labels."""

    spatial_dims: int  # 2: windows over each slice (slices are the batch); 3: over the volume
    roi_size: tuple[int, ...]
    label_values: tuple[int, ...]  # label written for each output channel (channel 0 is background)
    overlap: float = DEFAULT_OVERLAP
    sigma_scale: float = DEFAULT_SIGMA_SCALE
    mirror_axes: tuple[int, ...] = ()  # spatial axes flipped for test-time augmentation; () = no TTA
    device: str = "auto"
    batch_size: int | None = None  # windows per network call; None = chosen from free memory
    crf: bool = False  # refine the class scores with the dense CRF before the arg-max (torch backend)
    precision: str = "auto"  # fp32, bf16, fp16 or int8 (`precision.choose`); auto: fp32, or autocast on CUDA

    def mirror_sets(self) -> list[tuple[int, ...]]:
        """Every combination of mirrored axes (the empty one first): 2^k network passes per window."""
        axes = self.mirror_axes
        return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def axis_starts(size: int, roi: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Window start indices along one axis of `size` voxels (padded to `roi` when smaller), as MONAI places them."""
    size = max(size, roi)
    if roi == size:
        return [0]
    interval = max(int(roi * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return [min(d * interval, size - roi) for d in range(count)]


def window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float = DEFAULT_OVERLAP
) -> list[tuple[slice, ...]]:
    """Every window of `roi_size` over `image_size` (padded to the roi), in MONAI's order (last axis fastest)."""
    starts = [axis_starts(n, r, overlap) for n, r in zip(image_size, roi_size, strict=True)]
    return [
        tuple(slice(s, s + r) for s, r in zip(corner, roi_size, strict=True))
        for corner in itertools.product(*starts)
    ]


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float = DEFAULT_OVERLAP) -> int:
    """How many windows cover one image: count them before running them."""
    return math.prod(len(axis_starts(n, r, overlap)) for n, r in zip(image_size, roi_size, strict=True))


def call_shape(batch_size: int, windows: int, window: Sequence[int]) -> tuple[int, ...]:
    """The input shape of a sliding window's network calls, batch first: ``batch_size`` windows of shape ``window``
    (channels first), or all ``windows`` there are when fewer; only a last call can hold fewer."""
    return (max(1, min(batch_size, windows)), *window)


def gaussian_weights(roi_size: Sequence[int], sigma_scale: float = DEFAULT_SIGMA_SCALE) -> np.ndarray:
    """The Gaussian blending map of one window (sigma = `sigma_scale` × window), floored like MONAI's."""
    profiles = []
    for r in roi_size:
        x = np.arange(r, dtype=np.float32) - (r - 1) / 2.0
        profiles.append(np.exp(x**2 / (-2 * (sigma_scale * r) ** 2)).astype(np.float32))
    weights = profiles[0]
    for p in profiles[1:]:
        weights = np.multiply.outer(weights, p)
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def pad_to_roi(volume: np.ndarray, roi_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the spatial axes of (N, C, *spatial) up to the roi (MONAI's split) and the slices that undo it."""
    spatial = volume.shape[2:]
    before = [max(r - n, 0) // 2 for n, r in zip(spatial, roi_size, strict=True)]
    after = [max(r - n, 0) - b for n, r, b in zip(spatial, roi_size, before, strict=True)]
    if not any(before) and not any(after):
        return volume, tuple(slice(None) for _ in spatial)
    padded = np.pad(volume, [(0, 0), (0, 0), *zip(before, after, strict=True)])
    return padded, tuple(slice(b, b + n) for b, n in zip(before, spatial, strict=True))


def sliding_window(
    volume: np.ndarray,
    roi_size: Sequence[int],
    batch_size: int,
    predictor: Callable[[np.ndarray], np.ndarray],
    overlap: float = DEFAULT_OVERLAP,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    mode: str = "gaussian",
) -> np.ndarray:
    """Blended sliding-window prediction of (N, C, *spatial) float32 → (N, K, *spatial) float32.

    Same windows, padding and weights as MONAI's `sliding_window_inference(..., mode=mode)`: "gaussian", or
    "constant" (MONAI's default: a plain average where windows overlap).
    """
    volume, unpad = pad_to_roi(volume, roi_size)
    windows = [
        (n, w) for n in range(volume.shape[0]) for w in window_slices(volume.shape[2:], roi_size, overlap)
    ]
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"Unknown blending mode {mode!r}; use gaussian or constant.")
    weights = gaussian_weights(roi_size, sigma_scale) if mode == "gaussian" else np.ones(roi_size, np.float32)
    output = None
    norm = np.zeros(volume.shape[2:], dtype=np.float32)
    for w in window_slices(volume.shape[2:], roi_size, overlap):
        norm[w] += weights
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        logits = predictor(np.stack([volume[(n, slice(None), *w)] for n, w in chunk]))
        if output is None:
            output = np.zeros((volume.shape[0], logits.shape[1], *volume.shape[2:]), dtype=np.float32)
        for (n, w), window_logits in zip(chunk, logits, strict=True):
            output[(n, slice(None), *w)] += window_logits * weights
    output /= norm
    return output[(slice(None), slice(None), *unpad)]
