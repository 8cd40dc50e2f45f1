"""Default colours, readable names and Slicer terminology for the labels of a newly trained or imported model.

A dataset usually names its labels ("spleen", "left kidney") without codes; the trainer looks the names up
here so a new model's segments arrive in Slicer with a standard terminology entry. The map is deliberately
small: common organs and the BraTS tumour classes, coded in SNOMED CT as in Slicer's default terminology.
Unknown names get no terminology (Slicer then shows the name only) and a colour from a fixed palette.
"""

from __future__ import annotations

import colorsys
import re

_ANATOMY = "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
_ALTERED = "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure~"
_REGION = "~Anatomic codes - DICOM master list~^^~^^"
_SIDES = {"right": "SCT^24028007^Right", "left": "SCT^7771000^Left"}

# name (lower case, side words removed) -> (category prefix, SNOMED CT code, code meaning)
_STRUCTURES = {
    "spleen": (_ANATOMY, "78961009", "Spleen"),
    "liver": (_ANATOMY, "10200004", "Liver"),
    "kidney": (_ANATOMY, "64033007", "Kidney"),
    "pancreas": (_ANATOMY, "15776009", "Pancreas"),
    "stomach": (_ANATOMY, "69695003", "Stomach"),
    "gallbladder": (_ANATOMY, "28231008", "Gallbladder"),
    "urinary bladder": (_ANATOMY, "89837001", "Bladder"),
    "bladder": (_ANATOMY, "89837001", "Bladder"),
    "lung": (_ANATOMY, "39607008", "Lung"),
    "heart": (_ANATOMY, "80891009", "Heart"),
    "aorta": (_ANATOMY, "15825003", "Aorta"),
    "prostate": (_ANATOMY, "41216001", "Prostate"),
    "brain": (_ANATOMY, "12738006", "Brain"),
    "spinal cord": (_ANATOMY, "2748008", "Spinal cord"),
    "grey matter": (_ANATOMY, "40146001", "Cerebral Grey Matter"),
    "gray matter": (_ANATOMY, "40146001", "Cerebral Grey Matter"),
    "white matter": (_ANATOMY, "68523003", "Cerebral White Matter"),
    "tumour": (_ALTERED, "108369006", "Neoplasm"),
    "tumor": (_ALTERED, "108369006", "Neoplasm"),
    "lesion": (_ALTERED, "52988006", "Lesion"),
    "necrosis": (_ALTERED, "6574001", "Necrosis"),
    "oedema": (_ALTERED, "79654002", "Edema"),
    "edema": (_ALTERED, "79654002", "Edema"),
}

# Distinct, readable colours (RGB 0–1) for labels the dataset gives no colour.
PALETTE = (
    (0.89, 0.35, 0.27), (0.30, 0.60, 0.90), (0.95, 0.80, 0.25), (0.40, 0.75, 0.45), (0.65, 0.45, 0.80),
    (0.95, 0.55, 0.20), (0.35, 0.80, 0.80), (0.85, 0.45, 0.65), (0.60, 0.60, 0.30), (0.55, 0.35, 0.25),
)


def default_terminology(name: str) -> str | None:
    """Slicer's terminology string for a known structure name (with a left/right modifier), else None."""
    words = re.sub(r"[_\-]+", " ", name.strip().lower()).split()
    side = next((w for w in words if w in _SIDES), None)
    key = " ".join(w for w in words if w not in _SIDES)
    if key not in _STRUCTURES:
        return None
    category, code, meaning = _STRUCTURES[key]
    modifier = _SIDES[side] if side else "^^"
    return f"{category}SCT^{code}^{meaning}~{modifier}{_REGION}"


def default_color(index: int) -> tuple[float, float, float]:
    """The colour of the ``index``-th foreground label (1-based): the palette, then hues a golden angle apart
    (alternating saturation and brightness), so that models with many labels still get distinct colours."""
    if index <= len(PALETTE):
        return PALETTE[index - 1]
    k = index - len(PALETTE)
    hue = (0.07 + k * 0.618033988749895) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, (0.55, 0.75, 0.4)[k % 3], (0.9, 0.7, 0.8)[k % 3])
    return tuple(round(c, 3) for c in rgb)  # type: ignore[return-value]


def readable_name(name: str) -> str:
    """A label or channel name for people: underscores become spaces (``kidney_left`` becomes ``kidney left``)."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip() or name


def label_entry(value: int, name: str, index: int) -> dict:
    """A manifest label for an imported model's class: its readable name, the ``index``-th default colour and
    Slicer terminology where the name is a known structure."""
    entry: dict = {"value": value, "name": readable_name(name), "color": list(default_color(index))}
    terminology = default_terminology(name)
    if terminology:
        entry["terminology"] = terminology
    return entry
