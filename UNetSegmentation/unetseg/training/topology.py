"""nnU-Net's network topology rules: pooling strides and kernels from the spacing, features per stage, the
memory proxy, and the first patch before it is fitted to the memory budget.

Re-implemented from nnU-Net v2's ``network_topology.py`` and ``default_experiment_planner.py`` (no code
copied). Axis order is numpy ``(z, y, x)`` (2D: ``(y, x)``). Needs numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# nnU-Net v2 constants (configuration.py and ExperimentPlanner.__init__).
FEATUREMAP_MIN_EDGE = 4
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
CONVS_PER_STAGE = 2
INITIAL_PATCH_EDGE = {2: 2048, 3: 256}


@dataclass(frozen=True)
class Topology:
    """Per-stage pooling strides and convolution kernels, and the patch padded to fit them."""

    pool_strides: tuple[tuple[int, ...], ...]
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisor: tuple[int, ...]


def pool_and_conv_props(spacing: np.ndarray | tuple, patch_size: np.ndarray | tuple) -> Topology:
    """nnU-Net's topology rule: pool an axis while it is ≥ 8 voxels and within 2× of the finest spacing.

    Kernels are 1 along an axis until its spacing comes within 2× of the finest one, then 3 (so thick-slice
    data start with 1×3×3 kernels); the bottleneck is 3×3(×3); the patch is padded to a multiple of 2^pools.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [int(p) for p in patch_size]
    kernel = [1] * dim
    pools = [0] * dim
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    while True:
        candidates = [i for i in range(dim) if current_size[i] >= 2 * FEATUREMAP_MIN_EDGE]
        if not candidates:
            break
        finest = min(current_spacing[i] for i in candidates)
        candidates = [i for i in candidates if current_spacing[i] / finest < 2]
        if len(candidates) == 1 and current_size[candidates[0]] < 3 * FEATUREMAP_MIN_EDGE:
            break
        overall_finest = min(current_spacing)
        kernel = [3 if k == 3 or current_spacing[d] / overall_finest < 2 else 1 for d, k in enumerate(kernel)]
        stride = tuple(2 if d in candidates else 1 for d in range(dim))
        for d in candidates:
            pools[d] += 1
            current_spacing[d] *= 2
            current_size[d] = math.ceil(current_size[d] / 2)
        strides.append(stride)
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisor = tuple(2**p for p in pools)
    padded = tuple(int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor, strict=True))
    return Topology(tuple(strides), tuple(kernels), padded, divisor)


def features_per_stage(num_stages: int, spatial_dims: int) -> tuple[int, ...]:
    """32 features doubling per stage, capped at 320 (3D) or 512 (2D)."""
    return tuple(min(BASE_FEATURES * 2**i, MAX_FEATURES[spatial_dims]) for i in range(num_stages))


def estimate_memory(
    patch_size: tuple[int, ...], pool_strides: tuple[tuple[int, ...], ...], features: tuple[int, ...],
    num_classes: int,
) -> float:
    """nnU-Net's memory proxy: voxels × channels of every convolution output of a plain 2-conv U-Net.

    Counts encoder convs, decoder convs, transposed convs and the final segmentation layer at each stage's
    feature-map size; it is compared with `REFERENCE_UNITS`, not converted to bytes directly.
    """
    sizes = []
    size = [int(p) for p in patch_size]
    for stride in pool_strides:
        size = [n // s for n, s in zip(size, stride, strict=True)]
        sizes.append(math.prod(size))
    encoder = sum(CONVS_PER_STAGE * f * n for f, n in zip(features, sizes, strict=True))
    decoder = sum((CONVS_PER_STAGE + 1) * f * n for f, n in zip(features[:-1], sizes[:-1], strict=True))
    return float(encoder + decoder + num_classes * sizes[0])


def initial_patch_size(spacing: np.ndarray, median_shape: np.ndarray) -> np.ndarray:
    """A patch shaped like 1/spacing (isotropic in mm) with the volume of 256³ (3D) or 2048² (2D), ≤ median."""
    dims = len(spacing)
    inv = 1.0 / np.asarray(spacing, float)
    patch = np.round(inv * (INITIAL_PATCH_EDGE[dims] ** dims / np.prod(inv)) ** (1.0 / dims))
    return np.minimum(patch, np.asarray(median_shape)).astype(int)
