"""nnU-Net v2's sliding window, reproduced in numpy (``inference/sliding_window_prediction.py`` and the predictor).

Tiles start at ``round(i * (size - patch) / (n - 1))`` with ``n = ceil((size - patch) / (patch * step)) + 1``
(step 0.5); axes smaller than the patch are zero-padded, centred (``pad_nd_image``). A 2-D configuration on a
volume runs slice by slice along the first axis. Each tile's logits are weighted by nnU-Net's Gaussian (a unit
impulse smoothed with sigma = patch / 8, scaled to a maximum of 10, stored in fp16, zeros lifted to the smallest
value) and the sums are kept in fp16, as nnU-Net keeps them; the folds are averaged after stitching. Torch-free:
the ONNX path uses it as it is; the torch path hands it a window callable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

STEP = 0.5
SIGMA_SCALE = 1.0 / 8
_GAUSSIAN_MAX = 10.0


def steps(size: int, patch: int, step: float = STEP) -> list[int]:
    """Tile starts along one axis (``compute_steps_for_sliding_window``); ``size`` is at least ``patch``."""
    n = math.ceil((size - patch) / (patch * step)) + 1
    if n == 1:
        return [0]
    actual = (size - patch) / (n - 1)
    return [int(np.round(actual * i)) for i in range(n)]


def tiles(shape: Sequence[int], patch: Sequence[int], step: float = STEP) -> list[tuple]:
    """Index tuples of every tile over a padded ``shape`` (spatial axes), in nnU-Net's order.

    With a 2-D ``patch`` on a 3-D ``shape`` each tile is one slice along the first axis (an int index).
    """
    if len(patch) == len(shape) - 1:
        plane = tiles(shape[1:], patch, step)
        return [(d, *t) for d in range(shape[0]) for t in plane]
    starts = [steps(n, p, step) for n, p in zip(shape, patch, strict=True)]
    return [tuple(slice(s, s + p) for s, p in zip(corner, patch, strict=True)) for corner in itertools.product(*starts)]


def gaussian(patch: Sequence[int]) -> np.ndarray:
    """nnU-Net's tile weights (``compute_gaussian(patch, 1/8, value_scaling_factor=10)``), as float32."""
    impulse = np.zeros(tuple(patch))
    impulse[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(impulse, [p * SIGMA_SCALE for p in patch], 0, mode="constant", cval=0)
    g = (g / (g.max() / _GAUSSIAN_MAX)).astype(np.float16)
    g[g == 0] = g[g != 0].min()
    return g.astype(np.float32)


def pad_to_patch(data: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the last ``len(patch)`` axes of ``(C, *spatial)`` up to the patch, centred; the slices that undo it."""
    spatial = data.shape[1:]
    lead = len(spatial) - len(patch)
    full = [*spatial[:lead], *(max(n, p) for n, p in zip(spatial[lead:], patch, strict=True))]
    before = [(f - n) // 2 for f, n in zip(full, spatial, strict=True)]
    if list(full) == list(spatial):
        return data, tuple(slice(None) for _ in spatial)
    pad = [(0, 0), *((b, f - n - b) for b, f, n in zip(before, full, spatial, strict=True))]
    return np.pad(data, pad), tuple(slice(b, b + n) for b, n in zip(before, spatial, strict=True))


def count_tiles(shape: Sequence[int], patch: Sequence[int]) -> int:
    """How many tiles cover ``shape`` once padded to the patch."""
    lead = len(shape) - len(patch)
    full = [*shape[:lead], *(max(n, p) for n, p in zip(shape[lead:], patch, strict=True))]
    plane = math.prod(len(steps(n, p)) for n, p in zip(full[lead:], patch, strict=True))
    return plane * (full[0] if lead else 1)


def sliding_window(data: np.ndarray, patch: Sequence[int], heads: int, folds: int,
                   predict: Callable[[np.ndarray], np.ndarray], batch_size: int = 1) -> np.ndarray:
    """The fold-averaged, Gaussian-weighted logits ``(heads, *spatial)`` of ``data`` ``(C, *spatial)``, in fp16.

    ``predict`` maps a batch of tiles ``(B, C, *patch)`` to the folds' stacked logits ``(B, folds * heads, *patch)``
    (mirroring and progress are its business). As in nnU-Net, each fold's weighted logits and the weights are summed
    in fp16 and divided, then the folds are summed in fp16 and divided by their number.
    """
    padded, unpad = pad_to_patch(data, patch)
    weights = gaussian(patch)
    weights16 = weights.astype(np.float16)
    logits = np.zeros((folds * heads, *padded.shape[1:]), dtype=np.float16)
    norm = np.zeros(padded.shape[1:], dtype=np.float16)
    todo = tiles(padded.shape[1:], patch)
    for first in range(0, len(todo), batch_size):
        chunk = todo[first:first + batch_size]
        batch = np.stack([padded[(slice(None), *t)] for t in chunk])
        out = predict(np.ascontiguousarray(batch, dtype=np.float32))
        for t, tile_logits in zip(chunk, out, strict=True):
            region = logits[(slice(None), *t)]
            np.add(region, tile_logits * weights, out=region, casting="unsafe")
            np.add(norm[t], weights16, out=norm[t])
    del padded
    logits /= norm
    total = logits[:heads]
    for fold in range(1, folds):
        total += logits[fold * heads:(fold + 1) * heads]
    if folds > 1:
        total /= np.float16(folds)
    return np.ascontiguousarray(total[(slice(None), *unpad)])
