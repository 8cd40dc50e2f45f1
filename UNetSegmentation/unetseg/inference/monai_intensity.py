"""MONAI's intensity transforms and output activations in numpy, with MONAI's rules, for imported bundles.

``ScaleIntensityRange``, ``NormalizeIntensity`` and ``ScaleIntensity`` as MONAI 1.x computes them (float32, its
divide-by-zero and empty-mask rules), the ``Activations`` (softmax over channels, sigmoid) and ``AsDiscrete``
(argmax, threshold) of a bundle's postprocessing. Arrays are channel first. Torch-free: the ONNX path uses them
as they are, the torch path too (the network's scores come back as numpy).
"""

from __future__ import annotations

import numpy as np


def scale_intensity_range(
    image: np.ndarray, a_min: float, a_max: float, b_min: float | None, b_max: float | None, clip: bool
) -> np.ndarray:
    """MONAI's ScaleIntensityRange: ``[a_min, a_max]`` mapped linearly onto ``[b_min, b_max]``, then clipped."""
    image = image.astype(np.float32, copy=False)
    if a_max - a_min == 0.0:
        return image - a_min if b_min is None else image - a_min + b_min
    image = (image - a_min) / (a_max - a_min)
    if b_min is not None and b_max is not None:
        image = image * (b_max - b_min) + b_min
    if clip:
        image = np.clip(image, b_min, b_max)
    return image.astype(np.float32, copy=False)


def normalize_intensity(
    image: np.ndarray,
    subtrahend: float | list | None,
    divisor: float | list | None,
    nonzero: bool,
    channel_wise: bool,
) -> np.ndarray:
    """MONAI's NormalizeIntensity: subtract the mean (or ``subtrahend``), divide by the population std (or
    ``divisor``; 0 becomes 1), over the non-zero voxels only with ``nonzero``, per channel with ``channel_wise``."""
    image = image.astype(np.float32)
    if not channel_wise:
        return _normalize(image, subtrahend, divisor, nonzero)
    for c in range(image.shape[0]):
        sub = subtrahend[c] if isinstance(subtrahend, list) else subtrahend
        div = divisor[c] if isinstance(divisor, list) else divisor
        image[c] = _normalize(image[c], sub, div, nonzero)
    return image


def _normalize(image: np.ndarray, sub: float | None, div: float | None, nonzero: bool) -> np.ndarray:
    mask = image != 0 if nonzero else np.ones(image.shape, dtype=bool)
    if not mask.any():
        return image
    values = image[mask]
    sub = float(values.astype(np.float64).mean()) if sub is None else float(sub)
    div = float(values.astype(np.float64).std()) if div is None else float(div)
    div = 1.0 if div == 0.0 else div
    out = image.copy()
    out[mask] = (values - np.float32(sub)) / np.float32(div)
    return out


def scale_intensity(image: np.ndarray, minv: float, maxv: float, channel_wise: bool) -> np.ndarray:
    """MONAI's ScaleIntensity (minv/maxv form): min..max of the image (or each channel) onto ``[minv, maxv]``."""
    image = image.astype(np.float32)
    if channel_wise:
        return np.stack([_rescale(c, minv, maxv) for c in image])
    return _rescale(image, minv, maxv)


def _rescale(image: np.ndarray, minv: float, maxv: float) -> np.ndarray:
    low, high = image.min(), image.max()
    if low == high:
        return image * np.float32(minv)
    return ((image - low) / (high - low) * (maxv - minv) + minv).astype(np.float32)


def activation(scores: np.ndarray, function: str | None) -> np.ndarray:
    """MONAI's Activations over channel-first scores: ``softmax`` (over channels), ``sigmoid`` or None."""
    if function == "softmax":
        shifted = np.exp(scores - scores.max(axis=0, keepdims=True))
        return shifted / shifted.sum(axis=0, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    return scores


def discretize(scores: np.ndarray, argmax: bool, threshold: float | None) -> np.ndarray:
    """MONAI's AsDiscrete: the arg-max channel (one channel out) and/or each channel thresholded (``>=``)."""
    if argmax:
        scores = np.argmax(scores, axis=0)[np.newaxis].astype(np.float32)
    if threshold is not None:
        scores = (scores >= threshold).astype(np.float32)
    return scores
