"""One place prepares a volume for a network and restores its labels: orientation, crop, spacing, normalisation.

`prepare` reorients the input images, crops them to the body or the non-zero region, normalises each channel
and says on which grid the network sees them; `restore` brings labels from that cropped grid back onto the
input grid. The predictor calls both around a backend, and the trainer's preprocessing cache calls `prepare`
on every training case, so training and inference follow the same rules (nnU-Net's one preprocessor). The
backends resample to `Prepared.grid` on their own device; the trainer's cache resamples once, ahead of time.

Torch-free: the ONNX path prepares volumes without PyTorch. Array spacings are numpy order ``(z, y, x)``;
manifest and plan spacings are ITK order ``(x, y, z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from unetseg.image import Image
from unetseg.inference.preprocessing import (
    Reorientation,
    body_bbox,
    crop,
    nonzero_bbox,
    normalize,
    reorient,
    target_shape,
    uncrop,
)
from unetseg.inference.windows import WindowSettings, count_windows

if TYPE_CHECKING:
    from unetseg.models.package import ModelPackage

# Extra voxels of air kept around the body/non-zero box, when that adds no window.
CROP_MARGIN = 3


@dataclass(frozen=True)
class Preparation:
    """How a network's inputs are prepared: the ``preprocessing`` section of a model manifest as a value."""

    spatial_dims: int
    normalization: tuple[dict, ...]  # one scheme per input channel (see `preprocessing.normalize`)
    target_spacing: tuple[float, ...] | None = None  # (x, y, z) mm; None keeps the image's spacing
    orientation: str | None = None  # e.g. "RAS"; None keeps the image's axes
    crop: str | None = None  # "body", "nonzero" or None (no crop)
    hu_clip: tuple[float, float] | None = None  # default clip of the "ct" scheme

    @classmethod
    def from_package(cls, package: ModelPackage) -> Preparation:
        """The preparation a model package's manifest declares (its crop defaulting as `default_crop` says)."""
        pre = package.preprocessing
        target = pre.get("target_spacing")
        clip = pre.get("hu_clip")
        return cls(
            spatial_dims=int(package.manifest["spatial_dims"]),
            normalization=tuple(pre["normalization"]),
            target_spacing=None if target is None else tuple(float(t) for t in target),
            orientation=pre.get("orientation"),
            crop=default_crop(package),
            hu_clip=None if clip is None else tuple(clip),
        )

    def to_manifest(self) -> dict:
        """The manifest's ``preprocessing`` entries for this preparation (``hu_clip`` only when set)."""
        section = {
            "orientation": self.orientation,
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            "normalization": [dict(n) for n in self.normalization],
            "crop": self.crop,
        }
        if self.hu_clip is not None:
            section["hu_clip"] = list(self.hu_clip)
        return section


def default_crop(package: ModelPackage) -> str | None:
    """The manifest's crop ("body", "nonzero", or null for none); when it says nothing, the body for CT
    (air is not zero in Hounsfield units) and the non-zero region otherwise, as nnU-Net crops."""
    declared = package.manifest["preprocessing"]
    if "crop" in declared:
        return declared["crop"]
    return "body" if package.modality == "CT" else "nonzero"


