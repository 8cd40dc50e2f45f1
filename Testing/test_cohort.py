"""`unetseg predict` on a cohort: folder, glob and CSV inputs, the run log, resume, bad cases, Ctrl-C, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cohort_cases import assert_outputs, case_image, events_of, leftovers, log_of, predict, write_cases
from echo_model import echo_package

from unetseg import cli
from unetseg.image import Image
from unetseg.jobs import cohort_progress
from unetseg.jobs.progress import parse_progress_line
from unetseg.jobs.run_log import RUN_LOG_NAME, RunLog
from unetseg.jobs.runner import EXIT_CANCELLED, EXIT_FAILED, EXIT_SOME_FAILED

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"echo": echo_package(root / "echo"), "two": echo_package(root / "two", name="two", inputs=2)}


# ---------------------------------------------------------------------------------------------- a folder


def test_folder_cohort_segments_every_case_and_logs_each(models, tmp_path, capsys):
    expected = write_cases(tmp_path / "in", 3)
    out = tmp_path / "out"
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == 0
    assert_outputs(out, expected)
    result = events[-1]
    assert result["type"] == "result"
    assert {k: result[k] for k in ("cases", "succeeded", "skipped", "failed", "not_run")} == {
        "cases": 3, "succeeded": 3, "skipped": 0, "failed": 0, "not_run": 0}  # fmt: skip
    progress = [e for e in events if e["type"] == "progress"]
    assert all(e["stage"] == "cohort" for e in progress) and progress[-1]["fraction"] == 1.0
    assert [e["fraction"] for e in progress] == sorted(e["fraction"] for e in progress)
    records = log_of(out)
    assert [r["case"] for r in records] == ["case0", "case1", "case2"]
    for record in records:
        assert record["status"] == "done" and record["error"] is None and record["device"] == "cpu"
        assert record["inputs"] == [str(tmp_path / "in" / f"{record['case']}.nrrd")]
        assert record["output"] == str(out / f"{record['case']}.seg.nrrd") and record["seconds"] > 0
        assert record["model"] == "echo 1" and record["bytes"] == Path(record["output"]).stat().st_size
    assert leftovers(tmp_path) == []


def test_rerun_skips_complete_cases_redoes_missing_ones_and_never_replaces_untrusted_files(models, tmp_path, capsys):
    expected = write_cases(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert predict(capsys, tmp_path / "in", models["echo"].path, out)[0] == 0
    kept = (out / "case0.seg.nrrd").stat().st_mtime_ns
    (out / "case1.seg.nrrd").unlink()
    (out / "case2.seg.nrrd").write_bytes(b"a file this run log does not vouch for")
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == EXIT_SOME_FAILED and events[-1]["type"] == "error"
    assert (events[-2]["succeeded"], events[-2]["skipped"], events[-2]["failed"]) == (1, 1, 1)
    assert (out / "case0.seg.nrrd").stat().st_mtime_ns == kept
    last = {r["case"]: r for r in log_of(out, last_run=True)}
    assert [last[c]["status"] for c in ("case0", "case1", "case2")] == ["skipped", "done", "failed"]
    assert "pass --overwrite" in last["case2"]["error"]
    assert (out / "case2.seg.nrrd").read_bytes() == b"a file this run log does not vouch for"
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out, "--overwrite")
    assert code == 0 and events[-1]["succeeded"] == 3
    assert_outputs(out, expected)


def test_a_bad_case_is_recorded_and_the_cohort_finishes(models, tmp_path, capsys):
    write_cases(tmp_path / "in", 2)
    nan = case_image(5)[0].array.copy()
    nan[2, 3, 4] = np.nan
    sitk.WriteImage(Image(nan).to_sitk(), str(tmp_path / "in" / "nan.nrrd"))
    (tmp_path / "in" / "broken.nrrd").write_bytes(b"NRRD0004\nnot an image\n")
    out = tmp_path / "out"
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == EXIT_SOME_FAILED
    assert events[-1]["type"] == "error" and "2 of 4 cases failed" in events[-1]["message"]
    assert (events[-2]["succeeded"], events[-2]["failed"]) == (2, 2)
    errors = {r["case"]: r["error"] for r in log_of(out) if r["status"] == "failed"}
    assert "NaN or infinite" in errors["nan"] and "Cannot read image" in errors["broken"]
    assert sorted(p.name for p in out.iterdir()) == ["case0.seg.nrrd", "case1.seg.nrrd", RUN_LOG_NAME]
    assert any(e["type"] == "log" and e["message"].startswith("nan: failed") for e in events)
    assert leftovers(tmp_path) == []


def test_an_interrupted_cohort_resumes(models, tmp_path, capsys, monkeypatch):
    """Ctrl-C (a real SIGINT to this process) after two cases: exit 3, two outputs, no partial file; the rerun
    does the other two and skips the first two."""
    expected = write_cases(tmp_path / "in", 4)
    out = tmp_path / "out"
    advance = cohort_progress.CohortProgress.advance

    def interrupt_after_two(self, case, record):
        advance(self, case, record)
        if self.counts["succeeded"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cohort_progress.CohortProgress, "advance", interrupt_after_two)
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == EXIT_CANCELLED
    assert events[-1]["type"] == "error" and "rerun to resume" in events[-1]["message"]
    assert events[-2]["not_run"] == 2 and leftovers(tmp_path) == []
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == ["case0.seg.nrrd", "case1.seg.nrrd"]
    monkeypatch.setattr(cohort_progress.CohortProgress, "advance", advance)
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == 0 and (events[-1]["skipped"], events[-1]["succeeded"]) == (2, 2)
    assert_outputs(out, expected)


@pytest.mark.slow
def test_ctrl_c_stops_worker_processes_without_partial_files(models, tmp_path, capsys):
    """SIGINT to the whole process group (what Ctrl-C does) while two worker processes segment with TTA."""
    expected = write_cases(tmp_path / "in", 4, shape=(24, 48, 48))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unetseg", "predict", "-i", str(tmp_path / "in"), "-m", str(models["echo"].path),
               "-o", str(out), "--device", "cpu", "--workers", "2", "--tta", "--progress", "json"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                               cwd=REPO, start_new_session=True)  # fmt: skip
    try:
        for line in process.stdout:
            event = parse_progress_line(line)
            if event and event.get("status") == "done":
                os.killpg(process.pid, signal.SIGINT)
                break
        rest, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == EXIT_CANCELLED, err
    assert "Traceback" not in err and events_of(rest)[-1]["type"] == "error"
    done = {r["case"] for r in log_of(out) if r["status"] == "done"}
    assert {p.name.removesuffix(".seg.nrrd") for p in out.glob("*.seg.nrrd")} == done and len(done) < 4
    assert leftovers(tmp_path) == []
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == 0 and events[-1]["skipped"] == len(done) and events[-1]["succeeded"] == 4 - len(done)
    assert_outputs(out, expected)


# ---------------------------------------------------------------------------------------------- globs, lists, workers


@pytest.mark.slow
def test_two_worker_processes_segment_a_glob(models, tmp_path, capsys):
    expected = write_cases(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.txt").write_text("not an image", encoding="utf-8")
    out = tmp_path / "out"
    code, events = predict(capsys, f"{tmp_path / 'in'}/*", models["echo"].path, out, "--workers", "2")
    assert code == 0 and events[-1]["succeeded"] == 3
    assert_outputs(out, expected)
    workers = {r["worker"] for r in log_of(out)}
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)


def test_case_list_gives_each_case_its_inputs_and_output(models, tmp_path, capsys):
    """A CSV list for a two-input model: relative paths, an output column with a sub-folder, an empty cell."""
    (tmp_path / "images").mkdir()
    image, labels = case_image(1)
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "images" / "t1.nrrd"))
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "images" / "flair.nrrd"))
    (tmp_path / "cases.csv").write_text("case,T1,FLAIR,output\np1,images/t1.nrrd,images/flair.nrrd,maps/p1.nii.gz\n"
                                        "p2,images/t1.nrrd,,\n", encoding="utf-8")  # fmt: skip
    out = tmp_path / "out"
    code, events = predict(capsys, tmp_path / "cases.csv", models["two"].path, out)
    assert code == EXIT_SOME_FAILED and (events[-2]["succeeded"], events[-2]["failed"]) == (1, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "maps" / "p1.nii.gz"))), labels)
    records = {r["case"]: r for r in log_of(out)}
    assert records["p1"]["inputs"] == [str(tmp_path / "images" / "t1.nrrd"), str(tmp_path / "images" / "flair.nrrd")]
    assert "No file given for input column(s) FLAIR" in records["p2"]["error"]


def test_a_case_list_with_the_wrong_columns_is_refused_up_front(models, tmp_path, capsys):
    (tmp_path / "cases.tsv").write_text("case\tCT\np1\tct.nrrd\n", encoding="utf-8")
    code, events = predict(capsys, tmp_path / "cases.tsv", models["two"].path, tmp_path / "out")
    assert code == EXIT_FAILED and "has 1 input column(s) (CT) but the model reads 2" in events[-1]["message"]
    assert not (tmp_path / "out").exists()


def test_a_single_case_refuses_cohort_options(models, tmp_path, capsys):
    image, _ = case_image(0)
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "ct.nrrd"))
    code, events = predict(capsys, tmp_path / "ct.nrrd", models["echo"].path, tmp_path / "ct.seg.nrrd",
                           "--workers", "2")  # fmt: skip
    assert code == EXIT_FAILED and "--workers apply to a cohort only" in events[-1]["message"]


def test_the_run_log_is_json_lines_a_person_can_read(models, tmp_path, capsys):
    write_cases(tmp_path / "in", 1)
    predict(capsys, tmp_path / "in", models["echo"].path, tmp_path / "out")
    started, done = (json.loads(line) for line in (tmp_path / "out" / RUN_LOG_NAME).read_text("utf-8").splitlines())
    assert list(started) == ["run", "case", "inputs", "output", "status", "model"] and started["status"] == "started"
    assert list(done)[:9] == ["run", "case", "inputs", "output", "status", "error", "seconds", "device", "worker"]


def test_a_case_a_killed_run_started_is_written_again(models, tmp_path, capsys):
    """A run killed outright (no chance to log the outcome) leaves a ``started`` record and, perhaps, the output
    (written atomically, so whole): the rerun writes that case again instead of refusing the file."""
    write_cases(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert predict(capsys, tmp_path / "in", models["echo"].path, out)[0] == 0
    lines = (out / RUN_LOG_NAME).read_text("utf-8").splitlines()
    (out / RUN_LOG_NAME).write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # case1's outcome never came
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, out)
    assert code == 0 and (events[-1]["skipped"], events[-1]["succeeded"]) == (1, 1)
    assert [(r["case"], r["status"]) for r in log_of(out, last_run=True)] == [("case0", "skipped"), ("case1", "done")]


def test_a_worker_that_cannot_start_is_the_runs_error(models, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    write_cases(tmp_path / "in", 2)
    code = cli.main(["predict", "-i", str(tmp_path / "in"), "-m", str(models["echo"].path), "-o", str(tmp_path / "out"),
                     "--device", "cuda", "--progress", "json"])  # fmt: skip
    events = events_of(capsys.readouterr().out)
    assert code == EXIT_FAILED and "no CUDA GPU is available" in events[-1]["message"]
    assert log_of(tmp_path / "out") == []


def test_two_runs_into_one_folder_are_refused(models, tmp_path, capsys):
    write_cases(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    with RunLog(tmp_path / "out", "another run"):
        code, events = predict(capsys, tmp_path / "in", models["echo"].path, tmp_path / "out")
    assert code == EXIT_FAILED and "Another unetseg run is writing to" in events[-1]["message"]


def test_a_cohort_needs_an_output_folder_and_a_known_format(models, tmp_path, capsys):
    write_cases(tmp_path / "in", 1)
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, tmp_path / "all.seg.nrrd")
    assert code == EXIT_FAILED and "-o names the output folder" in events[-1]["message"]
    code, events = predict(capsys, tmp_path / "in", models["echo"].path, tmp_path / "out", "--format", "png")
    assert code == EXIT_FAILED and "Unknown output format 'png'" in events[-1]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
