"""Tests for the dataset readers, the validation report and the preprocessed-case cache."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from unetseg import phantoms
from unetseg.image import Image
from unetseg.training import cache as case_cache
from unetseg.training import dataset_checks, datasets, fingerprint, planning

CT_LABELS = {label.value: label.name for label in phantoms.CT_LABELS}
MRI_LABELS = {label.value: label.name for label in phantoms.MRI_LABELS}


def ct_cases(n: int, shape=(10, 24, 24)):
    return [([image], label) for image, label in (phantoms.ct_phantom(shape=shape, seed=s) for s in range(n))]


def mri_cases(n: int, shape=(8, 20, 16), sequences=("T1", "T2")):
    return [phantoms.mri_phantom(shape=shape, sequences=sequences, seed=s) for s in range(n)]


def test_nnunet_folder_round_trip(tmp_path):
    cases = ct_cases(2)
    datasets.write_nnunet_dataset(tmp_path / "ds", cases, ["CT"], CT_LABELS, names=["a", "b"])
    ds = datasets.load_dataset(tmp_path / "ds")
    assert [c.name for c in ds.cases] == ["a", "b"]
    assert ds.channel_names == ["CT"] and ds.modality == "CT"
    assert ds.labels == {0: "background", **CT_LABELS}
    images, label = datasets.read_case(ds.cases[1])
    assert images[0].same_grid(cases[1][0][0]) and np.allclose(images[0].array, cases[1][0][0].array)
    assert np.array_equal(label.array, cases[1][1].array)
    assert dataset_checks.validate_dataset(ds).ok
    with pytest.raises(ValueError, match="already holds"):
        datasets.write_nnunet_dataset(tmp_path / "ds", cases, ["CT"], CT_LABELS)


def test_msd_folder_splits_4d_images_into_channels(tmp_path):
    images, label = mri_cases(1, sequences=("T1", "T2", "FLAIR"))[0]
    root = tmp_path / "Task01_Brain"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    sitk.WriteImage(sitk.JoinSeries([im.to_sitk() for im in images]), str(root / "imagesTr" / "brain_001.nii.gz"))
    sitk.WriteImage(label.to_sitk(), str(root / "labelsTr" / "brain_001.nii.gz"))
    doc = {"name": "Brain", "modality": {"0": "T1", "1": "T2", "2": "FLAIR"},
           "labels": {"0": "background", "1": "lesion", "2": "ventricle"}, "numTraining": 1,
           "training": [{"image": "./imagesTr/brain_001.nii.gz", "label": "./labelsTr/brain_001.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(doc))
    ds = datasets.load_dataset(root)
    assert ds.channel_names == ["T1", "T2", "FLAIR"] and ds.modality == "MR"
    assert ds.labels == {0: "background", 1: "lesion", 2: "ventricle"} and ds.cases[0].name == "brain_001"
    channels, read_label = datasets.read_case(ds.cases[0])
    assert len(channels) == 3
    for got, want in zip(channels, images, strict=True):
        assert np.allclose(got.array, want.array) and got.same_grid(read_label)
    assert dataset_checks.validate_dataset(ds).ok


def _write_files(folder, cases):
    """Write each case's sequences and label as NRRD files; return rows of relative paths."""
    folder.mkdir()
    rows = []
    for i, (images, label) in enumerate(cases):
        paths = []
        for name, image in zip(("t1", "t2"), images, strict=True):
            sitk.WriteImage(image.to_sitk(), str(folder / f"c{i}_{name}.nrrd"))
            paths.append(f"{folder.name}/c{i}_{name}.nrrd")
        sitk.WriteImage(label.to_sitk(), str(folder / f"c{i}_label.nrrd"))
        rows.append((f"case{i}", paths, f"{folder.name}/c{i}_label.nrrd"))
    return rows


