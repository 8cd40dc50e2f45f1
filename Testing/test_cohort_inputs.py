"""Which cases a cohort input names: folders, globs, nnU-Net channel files, CSV/TSV lists (no segmentation here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unetseg.jobs.cohort_inputs import Case, find_cases, is_cohort, output_suffix


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def ids_and_inputs(cases: list[Case], root: Path) -> dict[str, list[str]]:
    return {c.id: [str(Path(i).relative_to(root)) for i in c.inputs] for c in cases}


def test_what_counts_as_a_cohort(tmp_path):
    touch(tmp_path / "series" / "IM0001.dcm", tmp_path / "study" / "p1" / "IM0001.dcm", tmp_path / "ct.nii.gz")
    dicom = tmp_path / "raw" / "IM0001"
    touch(dicom)
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # a DICOM file without the .dcm extension
    (tmp_path / "cases.tsv").write_text("case\tCT\n", encoding="utf-8")
    assert not is_cohort([str(tmp_path / "series")]) and not is_cohort([str(tmp_path / "raw")])
    assert not is_cohort([str(tmp_path / "ct.nii.gz")]) and not is_cohort([str(tmp_path / "a"), str(tmp_path / "b")])
    assert is_cohort([str(tmp_path / "study")]) and is_cohort([str(tmp_path / "cases.tsv")])
    assert is_cohort([str(tmp_path / "*.nii.gz")]) and not is_cohort([str(tmp_path / "missing.nii.gz")])


def test_a_folder_gives_image_files_and_dicom_folders_and_skips_the_rest(tmp_path):
    root = tmp_path / "in"
    touch(root / "a.nii.gz", root / "b.nrrd", root / "p3" / "IM1.dcm", root / "notes.txt", root / ".hidden.nrrd",
          root / "old.seg.nrrd")  # fmt: skip
    cases = find_cases(str(root), tmp_path / "out", ["CT"], output_suffix(None))
    assert ids_and_inputs(cases, root) == {"a": ["a.nii.gz"], "b": ["b.nrrd"], "p3": ["p3"]}
    assert [c.output for c in cases] == [str(tmp_path / "out" / f"{i}.seg.nrrd") for i in ("a", "b", "p3")]
    assert all(c.problem is None for c in cases)
    with pytest.raises(ValueError, match="give -o a folder of its own"):
        find_cases(str(root), root, ["CT"], ".nii.gz")
    with pytest.raises(ValueError, match="Unknown output format 'png'"):
        output_suffix("png")


def test_nnunet_channel_files_are_grouped_and_a_missing_channel_is_a_problem(tmp_path):
    root = tmp_path / "in"
    touch(root / "p1_0000.nii.gz", root / "p1_0001.nii.gz", root / "p2_0000.nii.gz", root / "p3.nii.gz")
    cases = {c.id: c for c in find_cases(str(root), tmp_path / "out", ["T1", "FLAIR"], ".nii.gz")}
    assert ids_and_inputs(list(cases.values()), root)["p1"] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]
    assert cases["p1"].problem is None
    assert "p2_0000 (T1), p2_0001 (FLAIR); this case has _0000" in cases["p2"].problem
    assert "one file without a _NNNN channel number" in cases["p3"].problem
    one = find_cases(str(tmp_path / "in" / "p1_000[0]*"), tmp_path / "out", ["CT"], ".nii.gz")
    assert [(c.id, c.problem) for c in one] == [("p1", None)]  # nnU-Net's imagesTs naming for one input


def test_a_glob_over_case_folders_names_cases_by_their_folders(tmp_path):
    touch(tmp_path / "p1" / "ct.nii.gz", tmp_path / "p2" / "ct.nii.gz", tmp_path / "p2" / "mask.nii.gz")
    cases = find_cases(str(tmp_path / "*" / "ct.nii.gz"), tmp_path / "out", ["CT"], ".nrrd")
    assert [c.id for c in cases] == ["p1-ct", "p2-ct"]
    with pytest.raises(ValueError, match="No image file or folder matches"):
        find_cases(str(tmp_path / "*" / "*.mha"), tmp_path / "out", ["CT"], ".nrrd")


def test_a_tsv_list_with_outputs_and_problem_rows(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "cases.tsv").write_text(
        "id\tT1\tFLAIR\tOutput\n"
        "p1\t../t1.nii.gz\t/abs/flair.nii.gz\t\n"
        "p2\tt1.nii.gz\tflair.nii.gz\tsub/p2.png\n"
        "a/b\tt1.nii.gz\tflair.nii.gz\t\n",
        encoding="utf-8",
    )
    cases = {c.id: c for c in find_cases(str(tmp_path / "lists" / "cases.tsv"), tmp_path / "out", ["T1", "FLAIR"],
                                         ".nii.gz")}  # fmt: skip
    assert cases["p1"].inputs == (str(tmp_path / "lists" / ".." / "t1.nii.gz"), "/abs/flair.nii.gz")
    assert cases["p1"].output == str(tmp_path / "out" / "p1.nii.gz") and cases["p1"].problem is None
    assert "Unsupported output extension for p2.png" in cases["p2"].problem
    assert "must be a plain name" in cases["a/b"].problem


def test_two_cases_with_one_output_are_refused(tmp_path):
    (tmp_path / "cases.csv").write_text("case,CT,output\np1,a.nrrd,same.nrrd\np2,b.nrrd,same.nrrd\n",
                                        encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError, match="Two cases share the output"):
        find_cases(str(tmp_path / "cases.csv"), tmp_path / "out", ["CT"], ".nrrd")
