"""UNetSegmentationLogic on slicer-core's real MRML scene: catalog, modality, parameter node, evaluation, training.

Segmenting itself is tested in test_slicer_segment.py; the fixtures and the fake predictor are in slicer_scene.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from slicer_scene import (
    CT_LABELS,
    CT_SHAPE,
    StubCatalog,
    add_volume,
    fake_fixture,  # noqa: F401  (fixture `fake`)
    put_in_study,
    scene_fixture,  # noqa: F401  (fixture `scene`)
    slicer,
    work_leftovers,
)

from unetseg import phantoms
from UNetSegmentationLib.logic import UNetSegmentationLogic

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


@pytest.mark.slow
def test_an_nnunet_folder_imports_through_the_background_process_and_lists_with_its_labels(scene, tmp_path,
                                                                                          monkeypatch):
    pytest.importorskip("dynamic_network_architectures")
    from pathlib import Path

    from unetseg.models import catalog as catalog_module
    from unetseg.models.card import tooltip

    monkeypatch.setenv(catalog_module.MODELS_DIR_ENV, str(tmp_path / "user"))
    folder = (Path(__file__).parent / "fixtures" / "nnunet" / "models" / "Dataset901_TinyCT"
              / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    logic = UNetSegmentationLogic()
    name = logic.importModel(folder, name="tiny-ct3d")
    assert name == "tiny-ct3d"
    assert "tiny-ct3d" in logic.availableModels(modality="CT")
    package = logic.modelInfo("tiny-ct3d")
    assert package.variant == "nnunetv2" and package.provenance["folds"] == ["0", "1"]
    assert all(label.name.lower() in tooltip(package).lower() for label in package.labels)
    with pytest.raises(ValueError, match=r"keeps its name and modality in its model\.json"):
        logic.importModel(package.path, name="other")
    with pytest.raises(ValueError, match="Unknown modality 'PET'"):
        logic.importModel(folder, modality="PET")
