"""The jobs layer: one exit-code table, one cancel handler for SIGINT and SIGTERM, one way to report errors."""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

import pytest
from tiny_models import write_tiny_package

from unetseg import cli
from unetseg.jobs import runner
from unetseg.jobs.progress import parse_progress_line
from unetseg.jobs.runner import (
    EXIT_CANCELLED,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    JobCancelled,
)


def test_help_documents_every_exit_code():
    text = cli.build_parser().format_help()
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in text
    assert sorted(EXIT_CODES) == [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_SOME_FAILED] == [0, 1, 2, 3, 4]


def test_a_wrong_command_line_is_the_usage_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--no-such-option"])
    assert exit_info.value.code == EXIT_USAGE


@pytest.mark.parametrize("command", [["demo"], ["plan", "d"], ["models"], ["models", "import", "m.zip"],
                                     ["predict", "-i", "x", "-m", "y", "-o", "z"], ["export-onnx", "m"],
                                     ["train", "d", "--out", "o"], ["evaluate", "p", "r"]])  # fmt: skip
def test_every_command_speaks_the_json_protocol(command):
    args = cli.build_parser().parse_args([*command, "--progress", "json"])
    assert args.progress == "json" and args.job


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_job_that_does_not_poll_stops_at_once(signum):
    before = signal.getsignal(signum)
    with pytest.raises(JobCancelled, match=signal.Signals(signum).name), runner.cancel_on_signals(polls=False):
        os.kill(os.getpid(), signum)
    assert signal.getsignal(signum) is before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_polling_job_gets_the_event_first_and_an_interrupt_on_a_second_signal(signum):
    with runner.cancel_on_signals(polls=True) as cancel:
        os.kill(os.getpid(), signum)
        assert cancel.is_set()
        with pytest.raises(JobCancelled):
            os.kill(os.getpid(), signum)


@pytest.fixture
def fake_job(monkeypatch):
    """A job module `unetseg.jobs.fake` whose `run` does what the test sets."""
    module = types.ModuleType("unetseg.jobs.fake")
    monkeypatch.setitem(sys.modules, "unetseg.jobs.fake", module)
    return module


def _run(fake_job, capsys, work, json_progress=True) -> tuple[int, list[dict]]:
    fake_job.run = work
    code = runner.run_job("fake", "fake:run", {}, [], json_progress=json_progress)
    return code, [parse_progress_line(line) for line in capsys.readouterr().out.splitlines()]


def test_a_user_error_is_one_error_event_and_exit_1(fake_job, capsys):
    def work(job, options):
        job.log("reading")
        raise FileNotFoundError("Image not found")

    code, events = _run(fake_job, capsys, work)
    assert code == EXIT_FAILED
    assert [e["type"] for e in events] == ["log", "error"] and events[-1]["message"] == "Image not found"


def test_a_bug_keeps_its_traceback_after_an_error_event(fake_job):
    def work(job, options):
        raise RuntimeError("a bug")

    fake_job.run = work
    with pytest.raises(RuntimeError, match="a bug"):
        runner.run_job("fake", "fake:run", {}, [])


def test_a_domain_cancel_after_a_signal_is_exit_3(fake_job, capsys):
    class DomainCancelledError(Exception):
        pass

    def work(job, options):
        job.cancel.set()  # as the signal handler does for a polling job
        raise DomainCancelledError("Segmentation cancelled.")

    code, events = _run(fake_job, capsys, work)
    assert code == EXIT_CANCELLED and events[-1] == {"type": "error", "stage": "fake", "message":
                                                      "Segmentation cancelled."}


def test_success_reports_the_result(fake_job, capsys):
    code, events = _run(fake_job, capsys, lambda job, options: job.result("Wrote x", output="x"))
    assert code == EXIT_OK and events == [{"type": "result", "output": "x"}]
    fake_job.run = lambda job, options: job.result("Wrote x", output="x")
    assert runner.run_job("fake", "fake:run", {}, []) == EXIT_OK and capsys.readouterr().out == "Wrote x\n"


def test_the_readme_lists_the_same_exit_codes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in readme


# ---------------------------------------------------------------------------------------------- train --out


@pytest.fixture
def fake_train(monkeypatch):
    """`unetseg train` with the trainer replaced by a recorder (what reaches it, and whether it ran at all)."""
    from unetseg.jobs import train as train_job

    calls = []

    def record(dataset, out, **kwargs):
        calls.append({"out": Path(out), **kwargs})
        return types.SimpleNamespace(path=Path(out), name="m", provenance={}, describe=lambda: "trained")

    monkeypatch.setattr(train_job, "train", record)
    return calls


def _train(out: Path, *flags: str) -> int:
    return cli.main(["train", "dataset", "--out", str(out), "--device", "cpu", *flags])


def _run_folder(out: Path) -> Path:
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint_last.pt").write_bytes(b"state")
    (out / "training_log.jsonl").write_text("{}\n", encoding="utf-8")
    return out


def test_train_refuses_a_model_package_folder(fake_train, tmp_path, capsys):
    """An imported user model has no checkpoints/: `--out` over it used to replace its weights silently."""
    package = write_tiny_package(tmp_path / "my-model")
    weights = package.weights_path.read_bytes()
    assert _train(package.path) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "holds a model package" in err and "would replace its weights" in err and "--overwrite" in err
    assert fake_train == [] and package.weights_path.read_bytes() == weights


def test_train_refuses_any_non_empty_folder_and_names_the_fixes(fake_train, tmp_path, capsys):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious", encoding="utf-8")
    assert _train(tmp_path / "thesis") == EXIT_FAILED
    err = capsys.readouterr().err
    assert "is not empty (it holds chapter1.tex)" in err and "--overwrite" in err
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    assert _train(tmp_path / "a-file") == EXIT_FAILED and "is a file" in capsys.readouterr().err
    assert fake_train == [] and (tmp_path / "thesis" / "chapter1.tex").read_text(encoding="utf-8") == "precious"


def test_train_refuses_an_earlier_run_unless_resumed(fake_train, tmp_path, capsys):
    out = _run_folder(tmp_path / "run")
    assert _train(out) == EXIT_FAILED and "--resume" in capsys.readouterr().err and fake_train == []
    assert _train(out, "--resume") == EXIT_OK
    assert fake_train[-1]["resume"] is True and (out / "checkpoints" / "checkpoint_last.pt").is_file()


def test_train_into_a_new_or_empty_folder_needs_no_flag(fake_train, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _train(tmp_path / "empty") == EXIT_OK and _train(tmp_path / "new") == EXIT_OK
    assert [c["resume"] for c in fake_train] == [False, False]


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(fake_train, tmp_path):
    out = _run_folder(write_tiny_package(tmp_path / "my-model").path)
    (out / "model.onnx").write_bytes(b"stale export")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert _train(out, "--overwrite") == EXIT_OK and fake_train[-1]["resume"] is False
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "notes.txt", "weights.safetensors"]


def test_resume_and_overwrite_exclude_each_other(fake_train, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path / "x", "--resume", "--overwrite")
    assert exit_info.value.code == EXIT_USAGE and fake_train == []
