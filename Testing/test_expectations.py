"""A model says when an input is far from what it was trained on: modality, spacing, field of view, intensities."""

from __future__ import annotations

import pytest
from tiny_models import write_tiny_package

from unetseg import phantoms
from unetseg.inference.expectations import expectations, input_warnings
from unetseg.inference.predictor import segment
from unetseg.models.manifest import ManifestError


@pytest.fixture
def ct_model(tmp_path):
    return write_tiny_package(tmp_path / "ct")  # 2D slice-wise CT model, 1 mm, 32² patch


def test_a_fitting_input_gets_no_warning(ct_model):
    image, _ = phantoms.ct_phantom(shape=(6, 64, 64), spacing=(1.0, 1.0, 3.0))
    assert input_warnings([image], ct_model) == []


def test_an_mr_input_to_a_ct_model_is_named(ct_model):
    (image, *_), _ = phantoms.mri_phantom(shape=(6, 64, 64), spacing=(1.0, 1.0, 3.0))
    (warning,) = input_warnings([image], ct_model)
    assert "for CT images, but the input looks like MRI" in warning


def test_a_spacing_ten_times_off_is_named_with_the_range(ct_model):
    image, _ = phantoms.ct_phantom(shape=(6, 64, 64), spacing=(10.0, 1.0, 3.0))
    (warning,) = input_warnings([image], ct_model)
    assert "x 10 mm" in warning and "0.25 to 4 mm" not in warning and "0.25, 0.25 to 4, 4 mm" in warning


def test_slice_spacing_does_not_count_for_a_slice_wise_model(ct_model):
    image, _ = phantoms.ct_phantom(shape=(6, 64, 64), spacing=(1.0, 1.0, 30.0))
    assert input_warnings([image], ct_model) == []


def test_a_field_of_view_under_half_a_window_is_named(ct_model):
    image, _ = phantoms.ct_phantom(shape=(6, 12, 64), spacing=(1.0, 1.0, 3.0))  # 12 mm < 16 mm along y
    (warning,) = input_warnings([image], ct_model)
    assert "field of view" in warning and "y 12 mm < 16 mm" in warning


def test_recorded_expectations_take_precedence_and_intensities_are_checked(tmp_path):
    expects = {"modality": "CT", "intensity_range": [[2000.0, 3000.0]],
               "spacing_range": {"min": [0.5, 0.5, 0.5], "max": [2.0, 2.0, 9.0]}, "min_field_of_view_mm": [10, 10]}
    package = write_tiny_package(tmp_path / "m", expects=expects)
    assert expectations(package)["spacing_range"]["max"] == [2.0, 2.0, 9.0]
    image, _ = phantoms.ct_phantom(shape=(6, 64, 64), spacing=(1.0, 1.0, 3.0))
    (warning,) = input_warnings([image], package)
    assert "intensities of input 'CT'" in warning and "2000 to 3000" in warning


def test_the_schema_refuses_a_malformed_expects_section(tmp_path):
    with pytest.raises(ManifestError, match="expects"):
        write_tiny_package(tmp_path / "m", expects={"modality": "PET"})


def test_the_warning_reaches_the_result_messages(ct_model):
    (image, *_), _ = phantoms.mri_phantom(shape=(4, 40, 40), spacing=(1.0, 1.0, 3.0))
    result = segment(image, ct_model, device="cpu")
    assert any("looks like MRI" in message for message in result.messages)
