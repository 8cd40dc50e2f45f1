"""Augmentations that vary how a scan was acquired: its field of view, a slab of a few slices, thick slices.

A patch is ``{"image": (C, *spatial), "label": (1, *spatial)}`` at the patch size. Field of view and slab keep a
random box of the patch and set the image and the label to zero outside it: zero is what the predictor pads a small
input with (and the label's background), so the network learns volumes that end mid-organ or hold a few slices.
Both are MONAI's `RandCoarseDropoutd` keeping its one "hole". Thick slices are ours: MONAI's
`RandSimulateLowResolution` zooms every axis by one factor, and TorchIO's `RandomAnisotropy` (one axis) is neither
a MONAI transform nor a dependency.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, OneOf, RandCoarseDropoutd, RandomizableTransform
from monai.utils import convert_to_dst_type
from torch.nn import functional

# Probabilities per patch, and ranges. Field of view: each axis keeps half of the patch or more. Slab: one axis keeps
# an eighth to a half of its slices (at least one). Thick slices: 1.5-5 voxels averaged into one slice, as
# TorchIO's RandomAnisotropy draws its factor.
FOV_PROB, FOV_MIN_FRACTION = 0.2, 0.5
SLAB_PROB, SLAB_FRACTIONS = 0.15, (1 / 8, 1 / 2)
THICK_PROB, THICK_FACTORS = 0.2, (1.5, 5.0)


def _keep_box(low: Sequence[int], high: Sequence[int], prob: float) -> RandCoarseDropoutd:
    """Keep one random box (edge lengths drawn in [low, high] per axis, anywhere in the patch) of image and label;
    zero the rest of both."""
    return RandCoarseDropoutd(keys=("image", "label"), holes=1, spatial_size=tuple(low), max_spatial_size=tuple(high),
                              dropout_holes=False, fill_value=0.0, prob=prob)


def fov_transform(patch_size: Sequence[int], dummy_2d: bool) -> RandCoarseDropoutd:
    """A smaller, off-centre field of view: every axis (in-plane only for dummy-2D patches) keeps at least
    `FOV_MIN_FRACTION` of the patch."""
    low = [max(1, round(n * FOV_MIN_FRACTION)) for n in patch_size]
    if dummy_2d:
        low[0] = patch_size[0]
    return _keep_box(low, patch_size, FOV_PROB)


def slab_transform(patch_size: Sequence[int], dummy_2d: bool) -> OneOf:
    """A slab: along one axis (the slice axis of dummy-2D patches, else any), a run of a few slices is kept."""
    axes = (0,) if dummy_2d else range(len(patch_size))
    choices = []
    for axis in axes:
        n = patch_size[axis]
        low, high = list(patch_size), list(patch_size)
        low[axis] = max(1, int(n * SLAB_FRACTIONS[0]))
        high[axis] = max(low[axis], int(n * SLAB_FRACTIONS[1]))
        choices.append(_keep_box(low, high, SLAB_PROB))
    return OneOf(choices)


def thick_slices(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """`image` (C, *spatial) as if acquired with slices `factor` voxels thick along spatial `axis` (each the mean
    over its thickness, a box profile), then linearly resampled back to its grid; the shape is kept."""
    x = torch.as_tensor(image, dtype=torch.float32)[None]
    size = list(x.shape[2:])
    coarse = list(size)
    coarse[axis] = max(1, round(size[axis] / factor))
    thick = functional.interpolate(x, size=coarse, mode="area")
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return functional.interpolate(thick, size=size, mode=mode, align_corners=False)[0]


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """With probability `prob`, `thick_slices` of the image along one of `axes` (drawn) by a factor drawn from
    `factors`; the label keeps its fine grid (the anatomy the network must still find)."""

    def __init__(self, keys: KeysCollection, axes: Sequence[int], factors: tuple[float, float] = THICK_FACTORS,
                 prob: float = THICK_PROB) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.axes, self.factors = tuple(int(a) for a in axes), factors
        self.axis, self.factor = self.axes[0], 1.0

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        self.axis = self.axes[int(self.R.randint(len(self.axes)))]
        self.factor = float(self.R.uniform(*self.factors))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_dst_type(thick_slices(d[key], self.axis, self.factor), dst=d[key])[0]
        return d


def thick_slices_transform(patch_size: Sequence[int], dummy_2d: bool) -> RandThickSlicesd:
    """Thick slices along the slice axis of dummy-2D patches, else along any axis (an acquisition in another plane)."""
    return RandThickSlicesd(keys="image", axes=(0,) if dummy_2d else range(len(patch_size)))
