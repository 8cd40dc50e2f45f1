"""`unetseg evaluate`: per-case, per-label metrics of a prediction folder against a reference folder."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk

from unetseg.cli import main
from unetseg.evaluation.metrics import compute_metrics
from unetseg.evaluation.report import case_name, evaluate_folders
from unetseg.image import LabelImage
from unetseg.io import write_label_image
from unetseg.jobs.runner import EXIT_FAILED
from unetseg.phantoms import MRI_LABELS, mri_phantom


def _write(label, path, labels=()):
    write_label_image(path, LabelImage(label, list(labels)))


@pytest.fixture
def folders(tmp_path):
    """Two MRI-phantom references (one as .seg.nrrd with names) and predictions in another format:
    case_a shifted by one voxel, case_b perfect except a lost ventricle, case_c without a prediction."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    refs = {}
    for seed, case in enumerate(("case_a", "case_b", "case_c")):
        _, label = mri_phantom(shape=(20, 32, 28), seed=seed)
        refs[case] = label
        ext = ".seg.nrrd" if case == "case_a" else ".nii.gz"
        _write(label, ref_dir / f"{case}{ext}", MRI_LABELS)
    _write(refs["case_a"].with_array(np.roll(refs["case_a"].array, 1, axis=2)), pred_dir / "case_a.nrrd")
    _write(refs["case_b"].with_array(np.where(refs["case_b"].array == 2, 0, refs["case_b"].array)),
           pred_dir / "case_b.nii.gz")
    return pred_dir, ref_dir, refs


def test_every_row_comes_from_compute_metrics(folders, tmp_path):
    pred_dir, ref_dir, refs = folders
    summary = evaluate_folders(pred_dir, ref_dir, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {(r["case"], r["label"]) for r in rows} == {(c, v) for c in refs for v in ("1", "2")}
    assert {r["name"] for r in rows} == {"lesion", "ventricle"}  # names from the .seg.nrrd reference
    row = next(r for r in rows if r["case"] == "case_a" and r["label"] == "1")
    ref = refs["case_a"].array
    expected = compute_metrics(np.roll(ref, 1, axis=2), ref, [1], refs["case_a"].spacing[::-1])[1]
    for key in ("dice", "iou", "hd95", "assd"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-6)
    # A lost class is Dice 0 with infinite distances; a missing prediction is scored as empty and listed.
    lost = next(r for r in rows if r["case"] == "case_b" and r["label"] == "2")
    assert float(lost["dice"]) == 0.0 and math.isinf(float(lost["hd95"])) and lost["flag"] == "pred_empty"
    assert summary["missing_predictions"] == ["case_c"]
    assert all(r["prediction"] == "missing" for r in rows if r["case"] == "case_c")
    ventricle = summary["labels"][2]
    assert ventricle["cases"] == 3 and ventricle["infinite_distances"] == 2
    dices = [float(r["dice"]) for r in rows if r["label"] == "2"]
    assert ventricle["dice_mean"] == pytest.approx(np.mean(dices))
    assert summary["mean_dice"] == pytest.approx(np.mean([e["dice_mean"] for e in summary["labels"].values()]))


def test_cli_prints_the_summary(folders, capsys):
    pred_dir, ref_dir, _ = folders
    assert main(["evaluate", str(pred_dir), str(ref_dir)]) == 0
    out = capsys.readouterr().out
    assert "lesion" in out and "ventricle" in out and "case_c" in out
    assert (pred_dir / "metrics.csv").is_file()


def test_prediction_on_another_grid_is_a_clear_error(folders, capsys):
    pred_dir, ref_dir, refs = folders
    label = refs["case_b"]
    moved = sitk.GetImageFromArray(label.array)
    moved.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(moved, str(pred_dir / "case_b.nii.gz"))
    with pytest.raises(ValueError, match=r"case_b.*not on the reference grid"):
        evaluate_folders(pred_dir, ref_dir)
    assert main(["evaluate", str(pred_dir), str(ref_dir)]) == EXIT_FAILED
    assert "reference grid" in capsys.readouterr().err


def test_case_names_ignore_the_image_extension(tmp_path):
    assert case_name(tmp_path / "x_01.seg.nrrd") == "x_01"
    assert case_name(tmp_path / "x_01.nii.gz") == "x_01"
    assert case_name(tmp_path / "notes.txt") is None
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no label maps"):
        evaluate_folders(tmp_path / "p", tmp_path / "p")
