"""Modality auto-detection: DICOM tag first, then single-slice shape and intensity range."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg import phantoms
from unetseg.modality import guess_modality, modality_from_dicom
from unetseg.vocabulary import MODALITY_TITLES


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("CT", "CT"), ("MR", "MR"), ("DX", "XR"), ("CR", "XR"), (" mg ", "XR"), ("PT", None), ("", None), (None, None)],
)
def test_dicom_modality_maps_to_catalog_codes(tag, expected):
    assert modality_from_dicom(tag) == expected


def test_phantoms_are_recognised_from_their_voxels():
    ct, _ = phantoms.ct_phantom(shape=(12, 32, 32))
    mr, _ = phantoms.mri_phantom(shape=(12, 32, 28))
    xr, _ = phantoms.xray_phantom(shape=(40, 36))
    assert guess_modality(ct.array).modality == "CT"
    assert guess_modality(mr[0].array).modality == "MR"
    assert guess_modality(xr.array).modality == "XR"
    assert "single-slice" in guess_modality(xr.array).reason


def test_dicom_tag_wins_over_the_voxels():
    ct, _ = phantoms.ct_phantom(shape=(12, 32, 32))
    guess = guess_modality(ct.array, dicom_modality="MR")
    assert guess.modality == "MR"
    assert "DICOM" in guess.reason
    assert guess.title == MODALITY_TITLES["MR"] == "MRI"


def test_unsupported_dicom_modality_falls_back_to_voxels_and_says_so():
    ct, _ = phantoms.ct_phantom(shape=(12, 32, 32))
    guess = guess_modality(ct.array, dicom_modality="PT")
    assert guess.modality == "CT"
    assert "PT is not supported" in guess.reason


def test_ct_crop_without_air_is_still_ct():
    rng = np.random.default_rng(0)
    soft_tissue_and_fat = rng.choice([-100.0, 40.0, 150.0], size=(8, 16, 16))
    assert guess_modality(soft_tissue_and_fat).modality == "CT"


def test_z_scored_or_empty_images_are_unknown():
    rng = np.random.default_rng(0)
    z_scored = rng.normal(size=(8, 16, 16))
    assert guess_modality(z_scored).modality is None
    assert guess_modality(np.zeros((0, 4, 4))).modality is None
    assert guess_modality(np.full((4, 4, 4), np.nan)).modality is None
    assert guess_modality(None).title == "unknown"
