"""DICOM Segmentation objects out (via highdicom): a label map on a DICOM series' grid, referencing that series.

Each label becomes one segment with its name, colour and codes: the label's Slicer terminology string
(``context~category~type~type modifier~anatomic context~region~region modifier``, each code ``SCHEME^VALUE^MEANING``)
gives the segmented property category, type (and modifier) and anatomic region; a label without one gets the
generic SNOMED CT "Tissue" category and type. highdicom and pydicom are imported only when a SEG is written or read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from unetseg import __version__
from unetseg.image import Label, LabelImage
from unetseg.io.atomic import PathLike, atomic_write
from unetseg.io.read import default_label

if TYPE_CHECKING:
    import pydicom

DICOM_SEG_SUFFIX = ".dcm"
# SNOMED CT "Tissue": category and type of a segment whose label carries no terminology.
GENERIC_CODE = ("85756007", "SCT", "Tissue")
_TERMINOLOGY_FIELDS = 7  # context, category, type, type modifier, anatomic context, region, region modifier


def series_files(folder: PathLike) -> list[Path]:
    """The files of the one DICOM series in ``folder``, in the order `read_image` stacks them (slice index k)."""
    folder = Path(folder)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) if folder.is_dir() else ()
    if len(series) != 1:
        raise ValueError(
            f"A DICOM SEG references the DICOM series it segments, and {folder} is not a folder holding one DICOM "
            "series. Give a DICOM series folder as the (first) input, or write .seg.nrrd or NIfTI instead."
        )
    return [Path(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])]


def write_dicom_seg(path: PathLike, label_image: LabelImage, source: PathLike, model: str, version: str) -> Path:
    """Write ``label_image`` (on the grid of the DICOM series in folder ``source``) as a DICOM SEG, atomically.

    Segments are numbered 1..n in the label table's order (DICOM needs consecutive numbers; label values may
    skip); ``model`` and ``version`` name the algorithm in every segment and in the series description.
    """
    import highdicom as hd
    import pydicom

    path = Path(path)
    sources = [pydicom.dcmread(str(name)) for name in series_files(source)]
    array = label_image.image.array
    frames = int(getattr(sources[0], "NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    if frames != array.shape[0]:
        raise ValueError(
            f"The label map has {array.shape[0]} slices but the DICOM series in {source} has {frames}: "
            "a DICOM SEG must be on the grid of the series it references."
        )
    labels = [label for label in label_image.labels if label.value != 0]
    known = {label.value for label in labels}
    labels += [default_label(int(v)) for v in np.unique(array) if v != 0 and int(v) not in known]  # none lost
    numbers = np.zeros(max([int(array.max(initial=0)), *(label.value for label in labels)]) + 1, dtype=np.uint16)
    for number, label in enumerate(labels, start=1):
        numbers[label.value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model, version=version, family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbers[array].astype(np.uint8 if len(labels) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(number, label, algorithm) for number, label in enumerate(labels, start=1)],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", None) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="UNetSegmentation",
        manufacturer_model_name=model,
        software_versions=f"unetseg {__version__}",
        device_serial_number="none",
        series_description=f"{model} segmentation"[:64],
        omit_empty_frames=True,
    )
    with atomic_write(path) as temporary:
        seg.save_as(str(temporary))
    return path.absolute()


def _segment(number: int, label: Label, algorithm: Any) -> Any:
    """The highdicom segment description of one label: name, colour, codes from its terminology."""
    import highdicom as hd

    codes = terminology_codes(label)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name[:64],
        segmented_property_category=_concept(codes["category"]),
        segmented_property_type=_concept(codes["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_concept(codes["region"])] if codes["region"] else None,
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in label.color)),
    )
    if codes["modifier"]:  # e.g. SCT "Left": highdicom has no argument for it, the standard has the sequence
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _concept(codes["modifier"])
        ]
    return description


def terminology_codes(label: Label) -> dict[str, tuple[str, str, str] | None]:
    """The (value, scheme, meaning) codes of a label's terminology: category, type, modifier and region.

    A label without terminology gets `GENERIC_CODE` for category and type; empty fields (``^^``) are None.
    """
    if not label.terminology:
        return {"category": GENERIC_CODE, "type": GENERIC_CODE, "modifier": None, "region": None}
    fields = label.terminology.split("~")
    if len(fields) < _TERMINOLOGY_FIELDS:
        raise ValueError(
            f"Label '{label.name}' has a malformed terminology string {label.terminology!r}; expected Slicer's "
            "'context~category~type~modifier~anatomic context~region~region modifier' form."
        )
    codes = {"category": _code(fields[1]), "type": _code(fields[2]), "modifier": _code(fields[3]),
             "region": _code(fields[5])}  # fmt: skip
    codes["category"] = codes["category"] or GENERIC_CODE
    codes["type"] = codes["type"] or GENERIC_CODE
    return codes


def _code(text: str) -> tuple[str, str, str] | None:
    """``SCHEME^VALUE^MEANING`` → (value, scheme, meaning); an empty code (``^^``) → None."""
    scheme, value, meaning = ([*text.split("^"), "", ""])[:3]
    return (value, scheme, meaning or value) if scheme and value else None


def _concept(code: tuple[str, str, str]) -> Any:
    import highdicom as hd

    value, scheme, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def read_dicom_seg_header(path: PathLike) -> pydicom.Dataset:
    """The header of a DICOM SEG (no pixel data): a cheap check that a written SEG is complete and readable."""
    import pydicom

    dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
    if getattr(dataset, "Modality", None) != "SEG":
        raise ValueError(f"{path} is a DICOM file but not a Segmentation (Modality {dataset.get('Modality')!r}).")
    return dataset
