"""Scene helpers and fixtures for the Slicer-side tests, on slicer-core's real MRML classes.

The predictor is replaced by `fake_unetseg_child.py` (same JSON-lines protocol and file contract, no network)
so that geometry, naming, replacement, cancel and failure are checked exactly and fast. Test modules import
the fixtures `scene` and `fake` from here (as `scene_fixture`, `fake_fixture`).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from unetseg import phantoms
from unetseg.image import Image, Label
from unetseg.jobs.process import PACKAGE_ROOT, BackgroundProcess

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
import vtk  # noqa: E402  (slicer-core's vtk)

from UNetSegmentationLib.logic import UNetSegmentationLogic  # noqa: E402  (needs slicer)

TESTING_DIR = Path(__file__).resolve().parent
CT_SHAPE = (12, 32, 28)  # the smallest CT phantom in which every label is present
TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^78961009^Spleen~^^~Anatomic codes - DICOM master list~^^~^^"
)
CT_LABELS = [
    Label(lb.value, lb.name, lb.color, TERMINOLOGY if lb.name == "organ" else None) for lb in phantoms.CT_LABELS
]


# --- scene helpers ---------------------------------------------------------------------------------------


def add_volume(image: Image, name: str):
    """A scalar volume node with the image's voxels and geometry (LPS image → RAS node)."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, image.array.astype(np.float32))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.index_to_physical()))
    return node


def put_in_study(node):
    """Give the node a subject-hierarchy item under patient/study (Slicer's GUI plugins do this on load)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, node)
    return sh, study


def scene_state() -> dict:
    """Everything a run could leave behind: node IDs, subject-hierarchy items, segments per segmentation."""
    scene = slicer.mrmlScene
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    segments = {n.GetID(): list(n.GetSegmentation().GetSegmentIDs()) for n in nodes if n.IsA("vtkMRMLSegmentationNode")}
    return {"nodes": sorted(n.GetID() for n in nodes), "sh_items": items.GetNumberOfIds(), "segments": segments}


def segment_mask(segmentation_node, name: str, volume) -> np.ndarray:
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name!r}"
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume) > 0


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetSegment(i).GetName() for i in segmentation.GetSegmentIDs()]


# --- fixtures --------------------------------------------------------------------------------------------


class StubCatalog:
    """The catalog interface the logic uses (names/get/import_model), over in-memory packages."""

    def __init__(self, packages: dict):
        self.packages = packages

    def names(self, modality=None, variant=None):
        return [n for n, p in self.packages.items() if modality in (None, p.modality) and variant in (None, p.variant)]

    def get(self, name):
        if name not in self.packages:
            raise ValueError(f"No model named {name!r}.")
        return self.packages[name]

    def import_model(self, path):
        manifest = json.loads((Path(path) / "model.json").read_text(encoding="utf-8"))
        self.packages[manifest["name"]] = SimpleNamespace(name=manifest["name"], modality="CT", variant="unet")
        return manifest["name"]


@pytest.fixture(name="scene")
def scene_fixture(mrml_scene, tmp_path, monkeypatch):
    """The conftest scene, with temporary folders created under tmp_path so leftovers can be checked."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return mrml_scene


@pytest.fixture(name="fake")
def fake_fixture(tmp_path, monkeypatch):
    """Configure the fake predictor: `fake(mode, labels=None)` returns the logic wired to it."""

    def configure(mode: str = "echo", labels: np.ndarray | None = None, input_names=("CT",), label_list=None,
                  warnings: tuple[str, ...] = ()):
        env = {"FAKE_MODE": mode, "FAKE_RECORD": str(tmp_path / "record.json"), "FAKE_WARNINGS": "|".join(warnings)}
        if labels is not None:
            np.save(tmp_path / "labels.npy", labels)
            env["FAKE_LABELS"] = str(tmp_path / "labels.npy")
        factory = functools.partial(
            BackgroundProcess, module="fake_unetseg_child", pythonpath=[str(TESTING_DIR), str(PACKAGE_ROOT)], env=env
        )
        package = SimpleNamespace(
            name="fake-model", labels=label_list or CT_LABELS, input_names=list(input_names), modality="CT",
            variant="unet", path=None,
        )
        return UNetSegmentationLogic(catalog=StubCatalog({"fake-model": package}), processFactory=factory)

    return configure


def work_leftovers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "work").iterdir())
