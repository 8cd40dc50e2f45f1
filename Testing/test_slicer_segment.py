"""UNetSegmentationLogic.segment on slicer-core's real MRML scene: volume → files → background process → segments.

Geometry, names, the subject hierarchy, replacing segments in an existing node, and failure, cancel and
rollback leaving the scene as it was; the predictor is the fake child of slicer_scene.py, except in the
end-to-end test, which runs the real `unetseg predict` on a hand-weighted U-Net.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from slicer_scene import (
    CT_LABELS,
    CT_SHAPE,
    TERMINOLOGY,
    add_volume,
    fake_fixture,  # noqa: F401  (fixture `fake`)
    put_in_study,
    scene_fixture,  # noqa: F401  (fixture `scene`)
    scene_state,
    segment_mask,
    segment_names,
    slicer,
    work_leftovers,
)

from unetseg import phantoms
from unetseg.image import Image
from UNetSegmentationLib import segment_import
from UNetSegmentationLib.logic import UNetSegmentationLogic

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


def test_the_runs_warnings_stay_with_the_result_and_a_clean_run_clears_them(scene, fake):
    image, labels = phantoms.ct_phantom(shape=CT_SHAPE)
    volume = add_volume(image, "CT")
    logic = fake("echo", labels.array.astype(np.uint8), warnings=("This model is for MRI images", "Spacing far off"))
    seg = logic.segment(volume, "fake-model")
    assert logic.segmentationWarnings(seg) == ["This model is for MRI images", "Spacing far off"]
    clean = fake("echo", labels.array.astype(np.uint8))
    clean.segment(volume, "fake-model", outputSegmentation=seg)
    assert clean.segmentationWarnings(seg) == []


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

    monkeypatch.setattr(segment_import, "_describeSegment", broken_describe)
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



# --- end to end with the real `unetseg predict` and a real (hand-weighted) U-Net package ----------------


@pytest.mark.slow
def test_end_to_end_real_predictor_echo_model(scene, tmp_path, monkeypatch):
    """Scene volume → storage-node NRRD → `python -m unetseg predict` (child, unrelated cwd) → segments.

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
