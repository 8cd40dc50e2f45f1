"""What a bundled model's training folder is built from: its labels, cases and provenance, and the shared helpers.

``Bundle`` describes one bundled model's data (source, licence, labels, how its held-out cases were made); its
``build`` returns the training and held-out ``Case``s, written by ``bundled_datasets.write_dataset``. The builders
per modality are in bundled_ct_cases.py, bundled_mr_cases.py and bundled_xray_cases.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

_ANATOMY = "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
_REGION = "~Anatomic codes - DICOM master list~^^~^^"
RIGHT, LEFT = "SCT^24028007^Right", "SCT^7771000^Left"


def slicer_term(code: str, meaning: str, modifier: str = "^^") -> str:
    """A Slicer terminology string for an anatomical structure (7 `~`-separated parts)."""
    return f"{_ANATOMY}SCT^{code}^{meaning}~{modifier}{_REGION}"


@dataclass(frozen=True)
class LabelSpec:
    """One output class: its value, name, RGB colour (0-1) and Slicer terminology string."""

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str

    def to_dict(self) -> dict:
        """The manifest entry (the `Label.to_dict` layout)."""
        return {"value": self.value, "name": self.name, "color": list(self.color), "terminology": self.terminology}


@dataclass(frozen=True)
class Bundle:
    """A bundled model's data: where it comes from, its licence, labels, and how its held-out cases were made."""

    name: str
    title: str
    modality: str
    channel: str
    source: str
    licence: str
    attribution: str
    labels: tuple[LabelSpec, ...]
    training_data: str
    heldout_data: str
    build: Callable[[Path, Path], tuple[list[Case], list[Case]]] = field(repr=False)


@dataclass
class Case:
    """One image/label pair to write (SimpleITK images on one grid)."""

    name: str
    image: sitk.Image
    label: sitk.Image


# ----------------------------------------------------------------------------------------------- helpers


def read_image(path: Path, pixel: int = sitk.sitkFloat32) -> sitk.Image:
    """The image at `path` cast to `pixel`; a missing file says where the shared data folder should be."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: point --data at the shared data folder (../shared/data).")
    return sitk.Cast(sitk.ReadImage(str(path)), pixel)


def remap_labels(label: sitk.Image, mapping: dict[int, int]) -> sitk.Image:
    """Label map with each source value in `mapping` replaced by its new value and everything else 0."""
    src = sitk.GetArrayFromImage(label).astype(np.int64)
    out = np.zeros(src.shape, np.uint8)
    for old, new in mapping.items():
        out[src == old] = new
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(label)
    return img
