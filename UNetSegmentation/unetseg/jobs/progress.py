"""The JSON-lines progress protocol spoken by `unetseg … --progress json` and read by the Slicer panel.

Every line a producer prints is one JSON object with a ``type``:
- ``"progress"``: ``{"type", "stage", "fraction" (0–1 or null when unknown), "message"}``;
- ``"log"``: ``{"type", "stage", "message"}`` — a line for the log box;
- ``"error"``: ``{"type", "stage", "message"}`` — the run failed, ``message`` says why;
- ``"result"``: ``{"type", …fields}`` — what the run produced (e.g. ``"output"``: the written file).

Readers accept any other line too (a library printing to stdout): it becomes a ``"log"`` event.
Torch-free on purpose: the Slicer GUI process imports it.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any, TextIO

EVENT_TYPES = ("progress", "log", "error", "result")


class ProgressEmitter:
    """Print progress events as JSON lines; callable as ``emit(fraction, stage, message=None)``.

    Its call signature is the ``progress(fraction, stage)`` callback of the predictor and the trainer,
    so an emitter can be passed to them directly. Thread-safe; every line is flushed at once so a
    reader on the other end of a pipe sees it immediately.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self.stage = ""

    def __call__(self, fraction: float | None, stage: str, message: str | None = None, **fields: Any) -> None:
        """Report that ``stage`` is ``fraction`` done (clamped to 0–1; ``None`` when unknown); extra ``fields``
        (e.g. the trainer's epoch, losses, validation Dice, ETA) are added to the event."""
        self.stage = stage
        self._write({"type": "progress", "stage": stage, "fraction": _clamp(fraction), "message": message,
                     **fields})

    def log(self, message: str, stage: str | None = None) -> None:
        """A line for the log box."""
        self._write({"type": "log", "stage": self.stage if stage is None else stage, "message": message})

    def error(self, message: str, stage: str | None = None) -> None:
        """Report the failure that ends the run."""
        self._write({"type": "error", "stage": self.stage if stage is None else stage, "message": message})

    def result(self, **fields: Any) -> None:
        """Report what the run produced (JSON-serialisable fields; paths are written as strings)."""
        self._write({"type": "result", **fields})

    def _write(self, event: dict) -> None:
        line = json.dumps(event, default=str)  # NaN/Infinity metrics stay readable by Python's json
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _clamp(fraction: float | None) -> float | None:
    """A fraction within 0–1 (rounding can overshoot by an ulp); NaN means unknown."""
    if fraction is None or math.isnan(fraction):
        return None
    return min(1.0, max(0.0, float(fraction)))


def parse_progress_line(line: str) -> dict | None:
    """The event one output line carries; a non-protocol line becomes a log event, a blank line None."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if isinstance(event, dict) and event.get("type") in EVENT_TYPES:
        return event
    return {"type": "log", "message": text}