def test_json_and_csv_lists(tmp_path):
    rows = _write_files(tmp_path / "files", mri_cases(2))
    plain = [{"images": paths, "label": label} for _, paths, label in rows]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    ds = datasets.load_dataset(tmp_path / "plain.json")
    assert ds.channel_names == ["channel_0", "channel_1"] and ds.labels == {0: "background", 1: "label_1", 2: "label_2"}
    assert ds.cases[0].image_paths[1] == tmp_path / "files" / "c0_t2.nrrd"

    described = {"channel_names": ["T1", "T2"], "labels": {"1": "lesion", "2": "ventricle"}, "modality": "MR",
                 "cases": [{"name": n, "images": p, "label": lab} for n, p, lab in rows]}
    (tmp_path / "described.json").write_text(json.dumps(described))
    ds_json = datasets.load_dataset(tmp_path / "described.json")
    assert ds_json.labels == {0: "background", **MRI_LABELS} and [c.name for c in ds_json.cases] == ["case0", "case1"]

    with (tmp_path / "list.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "image_T1", "image_T2", "label"])
        writer.writerows([n, *p, lab] for n, p, lab in rows)
    ds_csv = datasets.load_dataset(tmp_path / "list.csv", labels=MRI_LABELS)
    assert ds_csv.channel_names == ["T1", "T2"] and ds_csv.modality == "MR"
    assert ds_csv.cases == ds_json.cases and ds_csv.labels == ds_json.labels
    for ds_ in (ds, ds_json, ds_csv):
        assert dataset_checks.validate_dataset(ds_).ok


def test_unusable_dataset_descriptions_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no dataset\.json"):
        datasets.load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T2"}, "labels": {"background": 0, "whole": [1, 2]}, "file_ending": ".nii.gz"}))
    with pytest.raises(ValueError, match="region"):
        datasets.load_dataset(tmp_path)


def test_validation_report_lists_every_injected_problem(tmp_path):
    names = ["good", "grid", "undeclared", "missing", "empty", "unreadable"]
    cases = []
    for name, (images, label) in zip(names, mri_cases(len(names)), strict=True):
        if name == "grid":
            label = Image(label.array, label.spacing, tuple(o + 4.0 for o in label.origin), label.direction)
        elif name == "undeclared":
            label = label.with_array(np.where(label.array == 2, 7, label.array).astype(np.uint8))
        elif name == "empty":
            label = label.with_array(np.zeros_like(label.array))
        cases.append((images, label))
    ds = datasets.write_nnunet_dataset(tmp_path / "bad", cases, ["T1", "T2"], MRI_LABELS, names=names)
    (tmp_path / "bad" / "imagesTr" / "missing_0001.nii.gz").unlink()
    (tmp_path / "bad" / "imagesTr" / "unreadable_0000.nii.gz").write_bytes(b"not an image at all")

    report = dataset_checks.validate_dataset(ds)
    found = {(p.case, p.kind) for p in report.problems}
    assert found == {("grid", "grid_mismatch"), ("undeclared", "undeclared_label"),
                     ("missing", "missing_sequence"), ("empty", "empty_label"), ("unreadable", "unreadable")}
    assert not report.ok
    text = str(report)
    assert "5 problem(s)" in text and all(f"case {n}" in text for n in names[1:]) and "[7]" in text
    with pytest.raises(dataset_checks.DatasetError) as err:
        dataset_checks.ensure_valid(ds)
    assert isinstance(err.value, ValueError) and err.value.report.problems == report.problems
    relaxed = dataset_checks.validate_dataset(ds, allow_empty_labels=True)
    assert ("empty", "empty_label") not in {(p.case, p.kind) for p in relaxed.problems}


@pytest.fixture
def ct_dataset(tmp_path):
    return datasets.write_nnunet_dataset(tmp_path / "ct", ct_cases(2), ["CT"], CT_LABELS)


def _plan(dataset, spacing=None) -> planning.Plan:
    plan = planning.plan_experiment(fingerprint.compute_fingerprint(dataset, max_foreground_samples=10_000))
    return dataclasses.replace(plan, target_spacing=spacing) if spacing else plan


def test_preprocessed_cases_are_cached_and_reused(ct_dataset, tmp_path, monkeypatch):
    plan = _plan(ct_dataset, spacing=(2.0, 2.0, 3.0))
    calls = []
    real = datasets.load_cropped_case
    monkeypatch.setattr(case_cache, "load_cropped_case", lambda *a: calls.append(a[0].name) or real(*a))
    cache = tmp_path / "cache"
    first = case_cache.preprocess_dataset(ct_dataset, plan, cache)
    assert calls == ["case_000", "case_001"]
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    assert len(stamps) == 4
    second = case_cache.preprocess_dataset(ct_dataset, plan, cache)
    assert calls == ["case_000", "case_001"], "the second run reads no image"
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamps
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    label_file = ct_dataset.cases[1].label_path
    os.utime(label_file, ns=(label_file.stat().st_atime_ns, label_file.stat().st_mtime_ns + 10**9))
    case_cache.preprocess_dataset(ct_dataset, plan, cache)
    assert calls == ["case_000", "case_001", "case_001"], "an edited file re-runs only its case"


def test_preprocessed_case_is_normalised_resampled_and_indexed(tmp_path):
    (image,), label = ct_cases(1)[0]
    sparse = np.where(label.array == 3, 7, label.array).astype(np.uint8)  # lung is value 7: not consecutive
    labels = {**{v: n for v, n in CT_LABELS.items() if v != 3}, 7: "lung"}
    ds = datasets.write_nnunet_dataset(tmp_path / "ct", [([image], label.with_array(sparse))], ["CT"], labels)
    plan = _plan(ds, spacing=(3.0, 3.0, 3.0))
    case = case_cache.preprocess_dataset(ds, plan, tmp_path / "cache")[0]
    assert case.image.shape == (1, 10, 12, 12) and case.image.dtype == np.float32
    assert case.label.shape == (10, 12, 12) and case.spacing == (3.0, 3.0, 3.0)
    assert plan.label_values == (0, 1, 2, 4, 7) and case.label.max() == 4
    assert 4 in case.label, "value 7 becomes class index 4"
    norm = plan.normalization[0]
    assert case.image.max() <= (norm["clip"][1] - norm["mean"]) / norm["std"] + 1e-4
    assert set(case.class_locations) == set(np.unique(case.label).tolist()) - {0}
    for c, coords in case.class_locations.items():
        assert np.all(case.label[tuple(coords.T)] == c)


def test_2d_plan_keeps_single_slices(tmp_path):
    xr = [phantoms.xray_phantom(shape=(40, 36), seed=s) for s in range(2)]
    labels = {label.value: label.name for label in phantoms.XRAY_LABELS}
    ds = datasets.write_nnunet_dataset(tmp_path / "xr", [([im], lab) for im, lab in xr], ["XR"], labels,
                                       file_ending=".nrrd")
    plan = _plan(ds)
    assert plan.spatial_dims == 2 and ds.modality == "XR"
    case = case_cache.preprocess_dataset(ds, plan, tmp_path / "cache")[0]
    assert case.image.shape == (1, 1, 40, 36) and case.spacing == (0.7, 0.7, 1.0)
