"""Training augmentation pipelines: MONAI dictionary transforms with nnU-Net v2's probabilities and ranges.

A sample is ``{"image": (C, *spatial) float tensor, "label": (1, *spatial) float tensor}`` cropped at
`sampling_size(patch_size)` around the chosen centre; the spatial stage (rotation + scaling) resamples it to
`patch_size`, so rotated corners are filled from real voxels instead of padding. Spatial transforms move image
and label together (label with nearest-neighbour interpolation); intensity transforms touch the image only.
Which further augmentations run is the plan's `AugmentationSettings`: acquisition (field of view, slab, thick
slices) in `augment_acquisition`, contrast in `augment_intensity`.

nnU-Net v2 (``nnUNetTrainer.get_training_transforms``) draws rotation and scaling independently with p = 0.2
each inside one spatial transform; MONAI's `RandAffined` has a single probability, so we apply both together
with p = 1 − 0.8² = 0.36 (one resampling, the same chance that a patch is resampled at all).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.transforms import CenterSpatialCropd, Compose, OneOf, Rand2DElasticd, Rand3DElasticd, RandAffined, RandFlipd

from unetseg.training.augment_acquisition import fov_transform, slab_transform, thick_slices_transform
from unetseg.training.augment_intensity import (
    RandIntensityRemapd,
    RandLabelIntensitiesd,
    RandSignalBiasFieldd,
    inversion,
    nnunet_intensity,
    wide_gamma,
)
from unetseg.training.augment_settings import AugmentationSettings

# A patch whose largest in-plane edge exceeds 3× its slice count is trained with in-plane ("dummy 2D")
# rotation and scaling only, as nnU-Net does for anisotropic data.
_ANISOTROPY_THRESHOLD = 3.0
# In-plane rotation limit when a mirror axis of the rotation plane is excluded (labels that name left and right):
# beyond ±90° a rotation, alone or with the other axis's flip, turns the patch left for right, undoing the
# exclusion. nnU-Net's 3D range (±30°) keeps the sides apart. (nnU-Net itself has no such rule.)
_LATERAL_ROTATION_LIMIT = math.radians(30.0)
# Zoom range of the spatial transform (grid scale: > 1 zooms out). nnU-Net: 0.7–1.4.
_SCALE_RANGE = (0.7, 1.4)
# The extra context cropped for zooming out is capped at this factor (nnU-Net's get_patch_size uses 1.25);
# beyond it the border is padded with zeros.
_CROP_SCALE = 1.25


@dataclass(frozen=True)
class SpatialParams:
    """Rotation limits (radians, per MONAI rotation axis) and whether the patch is treated as dummy 2D."""

    rotation: tuple[float, ...]
    dummy_2d: bool


def spatial_params(patch_size: Sequence[int], mirror_axes: Sequence[int] | None = None) -> SpatialParams:
    """nnU-Net's rotation ranges for a patch: 3D ±30° about each axis, in-plane ±180° for anisotropic
    (dummy-2D) patches, 2D ±180° (±15° when the patch's aspect ratio exceeds 1.5); in-plane rotation is capped
    at ±30° when `mirror_axes` leaves out an axis of the rotation plane (left and right must stay apart)."""
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 entries (y, x) or (z, y, x); got {patch}.")
    plane = {len(patch) - 2, len(patch) - 1}
    lateral = mirror_axes is not None and not plane <= {int(a) for a in mirror_axes}
    cap = _LATERAL_ROTATION_LIMIT if lateral else math.pi
    if len(patch) == 2:
        limit = math.radians(15.0) if max(patch) / min(patch) > 1.5 else math.pi
        return SpatialParams((min(limit, cap),), dummy_2d=False)
    if max(patch[1:]) / patch[0] > _ANISOTROPY_THRESHOLD:
        return SpatialParams((cap, 0.0, 0.0), dummy_2d=True)
    return SpatialParams((math.radians(30.0),) * 3, dummy_2d=False)


def _rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix for MONAI's angles: one angle in 2D, intrinsic X→Y→Z rotations in 3D."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    a, b, g = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(g), -math.sin(g), 0], [math.sin(g), math.cos(g), 0], [0, 0, 1]])
    return rx @ ry @ rz


def sampling_size(patch_size: Sequence[int], mirror_axes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The crop that contains every rotated and zoomed-out patch (like nnU-Net's ``get_patch_size``), for the
    rotations `spatial_params(patch_size, mirror_axes)` allows.

    The bounding box of the rotated patch is evaluated at the corners of the angle range (and at multiples of
    45° inside it), scaled by the zoom-out cap; each margin is rounded so that crop − patch is even, which
    keeps the identity sampling grid on voxel centres.
    """
    patch = np.array([int(p) for p in patch_size], dtype=float)
    params = spatial_params(patch_size, mirror_axes)
    extent = patch.copy()
    candidates = []
    for limit in params.rotation:
        steps = [0.0, limit, -limit, *(k * math.pi / 4 for k in range(-4, 5) if abs(k * math.pi / 4) <= limit)]
        candidates.append(sorted(set(steps)))
    for angles in itertools.product(*candidates):
        rotated = np.abs(_rotation_matrix(angles)) @ patch
        extent = np.maximum(extent, rotated)
    zoomed = np.full(len(patch), _CROP_SCALE)
    if params.dummy_2d:
        zoomed[0] = 1.0
    extent = extent * zoomed
    margin = np.ceil((extent - patch) / 2.0).astype(int)
    return tuple(int(p + 2 * m) for p, m in zip(patch.astype(int), margin, strict=True))


def _spatial_transform(patch_size: Sequence[int], params: SpatialParams) -> OneOf:
    """Rotation + scaling resampled to the patch size (image bilinear, label nearest, zero padding), or
    else the central patch cut out exactly (no resampling, no interpolation)."""
    low, high = _SCALE_RANGE
    scale = [(low - 1.0, high - 1.0)] * len(patch_size)
    if params.dummy_2d:
        scale[0] = (0.0, 0.0)
    patch = tuple(int(p) for p in patch_size)
    affine = RandAffined(
        keys=("image", "label"),
        spatial_size=patch,
        prob=1.0,
        rotate_range=[(-r, r) for r in params.rotation],
        scale_range=scale,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
    )
    p_affine = 1.0 - 0.8**2
    return OneOf([affine, CenterSpatialCropd(keys=("image", "label"), roi_size=patch)],
                 weights=[p_affine, 1.0 - p_affine])


def _elastic_transform(spatial_dims: int) -> Rand2DElasticd | Rand3DElasticd:
    """Elastic deformation on the patch (opt-in; nnU-Net v2 disables it), displacing voxels by up to ~5.

    3D uses nnU-Net v1's smoothed-noise field (sigma 9–13, magnitude 0–900); 2D MONAI's B-spline control grid
    (16-pixel spacing, magnitude 0–2), which moves pixels by a similar amount.
    """
    if spatial_dims == 3:
        elastic = Rand3DElasticd(keys=("image", "label"), sigma_range=(9.0, 13.0), magnitude_range=(0.0, 900.0),
                                 prob=0.2, mode=("bilinear", "nearest"), padding_mode="reflection")
    else:
        elastic = Rand2DElasticd(keys=("image", "label"), spacing=(16.0, 16.0), magnitude_range=(0.0, 2.0),
                                 prob=0.2, mode=("bilinear", "nearest"), padding_mode="reflection")
    return elastic


def build_train_transforms(
    patch_size: Sequence[int],
    settings: AugmentationSettings | None = None,
    *,
    mirror_axes: Sequence[int] | None = None,
) -> Compose:
    """The training pipeline for crops of `sampling_size(patch_size)`, with the augmentations `settings` switches
    on (default: nnU-Net v2's own), in the order a scan is made and read:

    spatial (rotation/scaling, elastic) → per-label intensities (needs the label, so it precedes anything that
    blurs it away) → random intensity curve → bias field → nnU-Net's intensity set → thick slices → wider gamma →
    inversion → field of view and slab (last, so what they zero stays exactly zero, like the predictor's padding) →
    mirroring along `mirror_axes` (default: every spatial axis). Slab and thick slices need a 3D patch.

    Seed it per sample with ``pipeline.set_random_state(seed)`` for reproducible, order-independent patches.
    """
    on = settings if settings is not None else AugmentationSettings()
    params = spatial_params(patch_size, mirror_axes)
    patch = tuple(int(p) for p in patch_size)
    volume = len(patch) == 3
    stages: list = [_spatial_transform(patch, params)]
    if "elastic" in on:
        stages.append(_elastic_transform(len(patch)))
    if "label_intensities" in on:
        stages.append(RandLabelIntensitiesd(keys="image"))
    if "intensity_remap" in on:
        stages.append(RandIntensityRemapd(keys="image"))
    if "bias_field" in on:
        stages.append(RandSignalBiasFieldd(keys="image"))
    if "intensity" in on:
        stages.extend(nnunet_intensity(len(patch), params.dummy_2d))
    if "thick_slices" in on and volume:
        stages.append(thick_slices_transform(patch, params.dummy_2d))
    if "gamma" in on:
        stages.append(wide_gamma())
    if "inversion" in on:
        stages.append(inversion())
    if "fov" in on:
        stages.append(fov_transform(patch, params.dummy_2d))
    if "slab" in on and volume:
        stages.append(slab_transform(patch, params.dummy_2d))
    axes = range(len(patch)) if mirror_axes is None else mirror_axes
    stages.extend(RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=int(a)) for a in axes)
    return Compose(stages)
