"""How a model reads to people (`unetseg.models.card`): names, not ids; its own measured figures in words;
the demonstration note on the bundled models; never a raw dict, never a variant's figures from other data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_models import tiny_manifest

from unetseg.models import card
from unetseg.models.catalog import Catalog
from unetseg.models.package import ModelPackage

MODELS_DIR = Path(__file__).resolve().parents[1] / "UNetSegmentation" / "Resources" / "Models"
BUNDLED = Catalog(MODELS_DIR, MODELS_DIR / "no-user-models").models() if MODELS_DIR.is_dir() else []
needs_models = pytest.mark.skipif(not BUNDLED, reason="no bundled model")


def _package(**overrides) -> ModelPackage:
    return ModelPackage(Path("/nowhere"), tiny_manifest(**overrides))


@needs_models
@pytest.mark.parametrize("package", BUNDLED, ids=lambda p: p.name)
def test_bundled_models_read_as_names_with_modality_region_and_variant(package):
    heading = card.heading(package)
    assert package.name not in heading and heading.startswith(package.manifest["title"])
    assert package.manifest["body_region"] in heading
    assert any(word in heading for word in ("CT", "MRI", "X-ray"))
    assert any(word in heading for word in ("U-Net", "nnU-Net", "V-Net"))


@needs_models
@pytest.mark.parametrize("package", BUNDLED, ids=lambda p: p.name)
def test_info_line_states_the_measured_figure_and_the_demonstration(package):
    line = card.info_line(package)
    metrics = package.provenance["metrics"]
    held = [entry for _, entry in card.heldout_figures(metrics)]
    for entry in held or [metrics["robustness"]]:
        assert f"{entry['mean_dice']:.2f}" in line
    assert ("Held-out mean Dice" if held else "Not measured on held-out data") in line
    subjects = package.provenance["subjects"]
    assert f"Demonstration model trained on {({1: 'one', 2: 'two'})[subjects]} subject" in line
    assert "not for clinical use" in line


@needs_models
@pytest.mark.parametrize("package", BUNDLED, ids=lambda p: p.name)
def test_tooltip_is_readable_text(package):
    text = card.tooltip(package)
    assert not re.search(r"[{}]|\[\s*'|': ", text), f"raw Python structure in the tooltip:\n{text}"
    assert "training-set Dice only" in text and card.demonstration_note(package) in text
    assert "ISBI" not in text and "BraTS" not in text  # no variant comparison figures from other data


def test_a_model_without_card_fields_reads_by_its_name_and_says_what_it_lacks():
    package = _package(provenance={"training_data": "my scans", "cases": 12})
    assert card.heading(package) == "tiny-ct — CT, U-Net, 2D"
    assert card.measured(package) == "Its card records no Dice."
    assert card.demonstration_note(package) == ""
    assert "Trained on my scans (12 cases)." in card.tooltip(package)


def test_the_trainers_own_validation_figure_is_stated_with_what_it_was_measured_on():
    metrics = {"evaluated_on": "training-set Dice only; not a measure of generalisation", "dice_mean": 0.8123}
    package = _package(provenance={"metrics": metrics, "cases": 1})
    assert card.measured(package) == (
        "Validation mean Dice 0.81 (training-set Dice only; not a measure of generalisation)."
    )


def test_leave_one_out_figures_read_as_held_out_figures():
    entry = {"dice": {"spinal cord": 0.8}, "mean_dice": 0.8, "model": "m-leave-out-T2w",
             "description": "axial slabs of the T2w volume. Group T2w is left out entirely"}
    other = {**entry, "dice": {"spinal cord": 0.4}, "mean_dice": 0.4, "description": "T1w slabs"}
    training = {"dice": {"spinal cord": 0.97}, "mean_dice": 0.97, "description": "training-set Dice only"}
    package = _package(provenance={"metrics": {"training": training, f"{card.LEAVE_OUT_KIND}T2w": entry,
                                               f"{card.LEAVE_OUT_KIND}T1w": other}})
    assert card.measured(package) == ("Held-out mean Dice 0.40 (T1w slabs); 0.80 (axial slabs of the T2w volume. "
                                      "Group T2w is left out entirely).")
    tooltip = card.tooltip(package)
    assert "Held-out (leave-one-out) Dice: spinal cord 0.80" in tooltip and "Training set Dice" in tooltip


def test_heldout_figure_on_a_sample_is_the_entry_measured_on_that_case_alone():
    one = {"dice": {"spleen": 0.1}, "mean_dice": 0.1, "description": "spleen2",
           "cases": [{"images": ["x/imagesTs/spleen2_0000.nii.gz"], "label": "x/labelsTs/spleen2.nii.gz"}]}
    two = {**one, "cases": [*one["cases"], {"images": [], "label": "x/labelsTs/other.nii.gz"}]}
    package = _package(provenance={"metrics": {"heldout": two, f"{card.LEAVE_OUT_KIND}A": one}})
    assert card.heldout_figure_on(package, "spleen2") == one
    assert card.heldout_figure_on(package, "other") is None
