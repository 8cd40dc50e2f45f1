"""The CT bundles' groups: ct-spleen and ct-abdomen-fast, from two patients.

- ``ts``: TotalSegmentator's example CT. ``example_ct`` (abdomen and pelvis, 3 mm) and ``example_ct_sm`` are ONE
  patient and one scan: example_ct_sm is exactly slices 82-111 of example_ct (checked voxel for voxel). They come
  with two TotalSegmentator outputs (``--fast -fs`` for example_ct, the normal-resolution model for example_ct_sm;
  they agree to Dice 0.95-0.98 on the organs used here). Both are model output, not manual labels. Their
  ``total`` classes are mapped to each model's label table by name (``TS_CLASSES``, read through
  class_map_total_and_total_mr.json), so no class id is typed by hand.
- ``spleen2``: the MSD spleen2 crop (another patient, 0.8 x 0.8 x 5 mm, manual spleen label). The crop also shows
  the left kidney and the stomach, unlabelled: it trains ct-spleen, but for ct-abdomen-fast it would teach those
  organs as background, so there it is only held out (the trainer has no ignore label).

ct-spleen therefore has a two-fold leave-one-patient-out design (``--leave-out spleen2``: tested on a manual
label; ``--leave-out ts``: tested on TotalSegmentator's label); ct-abdomen-fast trains on one patient and its
default folder already holds the other out.
"""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk
from bundled_cases import (  # a sibling script
    LEFT,
    RIGHT,
    Case,
    Group,
    LabelSpec,
    Source,
    read_image,
    remap_labels,
    slicer_term,
)

TS = "totalsegmentator-examples"
TS_LICENCE = "Apache-2.0"
TS_ATTRIBUTION = (
    "TotalSegmentator test reference files (github.com/wasserth/TotalSegmentator, tests/reference_files, "
    "Apache-2.0). Labels are TotalSegmentator model outputs, not manual ground truth. Wasserthal J. et al., "
    "Radiology: AI 2023."
)
TS_SOURCE = Source(TS, TS_LICENCE, TS_ATTRIBUTION)
SPLEEN = "msd-spleen-ct-crop"
SPLEEN_SOURCE = Source(
    SPLEEN, "CC BY-SA 4.0",
    "Medical Segmentation Decathlon Task09_Spleen, case spleen2 (MSKCC), cropped by the ivadomed team; manual "
    "label. Simpson et al. 2019, arXiv:1902.09063. CC BY-SA 4.0: derivatives are shared under the same licence.",
)

SPLEEN_LABEL = LabelSpec(1, "spleen", (0.62, 0.31, 0.64), slicer_term("78961009", "Spleen"))
SPLEEN_LABELS = (SPLEEN_LABEL,)
CT_ABDOMEN_LABELS = (
    SPLEEN_LABEL,
    LabelSpec(2, "right kidney", (0.72, 0.48, 0.32), slicer_term("64033007", "Kidney", RIGHT)),
    LabelSpec(3, "left kidney", (0.80, 0.58, 0.38), slicer_term("64033007", "Kidney", LEFT)),
    LabelSpec(4, "liver", (0.87, 0.51, 0.40), slicer_term("10200004", "Liver")),
    LabelSpec(5, "stomach", (0.85, 0.74, 0.50), slicer_term("69695003", "Stomach")),
    LabelSpec(6, "urinary bladder", (0.85, 0.80, 0.30), slicer_term("89837001", "Bladder")),
)
TS_CLASSES = {  # our label name -> TotalSegmentator `total` class name
    "spleen": "spleen", "right kidney": "kidney_right", "left kidney": "kidney_left", "liver": "liver",
    "stomach": "stomach", "urinary bladder": "urinary_bladder",
}
SPLEEN_SPACING = (1.6, 1.6, 5.0)  # twice the crop's in-plane voxel size: a 2-core CPU trains 4x more patches


