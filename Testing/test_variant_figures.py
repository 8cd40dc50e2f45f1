"""variant_figures: the measured line of each variant from the results file, and `unetseg models --details`."""

from __future__ import annotations

import json

import pytest
from tiny_models import write_tiny_package

from unetseg import cli
from unetseg.evaluation import variant_figures
from unetseg.models import catalog


def _results(synthetic: bool = False) -> dict:
    dice = {"membrane": {"mean": 0.8123, "std": 0.0211, "n": 5, "excluded": 0}}
    return {
        "format": variant_figures.FORMAT, "synthetic": synthetic, "generated": "2026-11-26 02:10 UTC",
        "settings": {"isbi": {"title": "ISBI 2012 EM membranes (2D)", "regions": {"membrane": [1]},
                              "summary": {"unet": {"parameters": 1_948_146, "dice": dice}},
                              "provenance": {"generated": "2026-11-25 23:50 UTC", "options": {"budget_min": 3.0},
                                             "hardware": {"gpu": "NVIDIA H100 80GB HBM3"}}}},
    }


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(_results()))
    return path


def test_summary_names_setting_dice_budget_and_size(results_file):
    line = variant_figures.variant_summary("unet", results_file)
    assert line.startswith("unet measured: ISBI 2012 EM membranes (2D): membrane Dice 0.81 ± 0.02 (n=5, 1.9 M "
                           "parameters; 3 min of training on NVIDIA H100 80GB HBM3, 2026-11-25)")


def test_no_summary_for_unmeasured_variants_missing_or_synthetic_results(tmp_path, results_file):
    assert variant_figures.variant_summary("vnet", results_file) is None
    assert variant_figures.variant_summary("unet", tmp_path / "absent.json") is None
    synthetic = tmp_path / "synthetic.json"
    synthetic.write_text(json.dumps(_results(synthetic=True)))
    assert variant_figures.variant_summary("unet", synthetic) is None
    assert variant_figures.figures_listing(["vnet"], results_file) == ""


def test_models_details_shows_the_measured_figures(tmp_path, results_file, monkeypatch, capsys):
    write_tiny_package(tmp_path / "user" / "tiny-ct")  # a unet
    monkeypatch.setenv(catalog.MODELS_DIR_ENV, str(tmp_path / "user"))
    monkeypatch.setattr(catalog, "bundled_models_dir", lambda: tmp_path / "bundled")
    monkeypatch.setattr(variant_figures, "SHIPPED", results_file)
    assert cli.main(["models", "--details"]) == 0
    assert "unet measured: ISBI 2012 EM membranes" in capsys.readouterr().out
    assert cli.main(["models"]) == 0
    assert "measured" not in capsys.readouterr().out
