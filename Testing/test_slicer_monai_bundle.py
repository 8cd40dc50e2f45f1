"""A MONAI bundle in Slicer, headless on slicer-core: the logic imports the bundle folder through the background
process, lists it under its modality with its labels in the tooltip, and ``logic.segment(volume, NAME)`` gives
the labels MONAI gives (MONAI running the bundle's own config, which test_monai_bundle_import shows equals
``python -m monai.bundle run``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from slicer_scene import (
    add_volume,
    scene_fixture,  # noqa: F401  (fixture `scene`)
    segment_mask,
    segment_names,
)
from test_monai_bundle_import import _monai_reference
from test_monai_bundle_parity import FIXTURE, ROTATED, dice, write_ct_phantom

from unetseg.image import Image
from unetseg.models import catalog as catalog_module
from unetseg.models.card import tooltip
from UNetSegmentationLib.logic import UNetSegmentationLogic


@pytest.mark.slow
def test_a_monai_bundle_imports_lists_and_segments_in_slicer(scene, tmp_path, monkeypatch):
    monkeypatch.setenv(catalog_module.MODELS_DIR_ENV, str(tmp_path / "user"))
    bundle = Path(shutil.copytree(FIXTURE, tmp_path / "tiny_trained_bundle"))
    image_path = write_ct_phantom(tmp_path / "ct.nii.gz", (52, 44, 28), (0.8, 0.85, 2.2), 11, ROTATED, 0.1)
    reference = _monai_reference(bundle, image_path)[0].transpose(2, 1, 0)  # (z, y, x), as the volume's array

    logic = UNetSegmentationLogic()
    name = logic.importModel(bundle)
    assert name == "tiny_trained_bundle" and name in logic.availableModels(modality="CT")
    package = logic.modelInfo(name)
    assert package.variant == "monai" and all(lab.name in tooltip(package) for lab in package.labels)

    volume = add_volume(Image.from_sitk(sitk.ReadImage(str(image_path))), "CT")
    seg = logic.segment(volume, name, device="cpu")
    assert segment_names(seg) == ["liver", "spleen"]
    for value, label in ((1, "liver"), (2, "spleen")):
        assert dice(segment_mask(seg, label, volume), reference == value, True) >= 0.99
