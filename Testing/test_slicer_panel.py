"""The panel's decisions, headless: the Apply row (backend, missing packages), the modality check before a run,
the backend passed to the child, and Show 3D on the last result (logic on slicer-core's real MRML)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from packaging.requirements import Requirement
from slicer_scene import (
    CT_LABELS,
    CT_SHAPE,
    StubCatalog,
    add_volume,
    fake_fixture,  # noqa: F401  (fixture `fake`)
    put_in_study,
    scene_fixture,  # noqa: F401  (fixture `scene`)
    slicer,
)

from unetseg import phantoms
from unetseg.image import Image
from UNetSegmentationLib import dependencies
from UNetSegmentationLib.apply_state import applyState
from UNetSegmentationLib.dependencies import ONNX, ONNX_REQUIREMENT, TORCH, TORCH_REQUIREMENT, DependencyInstaller
from UNetSegmentationLib.logic import UNetSegmentationLogic

# --- the Apply row ----------------------------------------------------------------------------------------


def test_apply_waits_for_a_model_and_an_input():
    state = applyState(False, modelChosen=True, inputsChosen=False, backend=TORCH, missing=[])
    assert not state.enabled and "input" in state.toolTip


def test_missing_packages_never_disable_apply_and_are_named_beside_it():
    state = applyState(False, True, True, ONNX, [ONNX_REQUIREMENT])
    assert state.enabled and state.text == "Apply" and state.installVisible
    assert ONNX_REQUIREMENT in state.status and "ONNX Runtime" in state.status
    assert ONNX_REQUIREMENT in state.toolTip


def test_ready_run_says_how_it_runs_and_hides_install():
    state = applyState(False, True, True, ONNX, [])
    assert state.enabled and not state.installVisible and "ONNX Runtime" in state.status
    assert "PyTorch" in applyState(False, True, True, TORCH, []).status


def test_a_running_segmentation_turns_apply_into_cancel():
    state = applyState(True, True, True, TORCH, ["monai>=1.5"])
    assert (state.enabled, state.text, state.installVisible) == (True, "Cancel", False)


# --- which backend a model runs with, and what it still needs ----------------------------------------------


def _installer(tmp_path, monkeypatch, installed: set[str], torch_extension: bool = True) -> DependencyInstaller:
    monkeypatch.setattr(dependencies, "isSatisfied", lambda r: Requirement(r).name in installed)
    path = tmp_path / "requirements.txt"
    path.write_text("monai>=1.5\nsafetensors>=0.4\n", encoding="utf-8")
    return DependencyInstaller(path, torchExtensionAvailable=lambda: torch_extension)


def _package(tmp_path, onnx: bool, modality: str = "CT"):
    folder = tmp_path / f"model-{modality}-{onnx}"
    folder.mkdir()
    if onnx:
        (folder / "model.onnx").write_bytes(b"onnx")
    manifest = {"name": f"m-{modality}", "title": "Spinal cord (T2)" if modality == "MR" else "Spleen"}
    return SimpleNamespace(name=manifest["name"], modality=modality, manifest=manifest, onnx_path=folder / "model.onnx")


def test_stock_slicer_runs_a_model_with_an_onnx_export_through_onnx_runtime(tmp_path, monkeypatch):
    logic = UNetSegmentationLogic(catalog=StubCatalog({}), dependencies=_installer(tmp_path, monkeypatch, set()))
    assert logic.segmentationBackend(_package(tmp_path, onnx=True)) == (ONNX, [ONNX_REQUIREMENT])


def test_onnx_runtime_installed_is_all_an_exported_model_needs(tmp_path, monkeypatch):
    installer = _installer(tmp_path, monkeypatch, {"onnxruntime"})
    logic = UNetSegmentationLogic(catalog=StubCatalog({}), dependencies=installer)
    backend, missing = logic.segmentationBackend(_package(tmp_path, onnx=True))
    assert (backend, missing) == (ONNX, [])
    assert applyState(False, True, True, backend, missing).enabled


def test_full_install_runs_torch_and_a_model_without_export_needs_it(tmp_path, monkeypatch):
    full = _installer(tmp_path, monkeypatch, {"torch", "monai", "safetensors"})
    logic = UNetSegmentationLogic(catalog=StubCatalog({}), dependencies=full)
    assert logic.segmentationBackend(_package(tmp_path, onnx=True)) == (TORCH, [])
    bare = _installer(tmp_path, monkeypatch, {"onnxruntime"})
    logic = UNetSegmentationLogic(catalog=StubCatalog({}), dependencies=bare)
    backend, missing = logic.segmentationBackend(_package(tmp_path, onnx=False))
    assert backend == TORCH and missing == [TORCH_REQUIREMENT, "monai>=1.5", "safetensors>=0.4"]


def test_a_blocked_package_counts_as_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "packaging_blocked_xyz", None)
    assert not dependencies.isSatisfied("packaging_blocked_xyz")
    monkeypatch.setitem(__import__("sys").modules, "pytest", None)  # installed, but blocked like a stock Slicer
    assert not dependencies.isSatisfied("pytest>=1")


# --- the modality check before a run ----------------------------------------------------------------------


def test_model_of_another_modality_is_named_before_running(scene, tmp_path):
    ct = add_volume(phantoms.ct_phantom(shape=(6, 12, 10))[0], "Chest CT")
    logic = UNetSegmentationLogic(catalog=StubCatalog({}))
    message = logic.modalityMismatch(ct, _package(tmp_path, onnx=False, modality="MR"))
    assert "'Chest CT' looks like CT" in message and "Spinal cord (T2)" in message and "MRI" in message
    assert logic.modalityMismatch(ct, _package(tmp_path, onnx=True, modality="CT")) == ""


def test_dicom_modality_tag_decides_the_check(scene, tmp_path):
    volume = add_volume(phantoms.ct_phantom(shape=(6, 12, 10))[0], "series")
    sh, _ = put_in_study(volume)
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    sh.SetItemAttribute(sh.GetItemByDataNode(volume), attribute, "MR")
    logic = UNetSegmentationLogic(catalog=StubCatalog({}))
    assert logic.modalityMismatch(volume, _package(tmp_path, onnx=False, modality="MR")) == ""
    assert "DICOM Modality is MR" in logic.modalityMismatch(volume, _package(tmp_path, onnx=False, modality="CT"))


def test_unknown_modality_is_no_mismatch(scene, tmp_path):
    mixed = add_volume(Image(np.linspace(-5.0, 5.0, 6 * 12 * 10).reshape(6, 12, 10), (1.0, 1.0, 1.0)), "z-scored")
    logic = UNetSegmentationLogic(catalog=StubCatalog({}))
    assert logic.guessModality(mixed).modality is None
    assert logic.modalityMismatch(mixed, _package(tmp_path, onnx=False, modality="MR")) == ""


# --- the run itself ---------------------------------------------------------------------------------------


def test_backend_reaches_the_child_and_is_checked(scene, fake, tmp_path):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    logic = fake("echo", labels.array)
    logic.segment(volume, "fake-model", backend=ONNX)
    argv = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["argv"]
    assert argv[argv.index("--backend") + 1] == "onnx"
    logic.segment(volume, "fake-model")
    assert "--backend" not in json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["argv"]
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        logic.segment(volume, "fake-model", backend="tensorrt")


def test_show_in_3d_toggles_the_results_surfaces(scene, fake):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    logic = fake("echo", labels.array)
    seg = logic.segment(volume, "fake-model")
    assert not seg.GetSegmentation().ContainsRepresentation("Closed surface")
    logic.showIn3D(seg, True)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    logic.showIn3D(seg, False)
    assert not seg.GetSegmentation().ContainsRepresentation("Closed surface")
    assert [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(len(CT_LABELS))] == [
        label.name for label in CT_LABELS
    ]
