"""The CT bundles' cases: ct-abdomen-fast (TotalSegmentator's example CT) and ct-spleen (the MSD spleen2 crop).

Each builder returns (training cases, held-out cases) from the shared data folder; see ``BUNDLES`` in
bundled_datasets.py for what each held-out set can and cannot show.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
from bundled_cases import LEFT, RIGHT, Case, LabelSpec, read_image, remap_labels, slicer_term  # a sibling script

# --------------------------------------------------------------------------------------- CT abdomen (3 mm)

TS = "totalsegmentator-examples"
TS_LICENCE = "Apache-2.0"
TS_ATTRIBUTION = (
    "TotalSegmentator test reference files (github.com/wasserth/TotalSegmentator, tests/reference_files, "
    "Apache-2.0). Labels are TotalSegmentator model outputs, not manual ground truth. Wasserthal J. et al., "
    "Radiology: AI 2023."
)
# TotalSegmentator `total` class -> (our value, name, colour, terminology)
CT_ABDOMEN_LABELS = (
    LabelSpec(1, "spleen", (0.62, 0.31, 0.64), slicer_term("78961009", "Spleen")),
    LabelSpec(2, "right kidney", (0.72, 0.48, 0.32), slicer_term("64033007", "Kidney", RIGHT)),
    LabelSpec(3, "left kidney", (0.80, 0.58, 0.38), slicer_term("64033007", "Kidney", LEFT)),
    LabelSpec(4, "liver", (0.87, 0.51, 0.40), slicer_term("10200004", "Liver")),
    LabelSpec(5, "stomach", (0.85, 0.74, 0.50), slicer_term("69695003", "Stomach")),
    LabelSpec(6, "urinary bladder", (0.85, 0.80, 0.30), slicer_term("89837001", "Bladder")),
)
_TS_TOTAL_IDS = {1: 1, 2: 2, 3: 3, 5: 4, 6: 5, 21: 6}


def build_ct_abdomen(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """example_ct (3 mm) with 6 organs of TotalSegmentator's `--fast -fs` output; no held-out CT of another patient.

    The held-out check is the spleen of the MSD spleen2 crop (another patient, manual label; see the card).
    """
    ct = read_image(data / TS / "example_ct.nii.gz", sitk.sitkInt16)
    seg = remap_labels(read_image(data / TS / "example_seg_fast_force_split.nii.gz", sitk.sitkUInt16), _TS_TOTAL_IDS)
    spleen_ct = read_image(data / SPLEEN / "spleen2_ct.nii.gz", sitk.sitkInt16)
    spleen_seg = read_image(data / SPLEEN / "spleen2_seg-manual.nii.gz", sitk.sitkUInt8)
    return [Case("example_ct", ct, seg)], [Case("spleen2", spleen_ct, spleen_seg)]


# --------------------------------------------------------------------------------------------- CT spleen

SPLEEN = "msd-spleen-ct-crop"
SPLEEN_LABELS = (LabelSpec(1, "spleen", (0.62, 0.31, 0.64), slicer_term("78961009", "Spleen")),)
SPLEEN_SPACING = (1.6, 1.6, 5.0)  # twice the crop's in-plane voxel size: a 2-core CPU trains 4x more patches


def _resampled(img: sitk.Image, spacing: tuple[float, float, float], label: bool = False) -> sitk.Image:
    """`img` on a grid of `spacing` covering the same extent (a label map: linear on its mask, then > 0.5)."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing, strict=True)]
    out = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        spacing, img.GetDirection(), -1024.0 if not label else 0.0, sitk.sitkFloat32)
    return sitk.Cast(out > 0.5, sitk.sitkUInt8) if label else sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def build_ct_spleen(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """spleen2 (manual label) at 1.6 x 1.6 x 5 mm for training; TotalSegmentator's spleen as held-out check."""
    ct = _resampled(read_image(data / SPLEEN / "spleen2_ct.nii.gz"), SPLEEN_SPACING)
    seg = _resampled(read_image(data / SPLEEN / "spleen2_seg-manual.nii.gz"), SPLEEN_SPACING, label=True)
    ts_ct = read_image(data / TS / "example_ct_sm.nii.gz", sitk.sitkInt16)
    ts_seg = remap_labels(read_image(data / TS / "example_seg.nii.gz", sitk.sitkUInt16), {1: 1})
    return [Case("spleen2", ct, seg)], [Case("ts_example_ct_sm", ts_ct, ts_seg)]
