"""Tests for the metrics against analytic geometry, in millimetres, with anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unetseg.evaluation import metrics
from unetseg.image import Image

SPACING = (2.5, 0.8, 1.0)  # (sz, sy, sx): numpy axis order, the thick axis first
SHAPE = (40, 100, 80)


def sphere(radius: float, centre_mm: tuple[float, float, float]) -> np.ndarray:
    """A voxelised sphere on the anisotropic grid, centre in mm from the grid centre (z, y, x)."""
    axes = [(np.arange(n) - n / 2) * s for n, s in zip(SHAPE, SPACING, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2 <= radius**2


def overlap_dice(radius: float, distance: float) -> float:
    """Closed-form Dice of two spheres of equal radius whose centres are `distance` apart."""
    lens = math.pi * (4 * radius + distance) * (2 * radius - distance) ** 2 / 12
    return lens / (4 / 3 * math.pi * radius**3)


@pytest.mark.parametrize("offset", [5.0, 7.5, 12.5])
def test_offset_spheres_along_the_thick_axis(offset):
    radius = 18.0
    ref = sphere(radius, (0, 0, 0)).astype(np.uint8)
    pred = sphere(radius, (offset, 0, 0)).astype(np.uint8) * 2
    result = metrics.compute_metrics(pred, ref * 2, [2], SPACING)[2]
    voxel_diagonal = math.dist((0, 0, 0), SPACING)
    assert result["flag"] is None
    assert result["dice"] == pytest.approx(overlap_dice(radius, offset), abs=0.02)
    assert abs(result["hd"] - offset) <= voxel_diagonal
    assert 0 < result["assd"] <= result["hd95"] <= result["hd"]
    assert result["iou"] == pytest.approx(result["dice"] / (2 - result["dice"]))
    sphere_ml = 4 / 3 * math.pi * radius**3 / 1000
    assert result["volume_ref_ml"] == pytest.approx(sphere_ml, rel=0.02)
    assert result["volume_diff_ml"] == pytest.approx(result["volume_pred_ml"] - result["volume_ref_ml"])


def test_spacing_follows_the_array_axis_order():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:12, 5:12, 5:12] = 1
    pred = np.roll(ref, 3, axis=0)  # 3 voxels along axis 0
    assert metrics.compute_metrics(pred, ref, [1], (3.0, 1.0, 1.0))[1]["hd"] == pytest.approx(9.0)
    assert metrics.compute_metrics(pred, ref, [1], (1.0, 1.0, 3.0))[1]["hd"] == pytest.approx(3.0)


def test_image_spacing_reversed_gives_the_array_order():
    image = Image(np.zeros((4, 5, 6), np.uint8), (0.5, 0.7, 2.0))  # ITK (x, y, z) spacing
    ref = image.array.copy()
    ref[1:3, 1:4, 1:5] = 1
    result = metrics.compute_metrics(ref, ref, [1], image.spacing[::-1])[1]
    assert result["volume_ref_ml"] == pytest.approx(2 * 3 * 4 * 0.5 * 0.7 * 2.0 / 1000)


def test_identical_masks():
    ref = sphere(10.0, (2.0, -3.0, 1.0)).astype(np.uint8)
    result = metrics.compute_metrics(ref, ref, [1], SPACING)[1]
    assert result["dice"] == 1.0 and result["iou"] == 1.0
    assert result["hd"] == 0.0 and result["hd95"] == 0.0 and result["assd"] == 0.0
    assert result["volume_diff_ml"] == 0.0


def test_empty_mask_conventions():
    empty = np.zeros((1, 16, 16), np.uint8)
    square = empty.copy()
    square[0, 4:8, 4:8] = 1
    result = metrics.compute_metrics(empty, empty, [1], (1.0, 0.5, 0.5))[1]
    assert (result["dice"], result["iou"], result["hd"], result["hd95"], result["assd"]) == (1, 1, 0, 0, 0)
    assert result["flag"] == "both_empty"
    missed = metrics.compute_metrics(empty, square, [1], (1.0, 0.5, 0.5))[1]
    assert missed["dice"] == 0 and missed["flag"] == "pred_empty"
    assert math.isinf(missed["hd"]) and math.isinf(missed["hd95"]) and math.isinf(missed["assd"])
    false_positive = metrics.compute_metrics(square, empty, [1], (1.0, 0.5, 0.5))[1]
    assert false_positive["dice"] == 0 and false_positive["flag"] == "ref_empty"
    assert false_positive["volume_diff_ml"] == pytest.approx(16 * 0.25 / 1000)


def test_one_slice_2d_image_uses_in_plane_contours():
    ref = np.zeros((1, 30, 30), np.uint8)
    ref[0, 5:15, 5:15] = 1
    pred = np.roll(ref, 4, axis=2)
    result = metrics.compute_metrics(pred, ref, [1], (5.0, 0.5, 0.5))[1]
    assert result["hd"] == pytest.approx(2.0)  # 4 pixels of 0.5 mm
    assert result["dice"] == pytest.approx(0.6)
    # boundary pixels only: the 2D contour distances, not the whole square's
    assert result["assd"] < 2.0


def test_dice_helper_and_label_selection():
    pred = np.array([[0, 1, 1, 2]])
    ref = np.array([[0, 1, 2, 2]])
    assert metrics.dice(pred == 1, ref == 1) == pytest.approx(2 / 3)
    assert metrics.dice(pred == 3, ref == 3) == 1.0
    result = metrics.compute_metrics(pred, ref, [1, 2], (1.0, 1.0))
    assert set(result) == {1, 2} and result[2]["dice"] == pytest.approx(2 / 3)


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="same shape"):
        metrics.compute_metrics(np.zeros((2, 3)), np.zeros((3, 2)), [1], (1, 1))
    with pytest.raises(ValueError, match=r"spacing must list 3 positive values .*\(sz, sy, sx\)"):
        metrics.compute_metrics(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), [1], (1, 1))
