"""Reading images (any SimpleITK format or a DICOM series folder) and label maps, with checks that say what to do.

Reading refuses what a model cannot use (missing files, 4D, RGB, NaN/Inf voxels) with a message naming the fix.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unetseg.image import Image, Label, LabelImage, check_finite, check_orthonormal, check_same_grid

PathLike = str | os.PathLike

SEGMENTATION_SUFFIX = ".seg.nrrd"
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def has_suffix(path: Path, suffix: str) -> bool:
    return path.name.lower().endswith(suffix)



def read_image(path: PathLike, series_uid: str | None = None) -> Image:
    """Read a scalar 2D/3D image file, or the DICOM series in a folder, with clear errors for unusable input.

    A folder holding several DICOM series needs ``series_uid`` (the error lists the choices).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Image not found: {path}. Give an image file or a DICOM series folder.")
    img = _read_dicom_series(path, series_uid) if path.is_dir() else _read_file(path)
    check_orthonormal(img.GetDirection() if img.GetDimension() == 3 else (1, 0, 0, 0, 1, 0, 0, 0, 1), f"Image {path}")
    image = Image.from_sitk(_scalar_3d(img, path))
    check_finite(image.array, f"Image {path}")
    return image


def read_images(paths: Sequence[PathLike]) -> list[Image]:
    """Read several images (e.g. MRI sequences) that must share one grid; a mismatch names the culprit."""
    if not paths:
        raise ValueError("No input images given.")
    images = [read_image(p) for p in paths]
    check_same_grid(images, [f"Image {p}" for p in paths])
    return images


def _read_file(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ValueError(
            f"Cannot read image {path}: not a readable image format or a damaged file "
            f"(SimpleITK: {str(err).strip().splitlines()[-1]}). Use NRRD, NIfTI, MHA or a DICOM series folder."
        ) from err


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"No DICOM series found in folder {folder}. Give a DICOM series folder or an image file.")
    if series_uid is None and len(series) > 1:
        listing = ", ".join(
            f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in series
        )
        raise ValueError(
            f"Folder {folder} holds {len(series)} DICOM series: {listing}. Pick one (series_uid) or put each "
            "series in its own folder."
        )
    uid = series_uid or series[0]
    if uid not in series:
        raise ValueError(f"DICOM series {uid} is not in folder {folder}; it holds {', '.join(series)}.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise ValueError(f"Cannot read DICOM series {uid} in {folder}: {str(err).strip()}") from err


def _scalar_3d(img: sitk.Image, path: Path) -> sitk.Image:
    """Reduce harmless extra dimensions (a 4D image with one frame, grey stored as RGB) or explain the fix."""
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() not in (2, 3):
        raise ValueError(
            f"Image {path} is {img.GetDimension()}D with size {img.GetSize()} (a time series or a multi-channel "
            "volume). Extract one 3D volume (one time point or channel) and give each channel as its own input."
        )
    components = img.GetNumberOfComponentsPerPixel()
    if components > 1:
        channels = [sitk.VectorIndexSelectionCast(img, c) for c in range(components)]
        first = sitk.GetArrayViewFromImage(channels[0])
        if not all(np.array_equal(first, sitk.GetArrayViewFromImage(c)) for c in channels[1:]):
            raise ValueError(
                f"Image {path} has {components} components per voxel (an RGB or vector image); the models need "
                "a scalar greyscale image. Convert it to greyscale (or pick one component) first."
            )
        img = channels[0]
    return img


def read_label_image(path: PathLike) -> LabelImage:
    """Read a Slicer ``.seg.nrrd`` (segment names, colours, terminology) or a plain integer label map."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label image not found: {path}.")
    if has_suffix(path, SEGMENTATION_SUFFIX):
        return _read_segmentation(path)
    image = Image.from_sitk(_scalar_3d(_read_file(path), path))
    array = image.array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"Label map {path} holds non-integer values; a label map must hold integer labels.")
        array = array.astype(label_dtype(int(array.max(initial=0))))
    if array.min(initial=0) < 0:
        raise ValueError(f"Label map {path} holds negative values; labels must be 0 (background) or positive.")
    values = [int(v) for v in np.unique(array) if v != 0]
    return LabelImage(image.with_array(array), [default_label(v) for v in values])


def label_dtype(max_value: int) -> type:
    """The smallest unsigned integer type that holds labels up to ``max_value``."""
    if max_value <= np.iinfo(np.uint8).max:
        return np.uint8
    return np.uint16 if max_value <= np.iinfo(np.uint16).max else np.int32


def default_label(value: int) -> Label:
    """A generic label whose colour differs from its neighbours' (golden-angle hues)."""
    return Label(value, f"Label {value}", colorsys.hsv_to_rgb((value * 0.618034) % 1.0, 0.65, 0.95))


def _read_segmentation(path: Path) -> LabelImage:
    from slicerio import segmentation as slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as err:  # pynrrd and slicerio raise many kinds of errors for damaged files
        raise ValueError(f"Cannot read Slicer segmentation {path}: {err}") from err
    voxels = np.asarray(seg["voxels"])
    layered = voxels.ndim == 4
    # slicerio gives voxels in (i, j, k) index order; the core uses (k, j, i).
    array = np.zeros(voxels.shape[-3:][::-1], dtype=label_dtype(max(len(seg["segments"]), int(voxels.max(initial=0)))))
    labels, messages = [], []
    for number, segment in enumerate(seg["segments"], start=1):
        source_value = int(segment.get("labelValue", 1))
        layer = voxels[int(segment.get("layer", 0))] if layered else voxels
        mask = (layer == source_value).transpose(2, 1, 0)
        # Overlapping segments (several layers) are renumbered 1..n; later segments win where they overlap.
        value = number if layered else source_value
        overlap = np.count_nonzero(array[mask])
        if overlap:
            messages.append(f"Segment '{segment.get('name')}' overlaps earlier segments in {overlap} voxels; "
                            "it takes those voxels.")
        array[mask] = value
        labels.append(_label_from_segment(segment, value))
    return LabelImage(_image_from_ijk_to_lps(array, np.asarray(seg["ijkToLPS"], dtype=float)), labels, messages)


def _label_from_segment(segment: dict, value: int) -> Label:
    from slicerio import segmentation as slicerio

    terminology = segment.get("terminology")
    default = default_label(value)
    return Label(
        value,
        segment.get("name", default.name),
        tuple(segment.get("color", default.color)),
        slicerio.terminology_entry_to_string(terminology) if terminology else None,
    )


def _image_from_ijk_to_lps(array: np.ndarray, ijk_to_lps: np.ndarray) -> Image:
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return Image(array, tuple(spacing), tuple(ijk_to_lps[:3, 3]), tuple((axes / spacing).ravel()))
