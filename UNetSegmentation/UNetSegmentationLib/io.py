"""Reading images (any SimpleITK format or a DICOM series folder) and writing label maps, atomically.

Reading checks what a model cannot use (missing files, 4D, RGB, NaN/Inf voxels) and says what to do about
it. Label maps are written as Slicer segmentations (``.seg.nrrd`` with segment names, colours and
terminology, via slicerio) or plain label maps (NIfTI, NRRD, MHA, via SimpleITK), chosen by the extension.
Every write goes to a temporary file in the target folder that replaces the target only on success.
"""

from __future__ import annotations

import colorsys
import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .image import Image, Label, LabelImage, check_finite, check_same_grid

PathLike = str | os.PathLike

SEGMENTATION_SUFFIX = ".seg.nrrd"
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _has_suffix(path: Path, suffix: str) -> bool:
    return path.name.lower().endswith(suffix)


# ---------------------------------------------------------------------------------------------------- reading


def read_image(path: PathLike, series_uid: str | None = None) -> Image:
    """Read a scalar 2D/3D image file, or the DICOM series in a folder, with clear errors for unusable input.

    A folder holding several DICOM series needs ``series_uid`` (the error lists the choices).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Image not found: {path}. Give an image file or a DICOM series folder.")
    img = _read_dicom_series(path, series_uid) if path.is_dir() else _read_file(path)
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
    if _has_suffix(path, SEGMENTATION_SUFFIX):
        return _read_segmentation(path)
    image = Image.from_sitk(_scalar_3d(_read_file(path), path))
    array = image.array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"Label map {path} holds non-integer values; a label map must hold integer labels.")
        array = array.astype(_label_dtype(int(array.max(initial=0))))
    if array.min(initial=0) < 0:
        raise ValueError(f"Label map {path} holds negative values; labels must be 0 (background) or positive.")
    values = [int(v) for v in np.unique(array) if v != 0]
    return LabelImage(image.with_array(array), [_default_label(v) for v in values])


def _default_label(value: int) -> Label:
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
    array = np.zeros(voxels.shape[-3:][::-1], dtype=_label_dtype(max(len(seg["segments"]), int(voxels.max(initial=0)))))
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
    default = _default_label(value)
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


# ---------------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same extension); it replaces ``path`` only if the block succeeds.

    On any exception the temporary file is removed, so a failed or cancelled write leaves nothing behind.
    """
    target = Path(path).expanduser().absolute()
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {folder}. Create it or choose another output path.")
    if target.is_dir():
        raise ValueError(f"Output path {target} is a folder; give a file name such as {target / 'result.seg.nrrd'}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write to folder {folder}: permission denied. Choose another output folder.")
    # The name ends with the target's own name, so format detection by extension sees the same suffixes.
    temporary = folder / f".tmp-{uuid.uuid4().hex[:12]}-{target.name}"
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_label_image(path: PathLike, label_image: LabelImage) -> Path:
    """Write a label map atomically; ``.seg.nrrd`` gives a Slicer segmentation, NIfTI/NRRD/MHA a plain map.

    Values in the array that the label table lacks still become segments (named "Label N"), so nothing is lost.
    """
    path = Path(path)
    if _has_suffix(path, SEGMENTATION_SUFFIX):
        writer = _write_segmentation
    elif any(_has_suffix(path, s) for s in LABEL_MAP_SUFFIXES):
        writer = _write_label_map
    else:
        raise ValueError(
            f"Unsupported output extension for {path.name}: use {SEGMENTATION_SUFFIX} (Slicer segmentation) or "
            f"one of {', '.join(LABEL_MAP_SUFFIXES)} (label map)."
        )
    array = _label_array(label_image.image.array)
    with atomic_write(path) as temporary:
        try:
            writer(temporary, label_image.image.with_array(array), _complete_labels(label_image.labels, array))
        except (RuntimeError, OSError) as err:
            raise OSError(f"Could not write {path} in folder {path.absolute().parent}: {err}") from err
    return path.absolute()


def _label_dtype(max_value: int) -> type:
    if max_value <= np.iinfo(np.uint8).max:
        return np.uint8
    return np.uint16 if max_value <= np.iinfo(np.uint16).max else np.int32


def _label_array(array: np.ndarray) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        raise ValueError(f"A label map must hold integers; got {array.dtype}. Arg-max the probabilities first.")
    if array.min(initial=0) < 0:
        raise ValueError("A label map cannot hold negative values.")
    return array.astype(_label_dtype(int(array.max(initial=0))), copy=False)


def _complete_labels(labels: list[Label], array: np.ndarray) -> list[Label]:
    known = {label.value for label in labels}
    extra = [_default_label(int(v)) for v in np.unique(array) if v != 0 and int(v) not in known]
    return [label for label in labels if label.value != 0] + extra


def _write_label_map(path: Path, image: Image, labels: list[Label]) -> None:
    sitk.WriteImage(image.to_sitk(), str(path), useCompression=True)


def _write_segmentation(path: Path, image: Image, labels: list[Label]) -> None:
    from slicerio import segmentation as slicerio

    segmentation = {
        "voxels": image.array.transpose(2, 1, 0),  # slicerio/pynrrd take (i, j, k) index order
        "ijkToLPS": image.index_to_physical(),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": [_segment_from_label(label) for label in labels],
    }
    slicerio.write_segmentation(str(path), segmentation)


def _segment_from_label(label: Label) -> dict:
    from slicerio import segmentation as slicerio

    segment = {
        "id": f"Segment_{label.value}",
        "labelValue": label.value,
        "layer": 0,
        "name": label.name,
        "nameAutoGenerated": False,
        "color": [float(c) for c in label.color],
        "colorAutoGenerated": False,
    }
    if label.terminology:
        if label.terminology.count("~") < 6:
            raise ValueError(
                f"Label '{label.name}' has a malformed terminology string {label.terminology!r}; expected Slicer's "
                "'context~category~type~modifier~anatomic context~region~region modifier' form."
            )
        segment["terminology"] = slicerio.terminology_entry_from_string(label.terminology)
    return segment
