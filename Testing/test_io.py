"""Image reading (files, DICOM series, bad input) and atomic label-map writing (.seg.nrrd and plain maps)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from unetseg import io, phantoms
from unetseg.image import Image, Label, LabelImage

LIVER = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)


def _assert_same_image(a: Image, b: Image) -> None:
    np.testing.assert_array_equal(a.array, b.array)
    assert a.same_grid(b, tolerance=1e-5), (a.spacing, a.origin, a.direction, b.spacing, b.origin, b.direction)


def _write_dicom_series(image: Image, folder, series_uid: str) -> None:
    """Write one DICOM file per slice with the tags GDCM needs to rebuild the 3D geometry."""
    folder.mkdir(exist_ok=True)
    img = image.to_sitk()
    d = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        slice_ = img[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.10f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0018|0050": str(img.GetSpacing()[2]),
        }
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{series_uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"))
        writer.Execute(slice_)


@pytest.fixture
def ct_int16():
    """A right-handed oblique, anisotropic CT phantom in int16 (what DICOM stores)."""
    image, labels = phantoms.ct_phantom(shape=(12, 24, 20), direction=phantoms.oblique_direction(25.0, flip_x=False))
    return image.with_array(np.round(image.array).astype(np.int16)), labels


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_read_image_file_formats_keep_voxels_and_geometry(tmp_path, suffix):
    image, _ = phantoms.ct_phantom(shape=(10, 16, 14))  # oblique, x-flipped, anisotropic
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image.to_sitk(), str(path))
    _assert_same_image(io.read_image(path), image)


def test_read_image_dicom_series_matches_nrrd(tmp_path, ct_int16):
    image, _ = ct_int16
    _write_dicom_series(image, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2.1")
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "ct.nrrd"))
    from_dicom = io.read_image(tmp_path / "dicom")
    _assert_same_image(from_dicom, io.read_image(tmp_path / "ct.nrrd"))
    _assert_same_image(from_dicom, image)


def test_read_image_folder_with_two_series_lists_them_and_reads_the_chosen_one(tmp_path, ct_int16):
    image, _ = ct_int16
    uids = ["1.2.826.0.1.3680043.2.1125.2.1", "1.2.826.0.1.3680043.2.1125.2.2"]
    _write_dicom_series(image, tmp_path / "dicom", uids[0])
    _write_dicom_series(image.with_array(image.array + 7), tmp_path / "dicom", uids[1])
    with pytest.raises(ValueError, match="2 DICOM series") as err:
        io.read_image(tmp_path / "dicom")
    assert all(uid in str(err.value) for uid in uids)
    np.testing.assert_array_equal(io.read_image(tmp_path / "dicom", series_uid=uids[1]).array, image.array + 7)


def test_read_image_2d_png_is_one_slice(tmp_path):
    xray, _ = phantoms.xray_phantom(shape=(20, 18))
    grey = np.clip(xray.array[0] * 255, 0, 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / "xray.png"))
    image = io.read_image(tmp_path / "xray.png")
    assert image.shape == (1, 20, 18)
    np.testing.assert_array_equal(image.array[0], grey)


def test_read_image_accepts_grey_stored_as_rgb(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), str(tmp_path / "g.png"))
    np.testing.assert_array_equal(io.read_image(tmp_path / "g.png").array[0], grey)


def test_read_image_accepts_4d_with_a_single_frame(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(volume)]), str(tmp_path / "one_frame.nii.gz"))
    np.testing.assert_array_equal(io.read_image(tmp_path / "one_frame.nii.gz").array, volume)


def test_read_image_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.nrrd"):
        io.read_image(tmp_path / "missing.nrrd")


def test_read_image_unreadable_file_names_the_path(tmp_path):
    (tmp_path / "broken.nrrd").write_text("this is not an image")
    with pytest.raises(ValueError, match=r"broken\.nrrd"):
        io.read_image(tmp_path / "broken.nrrd")


def test_read_image_folder_without_dicom(tmp_path):
    with pytest.raises(ValueError, match="No DICOM series"):
        io.read_image(tmp_path)


def test_read_image_4d_says_to_extract_a_volume(tmp_path):
    frames = [sitk.GetImageFromArray(np.full((2, 3, 4), t, np.float32)) for t in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "perfusion.nii.gz"))
    with pytest.raises(ValueError, match=r"4D.*Extract one 3D volume"):
        io.read_image(tmp_path / "perfusion.nii.gz")


def test_read_image_rgb_says_to_convert_to_greyscale(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, size=(5, 6, 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "photo.png"))
    with pytest.raises(ValueError, match=r"RGB.*greyscale"):
        io.read_image(tmp_path / "photo.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_read_image_non_finite_voxels(tmp_path, bad):
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "bad.nrrd"))
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        io.read_image(tmp_path / "bad.nrrd")


def test_read_images_same_grid(tmp_path):
    sequences, _ = phantoms.mri_phantom(shape=(8, 12, 10))
    paths = [tmp_path / f"seq{i}.nrrd" for i in range(len(sequences))]
    for seq, path in zip(sequences, paths, strict=True):
        sitk.WriteImage(seq.to_sitk(), str(path))
    for read, seq in zip(io.read_images(paths), sequences, strict=True):
        _assert_same_image(read, seq)


def test_read_images_different_grids_names_the_culprit(tmp_path):
    sequences, _ = phantoms.mri_phantom(shape=(8, 12, 10))
    sitk.WriteImage(sequences[0].to_sitk(), str(tmp_path / "t1.nrrd"))
    shifted = Image(sequences[1].array, sequences[1].spacing, (0.0, 0.0, 5.0), sequences[1].direction)
    sitk.WriteImage(shifted.to_sitk(), str(tmp_path / "t2.nrrd"))
    with pytest.raises(ValueError, match=r"t2\.nrrd is not on the same grid as .*t1\.nrrd"):
        io.read_images([tmp_path / "t1.nrrd", tmp_path / "t2.nrrd"])
    with pytest.raises(ValueError, match="No input images"):
        io.read_images([])


def _ct_label_image() -> LabelImage:
    _, labels = phantoms.ct_phantom(shape=(12, 32, 28))  # holds all four labels
    table = [
        Label(1, "liver", (0.8, 0.3, 0.2), LIVER),
        Label(2, "lesion", (0.9, 0.9, 0.1)),
        Label(3, "lung", (0.0, 0.0, 1.0)),
    ]
    return LabelImage(labels, table)


def test_seg_nrrd_round_trip_keeps_names_colours_terminology(tmp_path):
    label_image = _ct_label_image()
    path = io.write_label_image(tmp_path / "out.seg.nrrd", label_image)
    read = io.read_label_image(path)
    _assert_same_image(read.image, label_image.image)
    by_value = {label.value: label for label in read.labels}
    for label in label_image.labels:
        assert by_value[label.value].name == label.name
        np.testing.assert_allclose(by_value[label.value].color, label.color)
    assert by_value[1].terminology == LIVER
    assert by_value[4].name == "Label 4"  # in the array but not in the table: kept, not dropped
    assert sorted(os.listdir(tmp_path)) == ["out.seg.nrrd"]


def test_seg_nrrd_is_read_by_slicer(tmp_path, mrml_scene):
    import slicer
    import vtk

    path = io.write_label_image(tmp_path / "out.seg.nrrd", _ct_label_image())
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    liver = next(s for s in segments if s.GetName() == "liver")
    tag = vtk.reference("")
    liver.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    assert str(tag) == LIVER
    assert liver.GetLabelValue() == 1
    np.testing.assert_allclose(liver.GetColor(), (0.8, 0.3, 0.2))


def test_seg_nrrd_with_overlapping_layers_is_flattened(tmp_path):
    from slicerio import segmentation as slicerio

    layers = np.zeros((2, 4, 3, 2), np.uint8)  # (layer, i, j, k)
    layers[0, :2] = 1
    layers[1, 1:] = 1
    slicerio.write_segmentation(str(tmp_path / "layers.seg.nrrd"), {
        "voxels": layers, "ijkToLPS": np.diag([2.0, 1.0, 3.0, 1.0]),
        "segments": [{"name": "a", "labelValue": 1, "layer": 0}, {"name": "b", "labelValue": 1, "layer": 1}],
    })
    read = io.read_label_image(tmp_path / "layers.seg.nrrd")
    assert [(label.value, label.name) for label in read.labels] == [(1, "a"), (2, "b")]
    np.testing.assert_array_equal(read.image.array[0, 0, :], [1, 2, 2, 2])  # b wins where they overlap
    assert read.image.spacing == (2.0, 1.0, 3.0)
    assert "overlaps" in read.messages[0]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_plain_label_map_round_trip(tmp_path, suffix):
    label_image = _ct_label_image()
    read = io.read_label_image(io.write_label_image(tmp_path / f"labels{suffix}", label_image))
    _assert_same_image(read.image, label_image.image)
    array = label_image.image.array
    assert [label.value for label in read.labels] == sorted(np.unique(array[array > 0]))


def test_read_label_image_rejects_fractional_values(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4), 0.5, np.float32)), str(tmp_path / "prob.nrrd"))
    with pytest.raises(ValueError, match="non-integer"):
        io.read_label_image(tmp_path / "prob.nrrd")


def test_write_label_image_rejects_unknown_extension_and_float_arrays(tmp_path):
    with pytest.raises(ValueError, match="Unsupported output extension"):
        io.write_label_image(tmp_path / "out.png", _ct_label_image())
    floats = LabelImage(Image(np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(ValueError, match="must hold integers"):
        io.write_label_image(tmp_path / "out.nrrd", floats)
    assert os.listdir(tmp_path) == []


def test_write_label_image_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        io.write_label_image(tmp_path / "no_such_folder" / "out.seg.nrrd", _ct_label_image())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_label_image_unwritable_folder_names_it(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="locked"):
            io.write_label_image(folder / "out.seg.nrrd", _ct_label_image())
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


def test_write_failure_midway_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous result")

    def fail_after_partial_write(image, path, useCompression=False):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.write.sitk, "WriteImage", fail_after_partial_write)
    with pytest.raises(OSError, match="disk full"):
        io.write_label_image(target, _ct_label_image())
    assert os.listdir(tmp_path) == ["out.nii.gz"]
    assert target.read_bytes() == b"previous result"


def test_atomic_write_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def record_replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(io.atomic.os, "fsync", record_fsync)
    monkeypatch.setattr(io.atomic.os, "replace", record_replace)
    target = tmp_path / "out.nii.gz"
    with io.atomic_write(target) as temporary:
        temporary.write_bytes(b"complete")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == str(temporary) and events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_bytes() == b"complete"


def test_atomic_write_replaces_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "model.pt"
    with io.atomic_write(target) as temporary:
        assert temporary.parent == target.parent and temporary.name.endswith("model.pt")
        temporary.write_text("v1")
    assert target.read_text(encoding="utf-8") == "v1"
    with pytest.raises(KeyboardInterrupt), io.atomic_write(target) as temporary:
        temporary.write_text("v2 half")
        raise KeyboardInterrupt
    assert target.read_text(encoding="utf-8") == "v1"
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("direction", [(1, 0.3, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0.9, 0.1)])
def test_a_sheared_grid_is_refused_with_the_file_named(tmp_path, direction):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    img.SetDirection(direction)
    path = tmp_path / "sheared.nrrd"
    sitk.WriteImage(img, str(path))
    with pytest.raises(ValueError, match=r"sheared\.nrrd has a direction matrix that is not orthonormal"):
        io.read_image(path)


def test_an_image_value_with_degenerate_axes_is_refused():
    with pytest.raises(ValueError, match="not orthonormal"):
        Image(np.zeros((2, 3, 4), np.float32), direction=(1, 0, 0, 0, 1, 0, 0, 0, 0))
