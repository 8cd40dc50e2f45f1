"""Intensity augmentations, on the image only: nnU-Net's set, and stronger contrast variety for MRI (a wider gamma,
inversion, a bias field, per-structure random intensities, a random intensity transfer function).

The images are normalised (z-score, or CT's clipped z-score), so zero is the dataset's or the image's mean. MONAI
provides gamma and, through `RandLambdad`, inversion (negation: the normalised image's order of intensities flips
about its mean). Two are ours, each saying why: the bias field acts on the signal above the patch's minimum, and
the per-label intensities (SynthSeg's idea; TorchIO's `RandomLabelsToImage`, which MONAI lacks) read the label.
The random transfer function is ours too: MONAI's `RandHistogramShift` draws a monotonic curve, which keeps the
order of tissue intensities, while sequences reorder them (CSF is darker than the cord in T1w, brighter in T2w; fat
is bright in both), so only a curve that may fall as well as rise carries a model from one sequence to another.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandBiasField,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandLambdad,
    RandomizableTransform,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
)
from monai.utils import convert_to_dst_type

# Probabilities and ranges. Gamma: a second draw over 0.5-2 (nnU-Net's own is 0.7-1.5). Bias field: MONAI's degree-3
# Legendre field with coefficients in ±0.1 (the gain's max/min over a 32³ patch is about 2 at the median draw).
# Per-label intensities: each structure's mean within ±2 standard deviations of the patch's mean, its spread up to
# a quarter of one (SynthSeg draws means and spreads per label in the same spirit).
GAMMA_PROB, GAMMA_RANGE = 0.3, (0.5, 2.0)
INVERSION_PROB = 0.15
BIAS_PROB, BIAS_COEFFICIENTS = 0.3, (-0.1, 0.1)
LABEL_INTENSITY_PROB, LABEL_MEANS, LABEL_SPREADS = 0.2, (-2.0, 2.0), (0.0, 0.25)
# Transfer function: 3-7 knots evenly spread over the patch's 0.5-99.5 % intensity range, each knot a random level in
# that range; piecewise linear between knots; the patch's mean and spread kept.
REMAP_PROB, REMAP_KNOTS, REMAP_RANGE = 0.5, (3, 7), (0.005, 0.995)


def nnunet_intensity(spatial_dims: int, dummy_2d: bool) -> list:
    """nnU-Net v2's noise, blur, brightness, contrast, low-resolution simulation and gamma, on the image only."""
    sigma = (0.5, 1.0)
    smooth_z = (0.0, 0.0) if dummy_2d else sigma
    return [
        RandGaussianNoised(keys="image", prob=0.1, std=0.1),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=sigma, sigma_y=sigma, sigma_z=smooth_z),
        RandScaleIntensityd(keys="image", prob=0.15, factors=0.25),
        RandScaleIntensityFixedMeand(keys="image", prob=0.15, factors=0.25, preserve_range=True),
        RandSimulateLowResolutiond(
            keys="image", prob=0.25, zoom_range=(0.5, 1.0),
            upsample_mode="trilinear" if spatial_dims == 3 else "bilinear",
        ),
        RandAdjustContrastd(keys="image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
    ]


def wide_gamma() -> RandAdjustContrastd:
    """A gamma over 0.5-2 keeping the patch's mean and spread (MONAI's, with nnU-Net's retain_stats)."""
    return RandAdjustContrastd(keys="image", prob=GAMMA_PROB, gamma=GAMMA_RANGE, retain_stats=True)


def inversion() -> RandLambdad:
    """Contrast inversion: the normalised image negated, so bright becomes dark about the mean and zero padding
    stays zero (a T1-like contrast from a T2-like one, roughly)."""
    return RandLambdad(keys="image", func=operator.neg, prob=INVERSION_PROB)


class RandSignalBiasFieldd(RandomizableTransform, MapTransform):
    """MONAI's `RandBiasField` applied to the signal above the patch's minimum (per channel), then shifted back.

    A bias field multiplies the scanner's intensities, whose zero is air; after z-scoring, air sits near the minimum,
    not at zero, so multiplying the normalised image would darken air where it brightens tissue. One field per patch,
    shared by the channels (one coil).
    """

    def __init__(self, keys: KeysCollection, coefficients: tuple[float, float] = BIAS_COEFFICIENTS,
                 prob: float = BIAS_PROB) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.field = RandBiasField(degree=3, coeff_range=coefficients, prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None
                         ) -> RandSignalBiasFieldd:
        super().set_random_state(seed, state)
        self.field.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for i, key in enumerate(self.key_iterator(d)):
            image = torch.as_tensor(d[key], dtype=torch.float32)
            floor = image.flatten(1).amin(dim=1).view(-1, *[1] * (image.ndim - 1))
            biased = torch.as_tensor(self.field(image - floor, randomize=i == 0)) + floor
            d[key] = convert_to_dst_type(biased, dst=d[key])[0]
        return d


class RandLabelIntensitiesd(RandomizableTransform, MapTransform):
    """With probability `prob`, each foreground structure of the label gets new intensities, per channel: a Gaussian
    whose mean is the patch's mean plus `means` × its standard deviation and whose spread is `spreads` × that
    deviation (each drawn per structure). The background keeps the image (TorchIO's ``ignore_background``), so the
    network must find a structure by its shape and surroundings whatever its contrast. Labels are not changed."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", means: tuple[float, float] = LABEL_MEANS,
                 spreads: tuple[float, float] = LABEL_SPREADS, prob: float = LABEL_INTENSITY_PROB) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.means, self.spreads = label_key, means, spreads

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = torch.as_tensor(d[self.label_key])[0]
        structures = [v for v in torch.unique(label).tolist() if v != 0]
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key], dtype=torch.float32).clone()
            for channel in image:
                mean, spread = float(channel.mean()), max(float(channel.std()), 1e-6)
                for value in structures:
                    inside = label == value
                    count = int(inside.sum())
                    mu = mean + spread * self.R.uniform(*self.means)
                    sigma = spread * self.R.uniform(*self.spreads)
                    channel[inside] = torch.from_numpy(mu + sigma * self.R.standard_normal(count)).float()
            d[key] = convert_to_dst_type(image, dst=d[key])[0]
        return d


class RandIntensityRemapd(RandomizableTransform, MapTransform):
    """With probability `prob`, each channel passes through a random piecewise-linear intensity curve that may rise
    or fall between knots (a random tissue-to-intensity table, as SynthSeg draws one per tissue, without needing the
    tissues' labels), then gets its former mean and spread back. Labels are not changed."""

    def __init__(self, keys: KeysCollection, knots: tuple[int, int] = REMAP_KNOTS, prob: float = REMAP_PROB) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.knots = knots

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = np.asarray(torch.as_tensor(d[key], dtype=torch.float32), dtype=np.float32).copy()
            for channel in image:
                lo, hi = np.quantile(channel, REMAP_RANGE)
                if hi - lo < 1e-6:
                    continue
                xs = np.linspace(lo, hi, self.R.randint(self.knots[0], self.knots[1] + 1))
                ys = self.R.uniform(lo, hi, len(xs))
                mean, spread = channel.mean(), channel.std()
                mapped = np.interp(channel, xs, ys)
                channel[...] = (mapped - mapped.mean()) / max(float(mapped.std()), 1e-6) * spread + mean
            d[key] = convert_to_dst_type(torch.from_numpy(image), dst=d[key])[0]
        return d
