"""UNetSegmentationLogic on slicer-core's real MRML scene: volume → files → background process → segments.

The predictor is replaced by `fake_unetseg_child.py` (same JSON-lines protocol and file contract, no network)
so that geometry, naming, replacement, cancel and failure are checked exactly and fast.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from unetseg import phantoms
from unetseg.image import Image, Label
from unetseg.jobs.process import PACKAGE_ROOT, BackgroundProcess

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
import vtk  # noqa: E402  (slicer-core's vtk)

from UNetSegmentationLib import logic as slicer_logic  # noqa: E402  (needs slicer)
from UNetSegmentationLib.logic import UNetSegmentationLogic  # noqa: E402

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


@pytest.fixture
def scene(mrml_scene, tmp_path, monkeypatch):
    """The conftest scene, with temporary folders created under tmp_path so leftovers can be checked."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(slicer_logic.tempfile, "tempdir", str(work))
    return mrml_scene


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Configure the fake predictor: `fake(mode, labels=None)` returns the logic wired to it."""

    def configure(mode: str = "echo", labels: np.ndarray | None = None, input_names=("CT",), label_list=None):
        env = {"FAKE_MODE": mode, "FAKE_RECORD": str(tmp_path / "record.json")}
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


# --- segment: geometry, names, subject hierarchy ---------------------------------------------------------


def test_segment_oblique_flipped_anisotropic_volume_matches_predictor_output(scene, fake, tmp_path):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    assert set(np.unique(labels.array)) == {0, 1, 2, 3, 4}
    volume = add_volume(image, "CT phantom")
    sh, study = put_in_study(volume)
    logic = fake("echo", labels.array)

    seg = logic.segment(volume, "fake-model", device="cpu")

    assert segment_names(seg) == [lb.name for lb in CT_LABELS]
    for label in CT_LABELS:
        mask = segment_mask(seg, label.name, volume)
        assert mask.shape == labels.array.shape
        np.testing.assert_array_equal(mask, labels.array == label.value, err_msg=label.name)
    segmentation = seg.GetSegmentation()
    organ = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("organ"))
    assert organ.GetColor() == pytest.approx(CT_LABELS[0].color)
    assert organ.GetTerminology() == TERMINOLOGY
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert work_leftovers(tmp_path) == []
    record = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))
    assert record["argv"][record["argv"].index("--device") + 1] == "cpu"


def test_tta_none_true_false_keep_or_switch_the_models_default(scene, fake, tmp_path):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT phantom")
    logic = fake("echo", labels.array)
    flags = {}
    for tta in (None, True, False):
        logic.segment(volume, "fake-model", device="cpu", tta=tta)
        argv = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["argv"]
        flags[tta] = [a for a in argv if a in ("--tta", "--no-tta")]
    assert flags == {None: [], True: ["--tta"], False: ["--no-tta"]}


def test_single_slice_2d_volume(scene, fake):
    image, labels = phantoms.xray_phantom(shape=(30, 26))
    volume = add_volume(image, "chest X-ray")
    xray_labels = list(phantoms.XRAY_LABELS)
    seg = fake("echo", labels.array, input_names=("X-ray",), label_list=xray_labels).segment(volume, "fake-model")
    for label in xray_labels:
        np.testing.assert_array_equal(segment_mask(seg, label.name, volume), labels.array == label.value)


def test_multi_input_model_gets_sequences_in_order(scene, fake, tmp_path):
    images, labels = phantoms.mri_phantom(shape=(8, 20, 16), sequences=("T1", "T2"))
    t1, t2 = add_volume(images[0], "T1"), add_volume(images[1], "T2")
    logic = fake("echo", labels.array, input_names=("T1", "T2"), label_list=list(phantoms.MRI_LABELS))

    logic.segment([t1, t2], "fake-model")

    means = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["means"]
    assert means == pytest.approx([images[0].array.mean(), images[1].array.mean()], rel=1e-4)
    with pytest.raises(ValueError, match="needs 2 input volume"):
        logic.segment([t1], "fake-model")


def test_inputs_on_different_grids_are_refused_before_running(scene, fake):
    images, _ = phantoms.mri_phantom(shape=(8, 20, 16), sequences=("T1", "T2"))
    t1 = add_volume(images[0], "T1")
    t2 = add_volume(Image(images[1].array, (2.0, 2.0, 2.0)), "T2 other grid")
    before = scene_state()
    with pytest.raises(ValueError, match="not on the voxel grid"):
        fake("echo", input_names=("T1", "T2")).segment([t1, t2], "fake-model")
    assert scene_state() == before


def test_show_in_3d_creates_closed_surface(scene, fake):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    seg = fake("echo", labels.array).segment(volume, "fake-model", showIn3D=True)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")


def test_absent_label_gets_an_empty_segment(scene, fake):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    without_lesion = np.where(labels.array == 2, 1, labels.array).astype(np.uint8)
    seg = fake("echo", without_lesion).segment(volume, "fake-model")
    assert "lesion" in segment_names(seg)
    assert not segment_mask(seg, "lesion", volume).any()


# --- replacing segments in an existing node --------------------------------------------------------------


def test_replacing_segments_keeps_the_users_other_segments(scene, fake):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    logic = fake("echo", labels.array)
    seg = logic.segment(volume, "fake-model")
    notes = np.zeros(labels.array.shape, dtype=np.uint8)
    notes[2:5, 3:9, 4:8] = 1
    notes_id = seg.GetSegmentation().AddEmptySegment("", "my notes", [0.1, 0.9, 0.1])
    slicer.util.updateSegmentBinaryLabelmapFromArray(notes, seg, notes_id, volume)
    assert logic.editedSegments(seg, "fake-model") == []

    organ_id = seg.GetSegmentation().GetSegmentIdBySegmentName("organ")
    edited = segment_mask(seg, "organ", volume).astype(np.uint8)
    edited[:, :, :3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, seg, organ_id, volume)
    assert logic.editedSegments(seg, "fake-model") == ["organ"]
    order = segment_names(seg)

    second = logic.segment(volume, "fake-model", outputSegmentation=seg)

    assert second is seg
    assert segment_names(seg) == order, "replaced segments keep their place, no duplicates"
    np.testing.assert_array_equal(segment_mask(seg, "organ", volume), labels.array == 1)
    np.testing.assert_array_equal(segment_mask(seg, "my notes", volume), notes > 0)
    assert logic.editedSegments(seg, "fake-model") == []


def test_user_made_segment_with_a_model_label_name_counts_as_edited(scene, fake):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    seg.GetSegmentation().AddEmptySegment("", "lesion")
    seg.GetSegmentation().AddEmptySegment("", "unrelated")
    assert fake().editedSegments(seg, "fake-model") == ["lesion"]


# --- failure and cancel leave the scene unchanged --------------------------------------------------------


def test_failed_run_reports_the_childs_error_and_leaves_scene_unchanged(scene, fake, tmp_path):
    image, _ = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    put_in_study(volume)
    before = scene_state()
    with pytest.raises(RuntimeError, match="weights do not fit"):
        fake("fail").segment(volume, "fake-model")
    assert scene_state() == before
    assert work_leftovers(tmp_path) == []


def test_result_on_another_grid_is_not_imported(scene, fake, tmp_path):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    existing = fake("echo", labels.array).segment(volume, "fake-model")
    before = scene_state()
    with pytest.raises(RuntimeError, match="not on the input volume's voxel grid"):
        fake("wrong-grid", labels.array).segment(volume, "fake-model", outputSegmentation=existing)
    assert scene_state() == before
    assert work_leftovers(tmp_path) == []


def test_cancel_kills_the_run_and_leaves_scene_unchanged(scene, fake, tmp_path):
    image, _ = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    put_in_study(volume)
    before = scene_state()
    events = []
    run = fake("sleep").segment(volume, "fake-model", waitForCompletion=False, progressCallback=events.append)
    deadline = time.monotonic() + 30
    while not any(e.get("type") == "progress" for e in events) and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.05)
    assert run.running
    run.cancel()
    assert not run.running and run.cancelled and not run.succeeded
    assert run.process.returncode != 0, "the child was killed, not left to finish"
    assert scene_state() == before
    assert work_leftovers(tmp_path) == []


def test_import_error_rolls_back_a_new_node(scene, fake, monkeypatch):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    before = scene_state()

    def broken_describe(segment, label, model_name):
        raise RuntimeError("terminology could not be set")

    monkeypatch.setattr(slicer_logic, "_describeSegment", broken_describe)
    with pytest.raises(RuntimeError, match="terminology"):
        fake("echo", labels.array).segment(volume, "fake-model")
    assert scene_state() == before


def test_bad_arguments_fail_before_anything_runs(scene, fake, tmp_path):
    volume = add_volume(phantoms.ct_phantom(shape=(6, 12, 10))[0], "CT")
    logic = fake()
    before = scene_state()
    with pytest.raises(ValueError, match="No model named"):
        logic.segment(volume, "no-such-model")
    with pytest.raises(ValueError, match="Unknown device"):
        logic.segment(volume, "fake-model", device="tpu")
    with pytest.raises(ValueError, match="Select an input volume"):
        logic.segment(None, "fake-model")
    assert scene_state() == before
    assert work_leftovers(tmp_path) == []


# --- other logic ---------------------------------------------------------------------------------------


def test_available_models_filter_through_the_catalog(scene, fake):
    logic = fake()
    assert logic.availableModels() == ["fake-model"]
    assert logic.availableModels(modality="CT", variant="unet") == ["fake-model"]
    assert logic.availableModels(modality="MR") == []


def test_guess_modality_reads_the_dicom_series_attribute(scene):
    volume = add_volume(phantoms.ct_phantom(shape=(6, 12, 10))[0], "CT")
    logic = UNetSegmentationLogic(catalog=StubCatalog({}))
    assert logic.guessModality(volume).modality == "CT"
    sh, _ = put_in_study(volume)
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    sh.SetItemAttribute(sh.GetItemByDataNode(volume), attribute, "MR")
    guess = logic.guessModality(volume)
    assert (guess.modality, "DICOM" in guess.reason) == ("MR", True)


def test_parameter_node_is_a_scene_singleton(scene):
    logic = UNetSegmentationLogic(catalog=StubCatalog({}))
    node = logic.getParameterNode()
    assert node is logic.getParameterNode()
    assert node.GetAttribute("ModuleName") == "UNetSegmentation"


def test_rgb_volume_is_segmented_as_luminance(scene, fake, tmp_path):
    image, labels = phantoms.xray_phantom(shape=(20, 18))
    grey = add_volume(image, "grey")
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(rgb, np.repeat(image.array[..., None], 3, axis=-1).astype(np.float32))
    rgb.CopyOrientation(grey)
    xray_labels = list(phantoms.XRAY_LABELS)
    seg = fake("echo", labels.array, input_names=("X-ray",), label_list=xray_labels).segment(rgb, "fake-model")
    mean = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))["means"][0]
    assert mean == pytest.approx(image.array.mean(), rel=1e-4)
    np.testing.assert_array_equal(segment_mask(seg, "left lung", grey), labels.array == 2)


# --- evaluation and training data ----------------------------------------------------------------------


def test_evaluate_fills_a_table_per_shared_segment_name(scene, fake):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    logic = fake("echo", labels.array)
    reference = logic.segment(volume, "fake-model")
    shrunk = np.where((labels.array == 1) & (np.arange(labels.array.shape[2]) < 14), 0, labels.array).astype(np.uint8)
    prediction = fake("echo", shrunk).segment(volume, "fake-model")

    table = logic.evaluate(prediction, reference)

    names = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())]
    assert names == [lb.name for lb in CT_LABELS]
    dice_column = [table.GetTable().GetColumnByName("dice").GetValue(r) for r in range(table.GetNumberOfRows())]
    expected_organ = 2 * (shrunk == 1).sum() / ((shrunk == 1).sum() + (labels.array == 1).sum())
    assert dice_column[0] == pytest.approx(expected_organ)
    assert dice_column[1:] == pytest.approx([1.0, 1.0, 1.0])
    assert table.GetTable().GetColumnByName("hd95") is not None
    assert table.GetColumnUnitLabel("hd95") == "mm"


def test_evaluate_without_common_names_says_so(scene, fake):
    volume = add_volume(phantoms.ct_phantom(shape=(6, 12, 10))[0], "CT")
    a = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "a")
    a.GetSegmentation().AddEmptySegment("", "liver")
    b = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "b")
    b.GetSegmentation().AddEmptySegment("", "spleen")
    with pytest.raises(ValueError, match="share no segment name"):
        fake().evaluate(a, b, volume)


def test_export_training_cases_writes_an_nnunet_dataset(scene, fake, tmp_path):
    import SimpleITK as sitk

    logic = fake()
    cases = []
    for seed in (0, 1):
        image, labels = phantoms.ct_phantom(shape=CT_SHAPE, seed=seed)
        volume = add_volume(image, f"CT {seed}")
        seg = fake("echo", labels.array).segment(volume, "fake-model")
        cases.append((seg, volume, labels.array))
    cases[1][0].GetSegmentation().RemoveSegment(cases[1][0].GetSegmentation().GetSegmentIdBySegmentName("organ"))

    folder = logic.exportTrainingCases([c[0] for c in cases], tmp_path / "dataset")

    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["labels"] == {"background": 0, "organ": 1, "lesion": 2, "lung": 3, "bone": 4}
    assert dataset["channel_names"] == {"0": "CT"} and dataset["numTraining"] == 2
    for index, (_, volume, expected) in enumerate(cases):
        image = sitk.ReadImage(str(folder / "imagesTr" / f"case_{index:03d}_0000.nrrd"))
        label = sitk.ReadImage(str(folder / "labelsTr" / f"case_{index:03d}.nrrd"))
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(volume))
        assert label.GetDirection() == pytest.approx(image.GetDirection())
        want = expected if index == 0 else np.where(expected == 1, 0, expected)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), want)


def test_training_curves_table_from_epoch_events(scene):
    run = SimpleNamespace(events=[
        {"type": "progress", "stage": "train", "fraction": 0.1, "epoch": 0, "loss": 1.5},
        {"type": "log", "message": "saved checkpoint"},
        {"type": "progress", "stage": "train", "fraction": 0.2, "epoch": 0, "val_dice": 0.3},
        {"type": "progress", "stage": "train", "fraction": 0.4, "epoch": 1, "loss": 0.9, "val_dice": 0.6,
         "iteration": 40, "eta_s": 12.0},
    ])
    table = UNetSegmentationLogic(catalog=StubCatalog({})).trainingCurves(run)
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == ["epoch", "loss", "val_dice"]
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "val_dice"), [0.3, 0.6])
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "loss"), [1.5, 0.9])


def test_training_plot_has_one_series_per_curve_and_no_duplicates(scene):
    logic = UNetSegmentationLogic(catalog=StubCatalog({}))
    run = SimpleNamespace(events=[{"type": "progress", "epoch": 0, "loss": 1.0, "val_dice": 0.2}])
    table = logic.trainingCurves(run)
    chart = logic.trainingPlot(table)
    run.events.append({"type": "progress", "epoch": 1, "loss": 0.5, "val_dice": 0.4})
    assert logic.trainingPlot(logic.trainingCurves(run, table), chart) is chart
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert sorted(s.GetYColumnName() for s in series) == ["loss", "val_dice"]
    assert all(s.GetTableNode() is table and s.GetXColumnName() == "epoch" for s in series)


# --- end to end with the real `unetseg predict` and a real (hand-weighted) U-Net package ----------------


@pytest.mark.slow
def test_end_to_end_real_predictor_echo_model(scene, tmp_path, monkeypatch):
    """Scene volume → storage-node NRRD → `python -m UNetSegmentationLib predict` (child, unrelated cwd) → segments.

    The echo network returns the label values its input voxels hold, so the result must equal them exactly,
    through the oblique, flipped, anisotropic geometry; its two-input twin echoes only its first input, so
    an exact result also shows that the sequences reach the predictor in the given order.
    """
    from echo_model import ECHO_LABELS, echo_image, echo_package

    monkeypatch.chdir(tmp_path)
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    expected = np.minimum(labels.array, 3).astype(np.uint8)  # the echo model knows labels 1..3
    volume = add_volume(echo_image(labels.with_array(expected)), "echo input")
    logic = UNetSegmentationLogic(catalog=None)
    package = echo_package(tmp_path / "echo", orientation="RAS")

    seg = logic.segment(volume, str(package.path), device="cpu", postprocess=False)

    assert segment_names(seg) == [label.name for label in ECHO_LABELS]
    for label in ECHO_LABELS:
        np.testing.assert_array_equal(segment_mask(seg, label.name, volume), expected == label.value, label.name)

    ct = add_volume(image, "CT")  # in HU: echoed as first input, it would give a very different result
    two_inputs = echo_package(tmp_path / "echo2", name="echo2", inputs=2, orientation="RAS")
    in_order = logic.segment([volume, ct], str(two_inputs.path), device="cpu", postprocess=False)
    for label in ECHO_LABELS:
        np.testing.assert_array_equal(segment_mask(in_order, label.name, volume), expected == label.value)


def test_train_from_scene_cases_exports_runs_and_imports_the_model(scene, fake, tmp_path):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    logic = fake("echo", labels.array)
    seg = logic.segment(volume, "fake-model")
    before = set(logic.availableModels())
    events = []

    run = logic.train([seg], variant="unet", timeBudgetMinutes=5, device="cpu", name="my-unet",
                      progressCallback=events.append)
    name = run.wait(timeout=120)

    assert name == "my-unet" and set(logic.availableModels()) == before | {"my-unet"}
    record = json.loads((tmp_path / "record.json").read_text(encoding="utf-8"))
    argv = record["argv"]
    assert argv[argv.index("--variant") + 1] == "unet" and argv[argv.index("--time-budget") + 1] == "5"
    assert record["dataset"] == ["dataset.json", "imagesTr", "labelsTr"]
    table = logic.trainingCurves(run)
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "val_dice"), [0.3, 0.6])
    assert any(e.get("epoch") == 1 for e in events)
    assert work_leftovers(tmp_path) == []


def test_failed_training_imports_nothing(scene, fake, tmp_path):
    logic = fake("fail")
    with pytest.raises(RuntimeError, match="dataset has no labels"):
        logic.train(str(tmp_path), variant="nnunet", waitForCompletion=True)
    assert logic.availableModels() == ["fake-model"]
    assert work_leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="Unknown variant"):
        logic.train(str(tmp_path), variant="resnet")
