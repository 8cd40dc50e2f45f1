"""The pieces of nnU-Net's inference reproduced here, checked against nnU-Net's rules and scipy's reference forms.

Fast checks; the end-to-end parity with ``nnUNetv2_predict`` is in test_nnunet_parity.py. Also: a model that
cannot be imported (a cascade, a trainer with its own network) leaves the user's model folder as it was.
"""

from __future__ import annotations

import numpy as np
import pytest
from nnunet_fakes import configuration as nnunet_configuration
from nnunet_fakes import plans_for, write_model
from scipy import ndimage

from unetseg.inference.nnunet_prepare import NnUNetRules, bounding_box, nonzero_mask, segmentation
from unetseg.inference.nnunet_resampling import along_axis, new_shape, resample, separate_axis
from unetseg.inference.nnunet_windows import count_tiles, gaussian, pad_to_patch, steps, tiles
from unetseg.models.catalog import Catalog
from unetseg.models.formats import FormatError
from unetseg.models.importers import detect_format, import_any


def test_tile_steps_and_count_follow_nnunet():
    assert steps(110, 64) == [0, 23, 46]  # the example in nnU-Net's compute_steps_for_sliding_window
    assert steps(64, 64) == [0] and steps(65, 64) == [0, 1] and steps(96, 64) == [0, 32]
    assert len(tiles((3, 80, 40), (64, 40))) == 3 * 2 and count_tiles((3, 80, 30), (64, 40)) == 6
    padded, unpad = pad_to_patch(np.ones((1, 5, 30, 41)), (32, 40))
    assert padded.shape == (1, 5, 32, 41) and unpad == (slice(0, 5), slice(1, 31), slice(0, 41))


def test_gaussian_is_nnunets():
    g = gaussian((16, 20, 9))
    assert g.shape == (16, 20, 9) and g.max() == pytest.approx(10, rel=1e-3) and g.min() > 0
    assert np.unravel_index(np.argmax(g), g.shape) == (8, 10, 4)
    assert np.array_equal(g, g.astype(np.float16).astype(np.float32)), "stored in fp16, as nnU-Net does"


def test_separate_axis_rules():
    assert separate_axis(None, (3.6, 1.0, 1.0), (3.6, 1.0, 1.0)) == 0
    assert separate_axis(None, (1.0, 1.0, 1.0), (1.0, 1.0, 5.0)) == 2  # from the new spacing
    assert separate_axis(None, (3.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None  # ratio 3 is not above 3
    assert separate_axis(None, (5.0, 5.0, 1.0), (5.0, 5.0, 1.0)) is None  # two coarse axes: no separate pass
    assert separate_axis(True, (1.0, 2.0, 1.0), (1.0, 1.0, 1.0)) == 1
    assert separate_axis(False, (9.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None
    assert new_shape((17, 46, 47), (3.4, 0.98, 0.96), (3.62, 0.986, 1.0)) == (16, 46, 45)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_the_coarse_axis_pass_is_map_coordinates_on_the_full_grid(order):
    x = np.random.default_rng(0).normal(size=(4, 7, 5))
    out = along_axis(x, 11, 0, order)
    grid = np.mgrid[:11, :7, :5].astype(np.float64)
    grid[0] = 4 / 11 * (grid[0] + 0.5) - 0.5
    assert np.allclose(out, ndimage.map_coordinates(x, grid, order=order, mode="nearest"), atol=1e-12)


def test_resampling_keeps_an_unchanged_shape_and_clips_to_the_input_range():
    data = np.random.default_rng(1).normal(size=(2, 6, 8, 8)).astype(np.float32)
    assert resample(data, (6, 8, 8), (1, 1, 1), (2, 2, 2)) is data
    out = resample(data, (12, 16, 16), (1, 1, 1), (0.5, 0.5, 0.5))
    assert out.shape == (2, 12, 16, 16) and out.dtype == np.float32
    assert out.min() >= data.min() - 1e-6 and out.max() <= data.max() + 1e-6


def test_nonzero_mask_fills_holes_like_binary_fill_holes():
    rng = np.random.default_rng(2)
    for _ in range(5):
        data = (rng.random((2, 9, 10, 11)) > 0.6).astype(np.float32)
        assert np.array_equal(nonzero_mask(data), ndimage.binary_fill_holes(np.any(data != 0, axis=0)))
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1:3, 2, 1:5] = True
    assert bounding_box(mask) == (slice(1, 3), slice(2, 3), slice(1, 5))
    assert bounding_box(np.zeros((2, 3, 4), dtype=bool)) == (slice(0, 2), slice(0, 3), slice(0, 4))


def test_regions_are_painted_in_class_order():
    rules = NnUNetRules((0, 1, 2), (0, 1, 2), (1.0, 1.0, 1.0), (), {}, {}, (4, 4, 4), 2, 1, ((1, 2), (2,)), (1, 2))
    logits = np.array([[[[1.0, 1.0, -1.0]]], [[[-1.0, 2.0, 3.0]]]], dtype=np.float16)  # head 0: whole, 1: core
    assert segmentation(logits, rules).tolist() == [[[1, 2, 2]]]


def test_a_refused_nnunet_model_leaves_the_user_folder_as_it_was(tmp_path):
    catalog = Catalog(bundled_dir=tmp_path / "none", user_dir=tmp_path / "models")
    cascade, _ = write_model(tmp_path / "a", config_name="3d_cascade_fullres", folds=(0,), plans=plans_for({
        "3d_lowres": nnunet_configuration(), "3d_cascade_fullres": {"inherits_from": "3d_lowres",
                                                                     "previous_stage": "3d_lowres"}}))
    bn, _ = write_model(tmp_path / "b", trainer="nnUNetTrainerBN", folds=(0,))
    for folder, message in ((cascade, "cascade stage"), (bn, "nnUNetTrainerBN.*overrides build_network")):
        assert detect_format(folder) == "nnunetv2"
        with pytest.raises(FormatError, match=message):
            import_any(folder, catalog)
        assert [p.name for p in catalog.user_dir.iterdir()] == []


def test_fast_linear_resize_and_argmax_equal_the_reference_forms():
    from unetseg.inference.nnunet_prepare import argmax
    from unetseg.inference.nnunet_resampling import resize

    x = np.random.default_rng(3).normal(size=(5, 9, 7))
    zoomed = ndimage.zoom(x, [11 / 5, 4 / 9, 13 / 7], order=1, mode="nearest", grid_mode=True)
    assert np.allclose(resize(x, (11, 4, 13), 1), zoomed, atol=1e-12)
    logits = np.random.default_rng(4).normal(size=(4, 6, 7, 8)).astype(np.float16)
    logits[2, 0, 0, 0] = logits[1, 0, 0, 0] = logits.max() + 1  # a tie goes to the lower label
    assert np.array_equal(argmax(logits), np.argmax(logits, axis=0))
