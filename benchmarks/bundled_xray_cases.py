"""The X-ray bundle's groups: digitally reconstructed radiographs of TotalSegmentator's example CT (xr-lungs-drr).

Synthetic AP radiographs at several rotations about the body axis, labelled with the projected lung lobes; also
the source of the bundled DRR sample (``bundled_datasets.write_samples``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bundled_cases import (  # sibling scripts
    LEFT,
    RIGHT,
    Case,
    Group,
    LabelSpec,
    read_image,
    remap_labels,
    slicer_term,
)
from bundled_ct_cases import TS, TS_SOURCE

# ----------------------------------------------------------------------------- X-ray lung fields (DRR, 2D)

XR_LABELS = (
    LabelSpec(1, "right lung", (0.40, 0.60, 0.90), slicer_term("39607008", "Lung", RIGHT)),
    LabelSpec(2, "left lung", (0.30, 0.80, 0.60), slicer_term("39607008", "Lung", LEFT)),
)
_LUNG_IDS = {1: (12, 13, 14), 2: (10, 11)}  # TotalSegmentator `total` lobes: right (upper, middle, lower), left
XR_TRAIN_ANGLES = (-20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
XR_HELDOUT_ANGLES = (-7.5, 12.5)
XR_SAMPLE_ANGLE = 12.5
XR_SCALE = 100.0  # stored grey value = 100 × line integral of attenuation in water-equivalent cm


def _rotated_grid(ct: sitk.Image, degrees: float) -> sitk.Image:
    """An empty 3 mm grid centred on `ct`, rotated by `degrees` about the superior (LPS z) axis.

    Its j axis is then the (rotated) anterior-posterior ray direction, whatever the CT's own orientation; it is
    long enough to hold the CT's diagonal, so no ray leaves the body early.
    """
    spacing = 3.0
    last = np.array(ct.GetSize()) - 1
    corners = np.array([ct.TransformContinuousIndexToPhysicalPoint((np.array(c) * last).tolist())
                        for c in np.ndindex(2, 2, 2)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre = (lo + hi) / 2
    extent = hi - lo
    diagonal = math.hypot(extent[0], extent[1])
    size = [math.ceil(extent[0] / spacing) + 1, math.ceil(diagonal / spacing) + 1, math.ceil(extent[2] / spacing) + 1]
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    origin = centre - rot @ (np.array(size) - 1) * spacing / 2
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((spacing,) * 3)
    grid.SetDirection(rot.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def _radiograph_image(array_kji: np.ndarray, spacing: float) -> sitk.Image:
    """A single-slice image (rows = superior to inferior, columns = patient right to left) with identity direction."""
    img = sitk.GetImageFromArray(array_kji[::-1][np.newaxis])  # k goes up: flip so row 0 is superior
    img.SetSpacing((spacing, spacing, 1.0))
    return img


def drr(ct: sitk.Image, lobes: sitk.Image, degrees: float) -> Case:
    """A digitally reconstructed AP radiograph of `ct` and its projected lung masks, rotated about the body axis.

    Attenuation relative to water, mu = max(0, (HU + 1000) / 1000), is summed along the rays (anterior-posterior
    axis of the rotated grid); a pixel is lung where any lung-lobe voxel lies on its ray.
    """
    grid = _rotated_grid(ct, degrees)
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0,
                                              sitk.sitkFloat32))
    mu = np.maximum(0.0, (hu + 1000.0) / 1000.0)
    spacing = grid.GetSpacing()[0]
    integral_cm = mu.sum(axis=1) * spacing / 10.0  # numpy (k, j, i): j is the ray axis
    image = _radiograph_image(np.round(integral_cm * XR_SCALE).astype(np.uint16), spacing)
    lobe_array = sitk.GetArrayFromImage(sitk.Resample(lobes, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                      sitk.sitkUInt8))
    projected = np.zeros(integral_cm.shape, np.uint8)
    for value in sorted(_LUNG_IDS):
        projected[(lobe_array == value).any(axis=1) & (projected == 0)] = value
    label = _radiograph_image(projected, spacing)
    return Case(f"drr_{degrees:+05.1f}deg".replace(".", "p").replace("+", "p").replace("-", "m"), image, label)


def xray_groups(data: Path) -> list[Group]:
    """DRRs of TotalSegmentator's example CT at several rotations; two unseen rotations held out (same CT)."""
    ct, lobes = read_image(data / TS / "example_ct.nii.gz"), lung_lobes(data)
    return [
        Group("drr", TS_SOURCE, f"{len(XR_TRAIN_ANGLES)} digitally reconstructed radiographs of ONE CT "
              f"(TotalSegmentator example_ct, rotations {', '.join(f'{a:g}' for a in XR_TRAIN_ANGLES)} degrees about "
              "the body axis); labels = projected TotalSegmentator lung lobes. The CT covers only the lung bases.",
              [drr(ct, lobes, a) for a in XR_TRAIN_ANGLES], []),
        Group("unseen-angles", TS_SOURCE, "", [], [drr(ct, lobes, a) for a in XR_HELDOUT_ANGLES],
              f"{len(XR_HELDOUT_ANGLES)} radiographs of the same CT at unseen rotations "
              f"({', '.join(f'{a:g}' for a in XR_HELDOUT_ANGLES)} degrees)"),
    ]


def lung_lobes(data: Path) -> sitk.Image:
    """TotalSegmentator's lung lobes of the example CT merged into right (1) and left (2) lung."""
    seg = read_image(data / TS / "example_seg_fast_force_split.nii.gz", sitk.sitkUInt16)
    return remap_labels(seg, {old: new for new, olds in _LUNG_IDS.items() for old in olds})
