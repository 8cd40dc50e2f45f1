"""DICOM SEG out: a cohort of DICOM series segmented into SEG objects that read back (frames, geometry, segments)."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from cohort_cases import predict
from dicom_series import write_dicom_series
from echo_model import echo_image, echo_manifest, echo_state_dict

from unetseg import phantoms
from unetseg.image import Label
from unetseg.io.dicom_seg import GENERIC_CODE, series_files, terminology_codes
from unetseg.jobs.runner import EXIT_FAILED
from unetseg.models.package import save_package

LEFT_KIDNEY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^64033007^Kidney~SCT^7771000^Left~Anatomic codes - DICOM master list~SCT^818981001^Abdomen~^^"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The echo model whose first label carries a Slicer terminology string with a modifier and a region."""
    manifest = echo_manifest()
    manifest["labels"][0].update(name="left kidney", terminology=LEFT_KIDNEY)
    return save_package(tmp_path_factory.mktemp("model") / "echo", manifest, echo_state_dict(manifest["network"]))


def _series(folder, seed):
    """An oblique DICOM series whose voxels hold label values (what the echo model gives back) and the labels."""
    _, labels = phantoms.ct_phantom(shape=(6, 20, 18), seed=seed, direction=phantoms.oblique_direction(20.0, False))
    labels = labels.with_array(labels.array.clip(0, 3).astype(np.uint8))
    return write_dicom_series(echo_image(labels), folder, number=seed + 1), labels.array


def _check_seg(path, source_folder, labels):
    """The SEG references its series, its frames lie on the source slices' geometry and hold exactly each
    segment's voxels; segment names and codes come from the model."""
    seg = hd.seg.segread(str(path))
    sources = [pydicom.dcmread(str(f)) for f in series_files(source_folder)]
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    # one frame per slice and segment that holds any of it (highdicom leaves empty frames out)
    assert int(seg.NumberOfFrames) == sum(np.any(labels[k] == n) for k in range(len(sources)) for n in (1, 2, 3))
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                               [float(v) for v in sources[0].PixelSpacing])  # fmt: skip
    np.testing.assert_allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                               [float(v) for v in sources[0].ImageOrientationPatient], atol=1e-6)  # fmt: skip
    by_uid = {source.SOPInstanceUID: source for source in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame lies where the slice it was derived from lies
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-4)  # fmt: skip
    for k, source in enumerate(sources):
        pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID])
        for number in (1, 2, 3):
            np.testing.assert_array_equal(pixels[0, :, :, number - 1], labels[k] == number, f"slice {k}")
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["left kidney", "two", "three"]
    kidney = segments[0]
    kidney_type = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.CodeValue == "64033007"
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert kidney.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert kidney.AnatomicRegionSequence[0].CodeValue == "818981001"
    generic = segments[1].SegmentedPropertyTypeCodeSequence[0]
    assert (generic.CodeValue, generic.CodingSchemeDesignator, generic.CodeMeaning) == GENERIC_CODE
    assert segments[1].SegmentAlgorithmName == "echo" and segments[1].SegmentAlgorithmType == "AUTOMATIC"


def test_a_folder_of_dicom_series_becomes_dicom_segs_that_read_back(model, tmp_path, capsys):
    expected = {f"patient{seed}": _series(tmp_path / "study" / f"patient{seed}", seed) for seed in range(2)}
    code, events = predict(capsys, tmp_path / "study", model.path, tmp_path / "out", "--format", "dicom-seg")
    assert code == 0 and events[-1]["succeeded"] == 2
    for case_id, (folder, labels) in expected.items():
        _check_seg(tmp_path / "out" / f"{case_id}.dcm", folder, labels)
    records = [json.loads(line) for line in (tmp_path / "out" / "unetseg-run.jsonl").read_text("utf-8").splitlines()]
    assert {r["case"]: r["inputs"] for r in records} == {c: [str(f)] for c, (f, _) in expected.items()}
    code, events = predict(capsys, tmp_path / "study", model.path, tmp_path / "out", "--format", "dicom-seg")
    assert code == 0 and events[-1]["skipped"] == 2  # a SEG's header reads: the run log's rule holds for .dcm


def test_a_single_dicom_series_to_case_dcm(model, tmp_path, capsys):
    folder, labels = _series(tmp_path / "ct", 0)
    code, events = predict(capsys, folder, model.path, tmp_path / "case.dcm")
    assert code == 0 and events[-1]["output"] == str(tmp_path / "case.dcm")
    _check_seg(tmp_path / "case.dcm", folder, labels)


def test_dicom_seg_needs_a_dicom_series_and_a_matching_name(model, tmp_path, capsys):
    folder, labels = _series(tmp_path / "ct", 0)
    sitk.WriteImage(sitk.GetImageFromArray(labels.astype(np.float32)), str(tmp_path / "ct.nrrd"))
    code, events = predict(capsys, tmp_path / "ct.nrrd", model.path, tmp_path / "case.dcm")
    assert code == EXIT_FAILED and "references the DICOM series it segments" in events[-1]["message"]
    code, events = predict(capsys, folder, model.path, tmp_path / "case.seg.nrrd", "--format", "dicom-seg")
    assert code == EXIT_FAILED and "does not end in .dcm" in events[-1]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "ct.nrrd"]


def test_terminology_strings_become_coded_concepts():
    codes = terminology_codes(Label(1, "left kidney", terminology=LEFT_KIDNEY))
    assert codes == {"category": ("123037004", "SCT", "Anatomical Structure"), "type": ("64033007", "SCT", "Kidney"),
                     "modifier": ("7771000", "SCT", "Left"), "region": ("818981001", "SCT", "Abdomen")}  # fmt: skip
    assert terminology_codes(Label(2, "thing")) == {"category": GENERIC_CODE, "type": GENERIC_CODE,
                                                    "modifier": None, "region": None}  # fmt: skip
    with pytest.raises(ValueError, match="malformed terminology"):
        terminology_codes(Label(3, "bad", terminology="SCT^1^x~SCT^2^y"))
