"""The jobs layer: one exit-code table, one cancel handler for SIGINT and SIGTERM, one way to report errors."""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

import pytest

from unetseg import cli
from unetseg.jobs import runner
from unetseg.jobs.progress import parse_progress_line
from unetseg.jobs.runner import EXIT_CANCELLED, EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_USAGE, JobCancelled


def test_help_documents_every_exit_code():
    text = cli.build_parser().format_help()
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in text
    assert sorted(EXIT_CODES) == [EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED] == [0, 1, 2, 3]


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
