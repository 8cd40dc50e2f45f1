"""The JSON-lines progress protocol: what the CLI prints is what the Slicer panel parses back."""

import io
import json
from pathlib import Path

from unetseg.jobs.progress import ProgressEmitter, parse_progress_line


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_every_event_is_one_json_line_that_parses_back():
    out = io.StringIO()
    emit = ProgressEmitter(out)
    emit(0.25, "sliding window", "batch 1 of 4")
    emit.log("using cpu")
    emit.error("weights do not fit the network")
    emit.result(output=Path("/tmp/seg.nrrd"), labels=3, hd95=float("inf"))

    events = [parse_progress_line(line) for line in _lines(out)]
    assert events == [
        {"type": "progress", "stage": "sliding window", "fraction": 0.25, "message": "batch 1 of 4"},
        {"type": "log", "stage": "sliding window", "message": "using cpu"},
        {"type": "error", "stage": "sliding window", "message": "weights do not fit the network"},
        {"type": "result", "output": "/tmp/seg.nrrd", "labels": 3, "hd95": float("inf")},
    ]


def test_fractions_are_clamped_and_unknown_is_null():
    out = io.StringIO()
    emit = ProgressEmitter(out)
    emit(1.0000000002, "done")
    emit(-0.1, "start")
    emit(float("nan"), "loading")
    emit(None, "loading")
    assert [json.loads(line)["fraction"] for line in _lines(out)] == [1.0, 0.0, None, None]


def test_emitter_defaults_to_stdout(capsys):
    ProgressEmitter()(0.5, "stage")
    assert json.loads(capsys.readouterr().out)["fraction"] == 0.5


def test_foreign_lines_become_log_events_and_blank_lines_are_skipped():
    assert parse_progress_line("Loading weights...\n") == {"type": "log", "message": "Loading weights..."}
    assert parse_progress_line('{"no": "type"}') == {"type": "log", "message": '{"no": "type"}'}
    assert parse_progress_line("[1, 2]") == {"type": "log", "message": "[1, 2]"}
    assert parse_progress_line("   \n") is None
