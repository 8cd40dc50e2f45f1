"""Bounded work: an input whose network grid is absurd is refused before anything is resampled."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tiny_models import write_tiny_package

from unetseg.image import Image
from unetseg.inference.limits import WorkLimits, WorkTooLargeError, planned_bytes, planned_windows
from unetseg.inference.predictor import segment
from unetseg.inference.windows import WindowSettings


def _ct(shape=(8, 24, 24), spacing=(1.0, 1.0, 1.0)) -> Image:
    rng = np.random.default_rng(0)
    array = rng.normal(40.0, 20.0, shape).astype(np.float32)
    array[:, :2] = -1000.0
    return Image(array, spacing=spacing)


def test_planned_windows_count_slices_for_2d_and_the_volume_for_3d():
    flat = WindowSettings(spatial_dims=2, roi_size=(32, 32), label_values=(0, 1))
    cube = WindowSettings(spatial_dims=3, roi_size=(32, 32, 32), label_values=(0, 1))
    assert planned_windows((10, 32, 32), flat) == 10
    assert planned_windows((10, 48, 32), flat) == 10 * 2
    assert planned_windows((64, 32, 32), cube) == 3
    assert planned_bytes((10, 10, 10), 2, cube) == 4 * (2 + 2 + 1) * 1000


def test_a_tiny_file_declaring_a_huge_spacing_is_refused_at_once(tmp_path):
    package = write_tiny_package(tmp_path / "m")  # 2D slice-wise model at 1 mm
    image = _ct(shape=(4, 24, 24), spacing=(400.0, 400.0, 1.0))  # 9.6 m wide: a 9600² grid per slice
    started = time.perf_counter()
    with pytest.raises(WorkTooLargeError, match=r"4 x \d+ x 9600 voxel grid.*1 x 400 x 400 mm.*1 x 1 x 1 mm") as error:
        segment(image, package, device="cpu", limits=WorkLimits(max_memory_gb=1.0))
    assert time.perf_counter() - started < 5.0
    assert "windows" in str(error.value) and "--max-memory-gb" in str(error.value)


def test_the_window_ceiling_applies_on_its_own(tmp_path):
    package = write_tiny_package(tmp_path / "m")
    image = _ct()
    with pytest.raises(WorkTooLargeError, match="beyond the limits of 7 windows"):
        segment(image, package, device="cpu", limits=WorkLimits(max_windows=7))
    result = segment(image, package, device="cpu", limits=WorkLimits(max_windows=8))  # 8 slices × 1 window
    assert result.image.shape == image.shape


def test_the_default_limits_let_an_ordinary_volume_through(tmp_path):
    package = write_tiny_package(tmp_path / "m")
    result = segment(_ct(), package, device="cpu")
    assert result.image.shape == (8, 24, 24)
