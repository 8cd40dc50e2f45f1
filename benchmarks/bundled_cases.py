"""What a bundled model's training folder is built from: its labels, its groups of cases and their provenance.

A ``Bundle`` (one bundled model's data) is a list of ``Group``s, each one subject, contrast or patient with the
cases it trains with and the cases that test a model that never saw it. ``arrange`` turns the groups into one
build: by default every group that can train does, and groups without training cases are held out; a
leave-one-out build (``NAME-leave-out-KEY``) also holds out group KEY entirely, for the card's held-out figure.
``bundled_datasets.write_dataset`` writes the result; the groups per modality are built in bundled_ct_cases.py,
bundled_mr_cases.py and bundled_xray_cases.py.
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


@dataclass
class Case:
    """One image/label pair to write (SimpleITK images on one grid)."""

    name: str
    image: sitk.Image
    label: sitk.Image


@dataclass(frozen=True)
class Source:
    """A shared-data folder that feeds bundled models: its licence and how to credit it."""

    folder: str
    licence: str
    attribution: str


@dataclass
class Group:
    """One subject, contrast or patient: the unit a leave-one-out build leaves out.

    `train`: the cases a model learns from while the group is in; `test`: the cases that measure a model that
    never saw the group. A group without training cases is held out in every build. `about` and `test_about`
    say what those cases are (they go into the model card).
    """

    key: str
    source: Source
    about: str
    train: list[Case]
    test: list[Case]
    test_about: str = ""


@dataclass(frozen=True)
class Bundle:
    """A bundled model's data: its labels, its groups of cases (built from the shared data folder), the
    permissive data it deliberately leaves unused, with the reason (stated in the card), and the one orientation
    its cases are written in. The shared volumes come stored RAS, PSR or LPS; a network trained on a mix of axis
    orders, or tested on another, sees different anatomy along each axis. The model's manifest declares the same
    orientation, so the predictor reorients any input (a DICOM series, an axial slab of a sagittal scan) first."""

    name: str
    title: str
    modality: str
    channel: str
    labels: tuple[LabelSpec, ...]
    groups: Callable[[Path], list[Group]] = field(repr=False)
    not_used: str = ""
    orientation: str | None = "LPS"  # every 3D case is written in this one (None: as stored; 2D images)


@dataclass
class Split:
    """One build of a bundle: its folder name, training and held-out cases, and what the card says of them."""

    folder: str
    train: list[Case]
    heldout: list[Case]
    training_data: str
    heldout_data: str
    source: str
    licence: str
    attribution: str


LEAVE_OUT = "-leave-out-"  # a leave-one-out folder is named NAME-leave-out-KEY


def leave_out_keys(groups: list[Group]) -> list[str]:
    """The groups a leave-one-out build may leave out: each group that trains, when another one trains too."""
    trainable = [g.key for g in groups if g.train]
    return trainable if len(trainable) > 1 else []


def arrange(name: str, groups: list[Group], leave_out: str | None = None) -> Split:
    """The build of bundle `name` from its groups: every group that trains does, except `leave_out` (if given),
    whose test cases are held out with those of the groups that never train."""
    keys = leave_out_keys(groups)
    if leave_out is not None and leave_out not in keys:
        raise ValueError(f"{name} has no leave-one-out build for {leave_out!r}; "
                         + (f"choose from {', '.join(keys)}." if keys else
                            "fewer than two of its groups train (its default folder holds out what it can)."))
    training = [g for g in groups if g.train and g.key != leave_out]
    held = [g for g in groups if not g.train or g.key == leave_out]
    heldout_data = "; ".join(g.test_about for g in held if g.test)
    if leave_out is not None:
        heldout_data += (f". Group {leave_out} is left out entirely: this model trained on "
                         f"{', '.join(g.key for g in training)} only")
    elif not heldout_data:
        heldout_data = ("none in this folder, which trains on every group; the held-out figures come from "
                        + ", ".join(f"{name}{LEAVE_OUT}{k}" for k in keys))
    sources = list(dict.fromkeys(g.source for g in training))
    licence = sources[0].licence if len(sources) == 1 else "; ".join(f"{s.licence} ({s.folder})" for s in sources)
    return Split(
        f"{name}{LEAVE_OUT}{leave_out}" if leave_out else name,
        [c for g in training for c in g.train], [c for g in held for c in g.test],
        "; ".join(g.about for g in training), heldout_data, ", ".join(s.folder for s in sources), licence,
        " ".join(s.attribution for s in sources),
    )


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
