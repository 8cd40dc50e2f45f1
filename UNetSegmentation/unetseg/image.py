"""The `Image` value: a voxel array with its physical geometry, shared by every part of the core.

Conventions (those of SimpleITK/ITK, so files round-trip without surprises):
- ``array`` is in numpy order ``(z, y, x)`` (Slicer's KJI); a 2D image (X-ray) is one slice ``(1, y, x)``.
- ``spacing`` and ``origin`` are in ITK order ``(x, y, z)``, millimetres, LPS physical frame.
- ``direction`` is ITK's 3×3 direction matrix (columns are the i, j, k axis directions), row-major, 9 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def check_orthonormal(direction: tuple[float, ...], what: str, tolerance: float = 1e-3) -> None:
    """Refuse a direction matrix whose axes are not unit length and mutually perpendicular (sheared, degenerate).

    Every step of the pipeline (reorientation, resampling, writing back) assumes an orthogonal voxel grid, so a
    sheared grid would be segmented in the wrong place without a word.
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or not np.allclose(matrix.T @ matrix, np.eye(3), atol=tolerance):
        raise ValueError(
            f"{what} has a direction matrix that is not orthonormal (sheared, scaled or degenerate axes: "
            f"{np.round(matrix, 4).tolist()}). Resample it onto an orthogonal grid first (in Slicer: harden the "
            "transform, or Resample Scalar/Vector/DWI Volume)."
        )


@dataclass
class Image:
    """A scalar image on a physical grid; the geometry is never implicit."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY

    def __post_init__(self) -> None:
        if self.array.ndim == 2:
            self.array = self.array[np.newaxis]
        if self.array.ndim != 3:
            raise ValueError(
                f"Image array must be 2D (y, x) or 3D (z, y, x); got shape {self.array.shape}. "
                "Pass one scalar channel per Image (several sequences are several Images)."
            )
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).ravel())
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Image geometry needs 3 spacings, 3 origin values and 9 direction values.")
        if min(self.spacing) <= 0:
            raise ValueError(f"Image spacing must be positive; got {self.spacing}.")
        check_orthonormal(self.direction, "Image")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size(self) -> tuple[int, int, int]:
        """Grid size in ITK order ``(x, y, z)``."""
        return tuple(reversed(self.array.shape))  # type: ignore[return-value]

    @property
    def is_single_slice(self) -> bool:
        """True for a 2D image (one slice along k)."""
        return self.array.shape[0] == 1

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3×3 direction matrix (columns are the i, j, k axes in LPS)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self) -> np.ndarray:
        """4×4 matrix mapping homogeneous (i, j, k, 1) indices to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def same_grid(self, other: Image, tolerance: float = 1e-4) -> bool:
        """True when both images sample the same physical points (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tolerance, rtol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance * max(1.0, max(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def grid_text(self) -> str:
        """The grid in words (size, spacing, origin, direction), for error messages."""
        return (
            f"size {self.size}, spacing {tuple(round(s, 4) for s in self.spacing)}, "
            f"origin {tuple(round(o, 3) for o in self.origin)}, "
            f"direction {tuple(round(d, 4) for d in self.direction)}"
        )

    def with_array(self, array: np.ndarray) -> Image:
        """A new image with the same geometry and another array of the same shape."""
        if array.shape[-3:] != self.shape and array.shape != self.shape[1:]:
            raise ValueError(f"Array shape {array.shape} does not match the grid {self.shape}.")
        return replace(self, array=array)

    def to_sitk(self) -> sitk.Image:
        """The SimpleITK image with the same voxels and geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Image:
        """Wrap a scalar 2D or 3D SimpleITK image (2D becomes one slice with 1 mm slice spacing)."""
        import SimpleITK as sitk

        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"Expected a scalar image; got {img.GetNumberOfComponentsPerPixel()} components per voxel "
                "(RGB or vector). Convert it to greyscale first."
            )
        if img.GetDimension() == 2:
            spacing = (*img.GetSpacing(), 1.0)
            origin = (*img.GetOrigin(), 0.0)
            d = img.GetDirection()
            direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
            return cls(sitk.GetArrayFromImage(img)[np.newaxis], spacing, origin, direction)
        if img.GetDimension() != 3:
            raise ValueError(
                f"Expected a 2D or 3D image; got {img.GetDimension()}D. Select one time point or "
                "one channel of a 4D image first."
            )
        return cls(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def check_same_grid(images: list[Image], names: list[str]) -> None:
    """Raise ValueError naming the first image (by `names`) whose grid differs from the first one's."""
    for name, image in zip(names[1:], images[1:], strict=True):
        if not image.same_grid(images[0]):
            raise ValueError(
                f"{name} is not on the same grid as {names[0]} ({image.grid_text()} versus "
                f"{images[0].grid_text()}). Resample it onto the first image's grid first (for example with "
                "Slicer's 'Resample Image (BRAINS)' module)."
            )


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError when a float array holds NaN or infinite voxels; `name` says which image."""
    # A float64 sum is finite exactly when every voxel is, and needs no full-size temporary array.
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(np.sum(array, dtype=np.float64)):
        raise ValueError(
            f"{name} has {np.count_nonzero(~np.isfinite(array))} NaN or infinite voxels. Replace them "
            "(for example by the background value) before segmenting."
        )


@dataclass(frozen=True)
class Label:
    """One output class of a model: its value in the label map, name, colour (RGB in 0–1) and terminology."""

    value: int
    name: str
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    terminology: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Label:
        """Build from a manifest entry ``{"value", "name", "color", "terminology"}``."""
        return cls(int(d["value"]), str(d["name"]), tuple(float(c) for c in d.get("color", (1, 0, 0))),
                   d.get("terminology"))

    def to_dict(self) -> dict:
        """The manifest entry for this label."""
        d = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            d["terminology"] = self.terminology
        return d


@dataclass
class LabelImage:
    """A segmentation result: an integer label map on exactly the input grid, plus its label table."""

    image: Image
    labels: list[Label] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
