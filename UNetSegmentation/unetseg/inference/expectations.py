"""What a model expects of its input, and the warnings a user sees when an input is far outside it.

A manifest's optional ``expects`` section records what the model was trained on: ``modality``,
``intensity_range`` (per input channel, the 0.5th–99.5th percentile of the training foreground),
``spacing_range`` (``{"min": [x, y, z], "max": [x, y, z]}`` mm) and ``min_field_of_view_mm`` ([x, y, z]).
What a manifest does not record is derived from the rest of it: the modality it is declared for, spacings
within a factor `SPACING_FACTOR` of its target spacing, a field of view of at least half a window (patches are
often planned larger than the training images, so a little less than one window is normal). The checks are
cheap (a subsample of voxels) and never refuse: the user may know better, but must be told.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from unetseg.image import Image
from unetseg.modality import guess_modality
from unetseg.vocabulary import MODALITY_TITLES

if TYPE_CHECKING:
    from unetseg.models.package import ModelPackage

# Spacings more than this factor away from the model's target spacing are "far off" when the manifest
# records no spacing range (resampling over a larger factor invents or throws away most of the detail).
SPACING_FACTOR = 4.0
# An input whose central intensity range overlaps the expected one by less than this share is far off.
MIN_INTENSITY_OVERLAP = 0.25
# Without a recorded minimum, an input narrower than this share of one window along an axis is too small.
MIN_WINDOW_SHARE = 0.5
_AXES = "xyz"


def expectations(package: ModelPackage) -> dict:
    """The model's expectations: the manifest's ``expects`` section, completed from the rest of the manifest."""
    derived = expected_from(
        package.modality,
        package.preprocessing.get("normalization") or [],
        package.preprocessing.get("target_spacing"),
        package.inference.get("patch_size"),
    )
    return {**derived, **(package.manifest.get("expects") or {})}


def expected_from(
    modality: str,
    normalization: Sequence[dict],
    target_spacing: Sequence[float] | None,
    patch_size: Sequence[int] | None,
) -> dict:
    """An ``expects`` section from what a manifest or a plan holds: the modality; for CT, each channel's clip
    window (nnU-Net's 0.5th–99.5th percentile of the training foreground, in HU); spacings within
    `SPACING_FACTOR` of the target; a field of view of at least `MIN_WINDOW_SHARE` of one window."""
    expects: dict = {"modality": modality}
    clips = [scheme.get("clip") for scheme in normalization]
    if modality == "CT" and clips and all(clips):  # MR intensities have no absolute scale: nothing to compare
        expects["intensity_range"] = [[float(low), float(high)] for low, high in clips]
    if target_spacing is not None:
        expects["spacing_range"] = {
            "min": [float(t) / SPACING_FACTOR for t in target_spacing],
            "max": [float(t) * SPACING_FACTOR for t in target_spacing],
        }
        if patch_size:
            patch_xyz = list(reversed([int(p) for p in patch_size]))  # (z, y, x) or (y, x) → x first
            expects["min_field_of_view_mm"] = [
                MIN_WINDOW_SHARE * p * float(t) for p, t in zip(patch_xyz, target_spacing, strict=False)
            ]
    return expects


def input_warnings(inputs: Sequence[Image], package: ModelPackage, dicom_modality: str | None = None) -> list[str]:
    """Sentences for each way the inputs are far from what the model expects (empty when they fit)."""
    expected = expectations(package)
    first = inputs[0]
    warnings = [
        _modality_warning(first, expected.get("modality"), dicom_modality),
        _spacing_warning(first, expected.get("spacing_range"), package.spatial_dims),
        _field_of_view_warning(first, expected.get("min_field_of_view_mm"), package.spatial_dims),
    ]
    for index, (image, expected_range) in enumerate(zip(inputs, expected.get("intensity_range") or [], strict=False)):
        warnings.append(_intensity_warning(image, expected_range, package.input_names[index]))
    return [w for w in warnings if w]


def _modality_warning(image: Image, modality: str | None, dicom_modality: str | None) -> str | None:
    guess = guess_modality(image.array, dicom_modality)
    if not modality or guess.modality in (None, modality):
        return None
    return (
        f"This model is for {MODALITY_TITLES.get(modality, modality)} images, but the input looks like "
        f"{guess.title} ({guess.reason}). Its result on this input is likely meaningless: choose a model for "
        f"{guess.title} or check the input."
    )


def _spacing_warning(image: Image, spacing_range: dict | None, spatial_dims: int) -> str | None:
    if not spacing_range:
        return None
    axes = range(2) if spatial_dims == 2 else range(3)  # slice-wise models never resample along z
    off = [
        f"{_AXES[a]} {image.spacing[a]:g} mm"
        for a in axes
        if not spacing_range["min"][a] <= image.spacing[a] <= spacing_range["max"][a]
    ]
    if not off:
        return None
    low = ", ".join(f"{spacing_range['min'][a]:g}" for a in axes)
    high = ", ".join(f"{spacing_range['max'][a]:g}" for a in axes)
    return (
        f"The input's voxel spacing ({'; '.join(off)}) is far from what the model was trained for "
        f"({low} to {high} mm per axis): resampling over such a factor loses or invents detail, so check the "
        "image's header or choose a model trained at this resolution."
    )


def _field_of_view_warning(image: Image, minimum: Sequence[float] | None, spatial_dims: int) -> str | None:
    if not minimum:
        return None
    extent = [size * spacing for size, spacing in zip(image.size, image.spacing, strict=True)]
    axes = range(min(len(minimum), 2 if spatial_dims == 2 else 3))
    small = [f"{_AXES[a]} {extent[a]:.0f} mm < {minimum[a]:.0f} mm" for a in axes if extent[a] < minimum[a]]
    if not small:
        return None
    return (
        f"The input's field of view is smaller than the model needs ({'; '.join(small)}): the model sees "
        "mostly padding and may miss or invent structures. Use a larger crop of the image if there is one."
    )


def _intensity_warning(image: Image, expected: Sequence[float], name: str) -> str | None:
    flat = image.array.ravel()
    sample = flat[:: max(1, flat.size // 200_000)].astype(np.float64)
    low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    expected_low, expected_high = float(expected[0]), float(expected[1])
    width = max(expected_high - expected_low, 1e-6)
    overlap = max(0.0, min(high, expected_high) - max(low, expected_low)) / width
    if overlap >= MIN_INTENSITY_OVERLAP:
        return None
    return (
        f"The intensities of input '{name}' ({low:.4g} to {high:.4g}) hardly overlap the range the model was "
        f"trained on ({expected_low:.4g} to {expected_high:.4g}): check that this is the right image and "
        "sequence for the model."
    )