@dataclass(frozen=True)
class Prepared:
    """A volume ready for a network, and what `restore` needs to bring its labels back to the input grid."""

    volume: np.ndarray  # (C, z, y, x) float32: oriented, cropped, normalised, at the image's own spacing
    spacing: tuple[float, ...]  # (z, y, x) mm of `volume`
    target_spacing: tuple[float, ...]  # (z, y, x) mm the network expects
    grid: tuple[int, ...]  # (z, y, x) size of `volume` at `target_spacing`: where the network sees it
    box: tuple[slice, ...]  # the crop, on the oriented image
    shape: tuple[int, ...]  # (z, y, x) of the oriented image
    reorientation: Reorientation

    @property
    def grid_spacing(self) -> tuple[float, ...]:
        """The voxel size (z, y, x) mm of `grid`: the crop's extent over its voxel count."""
        sizes = self.volume.shape[1:]
        return tuple(n * s / g for n, s, g in zip(sizes, self.spacing, self.grid, strict=True))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Bring another array on the input grid (a label map, say) onto the prepared grid: reorient, crop."""
        return crop(self.reorientation.apply(array), self.box)


def prepare(images: Sequence[Image], preparation: Preparation, windows: WindowSettings | None = None) -> Prepared:
    """Reorient, crop and normalise the inputs (one image per channel, on one grid) as `preparation` says.

    With the `windows` a network will run, the crop keeps a few voxels of margin and at least one window's
    extent where that costs no extra window (so a window is filled with real image, not padding).
    """
    oriented, reorientation = orient(images, preparation.orientation)
    spacing = tuple(reversed(oriented[0].spacing))
    target = network_spacing(spacing, preparation)
    full_grid = target_shape(oriented[0].shape, spacing, target)
    box = crop_box([image.array for image in oriented], preparation.crop, full_grid, windows)
    volume = normalise([crop(image.array, box) for image in oriented], preparation)
    grid = target_shape(volume.shape[1:], spacing, target)
    return Prepared(volume, spacing, target, grid, box, oriented[0].shape, reorientation)


def restore(labels: np.ndarray, prepared: Prepared) -> np.ndarray:
    """Labels (z, y, x) on the prepared grid back on the input grid: uncropped (0 outside) and reoriented."""
    return np.ascontiguousarray(prepared.reorientation.undo(uncrop(labels, prepared.box, prepared.shape)))


def orient(images: Sequence[Image], orientation: str | None) -> tuple[list[Image], Reorientation]:
    """All images reoriented to `orientation` (axis permutation and flips only) and what undoes it.

    A single-slice (2D) image keeps its slice axis first: only in-plane flips would be meaningful, and 2D
    models see radiographs as they are displayed.
    """
    first, reorientation = reorient(images[0], orientation)
    if images[0].is_single_slice and not first.is_single_slice:
        first, reorientation = reorient(images[0], None)
    rest = [first.with_array(reorientation.apply(image.array)) for image in images[1:]]
    return [first, *rest], reorientation


def network_spacing(spacing: Sequence[float], preparation: Preparation) -> tuple[float, ...]:
    """The spacing (z, y, x) a network sees for an image of `spacing` (z, y, x): the target's, except that 2D
    networks keep the image's slice spacing (they never resample along z); the image's own without a target."""
    if preparation.target_spacing is None:
        return tuple(spacing)
    target_zyx = tuple(float(t) for t in reversed(preparation.target_spacing))
    return (spacing[0], *target_zyx[1:]) if preparation.spatial_dims == 2 else target_zyx


def crop_box(
    arrays: Sequence[np.ndarray],
    mode: str | None,
    grid: Sequence[int] | None = None,
    windows: WindowSettings | None = None,
) -> tuple[slice, ...]:
    """The box a network sees: the body of a CT ("body": above −500 HU in the first array), the voxels non-zero
    in any array ("nonzero"), or everything (None). Given the arrays' network `grid` and the `windows`, the
    box grows by `CROP_MARGIN` voxels and up to one window where that costs no extra window."""
    shape = arrays[0].shape
    if mode == "body":
        tight = body_bbox(arrays[0])
    elif mode == "nonzero":
        tight = nonzero_bbox(list(arrays))
    else:
        return tuple(slice(0, n) for n in shape)
    if windows is None or grid is None:
        return tight
    scale = [g / n for g, n in zip(grid, shape, strict=True)]  # network voxels per input voxel
    roi = (1, *windows.roi_size) if windows.spatial_dims == 2 else windows.roi_size  # 2D: one slice at a time
    return tuple(
        _grow(box, n, s, r, windows.overlap) for box, n, s, r in zip(tight, shape, scale, roi, strict=True)
    )


def _grow(box: slice, size: int, scale: float, roi: int, overlap: float) -> slice:
    """Widen one axis of a crop by the margin and up to one window, without adding a row of windows."""
    tight = box.stop - box.start

    def windows(n: int) -> int:
        return count_windows((max(1, round(n * scale)),), (roi,), overlap)

    wanted = max(tight + 2 * CROP_MARGIN, math.ceil(roi / scale))
    length = min(size, wanted)
    while length > tight and windows(length) > windows(tight):
        length -= 1
    start = min(max(0, box.start - (length - tight) // 2), size - length)
    return slice(start, start + length)


def normalise(arrays: Sequence[np.ndarray], preparation: Preparation) -> np.ndarray:
    """Stack the inputs as float32 channels (C, z, y, x), each normalised by its scheme.

    A masked z-score ("use_mask") takes its statistics from the voxels non-zero in any input and sets the
    others to 0; the "ct" scheme clips to ``hu_clip`` unless the scheme gives its own clip.
    """
    schemes = preparation.normalization
    masked = any(s.get("use_mask") for s in schemes)
    nonzero = np.any([array != 0 for array in arrays], axis=0) if masked else None
    channels = []
    for array, scheme in zip(arrays, schemes, strict=True):
        params = {k: v for k, v in scheme.items() if k not in ("scheme", "use_mask")}
        if scheme["scheme"] == "ct" and preparation.hu_clip is not None:
            params.setdefault("clip", preparation.hu_clip)
        mask = nonzero if scheme.get("use_mask") else None
        channels.append(np.asarray(normalize(array, scheme["scheme"], params, mask), dtype=np.float32))
    return np.stack(channels)
