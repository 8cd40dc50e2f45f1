"""The windows a precision check runs: network input from the model's own sample, prepared as its pipeline does.

A bundled model has a sample in ``Resources/SampleData/samples.json`` (the entry whose ``model`` names it, not a
held-out case); any other model gets a synthetic phantom of its modality (`unetseg.phantoms`: a CT body in Hounsfield
units, a head MRI with one image per input sequence, a chest radiograph), on the model's target spacing and about
two windows wide per axis. The input is prepared by the model's own pipeline (the project's `prepare` and the
torch-free linear resampling, nnU-Net's `preprocess`, or the MONAI bundle's steps), and the windows with the most
structure (largest intensity spread) are kept. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unetseg.image import Image
from unetseg.inference import monai_pipeline
from unetseg.inference.limits import WorkLimits
from unetseg.inference.linear_resampling import resample_linear
from unetseg.inference.monai_geometry import monai_volume
from unetseg.inference.nnunet_prepare import NnUNetRules, preprocess
from unetseg.inference.predictor import check_inputs
from unetseg.inference.prepare import Preparation, prepare
from unetseg.inference.windows import WindowSettings, pad_to_roi, window_slices
from unetseg.io import read_images
from unetseg.models.package import ModelPackage
from unetseg.phantoms import ct_phantom, mri_phantom, xray_phantom
from unetseg.samples import load_samples, sample_path
from unetseg.vocabulary import MONAI_VARIANT, NNUNET_VARIANT

DEFAULT_WINDOWS = 3
_MRI_SEQUENCES = ("T1", "T2", "FLAIR")  # contrasts `mri_phantom` draws, used in turn for the model's inputs


@dataclass(frozen=True)
class ValidationWindows:
    """Network-input windows ``(N, C, *patch)`` float32 and where they come from."""

    windows: np.ndarray
    source: str


def validation_windows(package: ModelPackage, count: int = DEFAULT_WINDOWS,
                       images: list[Image] | None = None) -> ValidationWindows:
    """``count`` windows of ``images`` (one per model input; default: the model's sample, else a synthetic phantom),
    prepared as its pipeline prepares them."""
    if images is None:
        images, source = input_images(package)
    else:
        check_inputs(images, package)
        spacing = tuple(round(float(v), 3) for v in images[0].spacing)
        source = f"the user's case (size {images[0].size}, spacing {spacing} mm)"
    volume = network_input(images, package)
    return ValidationWindows(pick_windows(volume, _patch(package), count), source)


def input_images(package: ModelPackage) -> tuple[list[Image], str]:
    """The model's own bundled sample, else a synthetic phantom of its modality; with a sentence saying which."""
    own = [s for s in load_samples() if s.get("model") == package.name and package.name not in s.get("heldout_for", [])]
    if own and len(own[0]["images"]) == len(package.input_names):
        sample = own[0]
        return read_images([sample_path(name) for name in sample["images"]]), f"bundled sample {sample['name']}"
    return synthetic_images(package)


def synthetic_images(package: ModelPackage) -> tuple[list[Image], str]:
    """A phantom of the model's modality on its target spacing, about two windows wide along each axis."""
    patch = _patch(package)
    target = package.preprocessing.get("target_spacing") or [1.0, 1.0, 1.0]  # (x, y, z) mm
    if package.modality == "XR" or package.spatial_dims == 2:
        image, _ = xray_phantom(shape=(2 * patch[-2], 2 * patch[-1]), spacing=(target[0], target[1]))
        images = [image] * len(package.input_names)
        return images, "synthetic chest radiograph (unetseg.phantoms.xray_phantom)"
    shape = tuple(int(2 * p) for p in patch)  # (z, y, x)
    spacing = tuple(float(s) for s in target[:3])
    if package.modality == "CT":
        image, _ = ct_phantom(shape=shape, spacing=spacing)
        return [image] * len(package.input_names), "synthetic CT body phantom (unetseg.phantoms.ct_phantom)"
    sequences = tuple(_MRI_SEQUENCES[i % len(_MRI_SEQUENCES)] for i in range(len(package.input_names)))
    images, _ = mri_phantom(shape=shape, spacing=spacing, sequences=sequences)
    return images, f"synthetic head MRI phantom (unetseg.phantoms.mri_phantom, {', '.join(sequences)})"


def network_input(images: list[Image], package: ModelPackage) -> np.ndarray:
    """The prepared input the network's windows are cut from: ``(C, *grid)``, or ``(slices, C, y, x)`` for a 2D
    model (the project's own or nnU-Net's ``2d``)."""
    kind = package.preprocessing.get("kind")
    if kind == NNUNET_VARIANT:
        spacing = tuple(reversed(images[0].spacing))
        data = preprocess(np.stack([i.array for i in images]), spacing, NnUNetRules.from_package(package)).data
        return data.transpose(1, 0, 2, 3) if package.spatial_dims == 2 else data  # a 2d model: slices along axis 0
    if kind == MONAI_VARIANT:
        return _monai_input(images, package)
    settings = WindowSettings(spatial_dims=package.spatial_dims, roi_size=tuple(_patch(package)), label_values=(0,))
    prepared = prepare(images, Preparation.from_package(package), settings)
    if package.spatial_dims == 2:
        return resample_linear(prepared.volume.transpose(1, 0, 2, 3), prepared.grid[1:]).astype(np.float32)
    return resample_linear(prepared.volume, prepared.grid).astype(np.float32)


def _monai_input(images: list[Image], package: ModelPackage) -> np.ndarray:
    """The MONAI bundle's preprocessing steps, as `monai_pipeline` runs them (its arrays are (C, x, y, z))."""
    pipeline = monai_pipeline.bundle_pipeline(package.manifest)
    volume, affine = monai_volume(images, 3)
    settings = WindowSettings(spatial_dims=package.spatial_dims, roi_size=tuple(_patch(package)), label_values=(0,))
    for step in pipeline["preprocessing"]:
        volume, affine = monai_pipeline._preprocess(volume, affine, step, [], pipeline["inferer"], settings,
                                                    WorkLimits())  # fmt: skip
    return np.asarray(volume, dtype=np.float32)


def pick_windows(volume: np.ndarray, patch: list[int], count: int) -> np.ndarray:
    """The ``count`` windows of ``patch`` over ``volume`` with the largest intensity spread (most structure).

    ``volume`` is ``(C, *grid)`` with ``len(patch)`` spatial axes, or ``(slices, C, y, x)`` for 2D patches over a
    stack of slices (each slice is windowed on its own).
    """
    stack = volume[np.newaxis] if volume.ndim == len(patch) + 1 else volume
    stack, _ = pad_to_roi(stack, patch)
    candidates = [stack[(n, slice(None), *w)] for n in range(stack.shape[0])
                  for w in window_slices(stack.shape[2:], patch)]  # fmt: skip
    spread = [float(c.std()) for c in candidates]
    best = sorted(range(len(candidates)), key=lambda i: -spread[i])[:count]
    return np.ascontiguousarray(np.stack([candidates[i] for i in sorted(best)]), dtype=np.float32)


def _patch(package: ModelPackage) -> list[int]:
    return [int(p) for p in package.inference["patch_size"]]
