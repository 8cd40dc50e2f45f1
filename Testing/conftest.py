"""Shared pytest fixtures: a headless Slicer scene (slicer-core), the shared data folder, phantoms."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from unetseg import phantoms

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _register_module_logic(slicer, app_logic, scene) -> types.SimpleNamespace:
    """Create the Colors, Volumes and Segmentations logic as Slicer's start-up does; return `slicer.modules`."""
    color_logic = app_logic.GetColorLogic() or slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLScene(scene)
    if hasattr(color_logic, "AddDefaultColorNodes") and scene.GetFirstNodeByClass("vtkMRMLColorTableNode") is None:
        color_logic.AddDefaultColorNodes()
    app_logic.SetModuleLogic("Colors", color_logic)

    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(scene)
    volumes_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Volumes", volumes_logic)

    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    segmentations_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations_logic)

    def module(logic):
        return types.SimpleNamespace(logic=lambda: logic)

    return types.SimpleNamespace(
        colors=module(color_logic), volumes=module(volumes_logic), segmentations=module(segmentations_logic)
    )


@pytest.fixture
def mrml_scene(monkeypatch):
    """A real `vtkMRMLScene` with Slicer's module logic registered and the `slicer.*` globals Slicer provides.

    Skipped only when slicer-core is not importable (never in CI, which installs it).
    """
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    modules = _register_module_logic(slicer, app_logic, scene)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(slicer, "app_logic", app_logic, raising=False)
    yield scene
    scene.Clear(1)


@pytest.fixture
def shared_data() -> Path:
    """The project's shared real data folder; tests using it skip where it is absent (user clones)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def ct_case():
    """A small CT phantom (oblique, flipped, anisotropic) and its label map."""
    return phantoms.ct_phantom()


@pytest.fixture
def mri_case():
    """A small two-sequence MRI phantom (list of images) and its label map."""
    return phantoms.mri_phantom()


@pytest.fixture
def xray_case():
    """A 2D X-ray-like phantom (one slice) and its label map."""
    return phantoms.xray_phantom()