def ts_label_map(data: Path, labels: tuple[LabelSpec, ...]) -> dict[int, int]:
    """TotalSegmentator `total` class id -> our label value, matched by name through the shipped class map."""
    class_map = json.loads((data / TS / "class_map_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    ids = {name: int(value) for value, name in class_map.items()}
    return {ids[TS_CLASSES[label.name]]: label.value for label in labels}


def ts_cases(data: Path, labels: tuple[LabelSpec, ...]) -> list[Case]:
    """example_ct with its `--fast -fs` labels and example_ct_sm with its normal-resolution labels, harmonised."""
    mapping = ts_label_map(data, labels)
    pairs = (("example_ct", "example_seg_fast_force_split.nii.gz"), ("example_ct_sm", "example_seg.nii.gz"))
    return [Case(name, read_image(data / TS / f"{name}.nii.gz", sitk.sitkInt16),
                 remap_labels(read_image(data / TS / seg, sitk.sitkUInt16), mapping)) for name, seg in pairs]


def _ts_about(labels: tuple[LabelSpec, ...]) -> str:
    names = ", ".join(f"{TS_CLASSES[label.name]} -> {label.name}" for label in labels)
    return (f"TotalSegmentator's example CT (one patient, 3 mm): example_ct (abdomen and pelvis) with the `--fast -fs` "
            "labels and example_ct_sm (its top 30 slices, upper abdomen: the same scan, not another patient) with "
            f"the normal-resolution labels; labels are TotalSegmentator model output, not manual ({names})")


def spleen2_case(data: Path) -> Case:
    """The MSD spleen2 crop at its own 0.8 x 0.8 x 5 mm with its manual spleen label."""
    return Case("spleen2", read_image(data / SPLEEN / "spleen2_ct.nii.gz", sitk.sitkInt16),
                read_image(data / SPLEEN / "spleen2_seg-manual.nii.gz", sitk.sitkUInt8))


_SPLEEN2_TEST = "MSD spleen2 crop (another patient, manual spleen label, 0.8 x 0.8 x 5 mm)"


def ct_abdomen_groups(data: Path) -> list[Group]:
    """TotalSegmentator's patient trains (6 organs); spleen2 (spleen only) is always held out."""
    return [
        Group("ts", TS_SOURCE, _ts_about(CT_ABDOMEN_LABELS), ts_cases(data, CT_ABDOMEN_LABELS), []),
        Group("spleen2", SPLEEN_SOURCE, "", [], [spleen2_case(data)],
              f"spleen only: {_SPLEEN2_TEST}; no held-out CT for the other organs"),
    ]


def _resampled(img: sitk.Image, spacing: tuple[float, float, float], label: bool = False) -> sitk.Image:
    """`img` on a grid of `spacing` covering the same extent (a label map: linear on its mask, then > 0.5)."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing, strict=True)]
    out = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        spacing, img.GetDirection(), -1024.0 if not label else 0.0, sitk.sitkFloat32)
    return sitk.Cast(out > 0.5, sitk.sitkUInt8) if label else sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def ct_spleen_groups(data: Path) -> list[Group]:
    """Two patients, each a fold: spleen2 (manual label; trains at 1.6 x 1.6 x 5 mm, tested at its own grid) and
    TotalSegmentator's example CT (its spleen; tested on example_ct_sm, the bundled held-out sample)."""
    native = spleen2_case(data)
    spleen2 = Case("spleen2", _resampled(native.image, SPLEEN_SPACING),
                   _resampled(native.label, SPLEEN_SPACING, label=True))
    ts = ts_cases(data, SPLEEN_LABELS)
    return [
        Group("spleen2", SPLEEN_SOURCE, "MSD spleen2 crop (one patient, 0.8 x 0.8 x 5 mm resampled to 1.6 x 1.6 x "
              "5 mm) with its manual spleen label", [spleen2], [native], _SPLEEN2_TEST),
        Group("ts", TS_SOURCE, _ts_about(SPLEEN_LABELS), ts, [c for c in ts if c.name == "example_ct_sm"],
              "TotalSegmentator example_ct_sm (another patient, upper abdomen, 3 mm) with TotalSegmentator's "
              "spleen (model output, not manual)"),
    ]
