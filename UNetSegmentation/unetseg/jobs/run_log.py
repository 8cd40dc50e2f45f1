"""A cohort's run log: one JSON line per case and run, next to the outputs; it decides what a rerun skips.

Each record: ``run`` (when the run started), ``case``, ``inputs``, ``output``, ``status`` (started, then done,
failed or cancelled; or skipped), ``error``, ``seconds``, ``device``, ``worker`` (host:pid), ``model`` (name and
version), ``bytes`` and the predictor's ``messages``. A case is **complete** — a rerun skips it — when its output
file exists, the log's last ``done`` record for that output names the same model and the same size in bytes, and
the file's header reads. An output the log does not vouch for is never replaced without ``--overwrite``, except
one a case of this model started and never reported (the run was killed): outputs are written atomically, so that
file is this model's and is simply written again. Lines are appended,
flushed and fsynced one by one, so an interruption loses at most the record being written (a torn last line is
ignored when the log is read). While a run writes the log it holds a lock on it: two runs into one folder
would repeat each other's work.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from unetseg.io.dicom_seg import DICOM_SEG_SUFFIX, read_dicom_seg_header

RUN_LOG_NAME = "unetseg-run.jsonl"
_FIRST_FIELDS = ("case", "inputs", "output", "status", "error", "seconds", "device", "worker")  # as a person reads
try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
    fcntl = None


class RunLog:
    """The run log of one output folder, open for appending (and locked) inside a ``with`` block."""

    def __init__(self, folder: Path, model: str) -> None:
        self.path = folder / RUN_LOG_NAME
        self.model = model
        self.run = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
        self._done: dict[str, dict] = {}
        self._started: dict[str, dict] = {}
        self._handle: Any = None

    def __enter__(self) -> RunLog:
        self._handle = self.path.open("a", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._handle.close()
                raise ValueError(
                    f"Another unetseg run is writing to {self.path.parent} (its run log {self.path.name} is locked). "
                    "Wait for it to finish, or write to another folder."
                ) from None
        for record in read_records(self.path):
            self._remember(record)
        return self

    def _remember(self, record: dict) -> None:
        """Keep the last ``done`` record of each output, and the cases started without an outcome since."""
        output, status = record.get("output"), record.get("status")
        if not output or status == "skipped":
            return
        if status == "started":
            self._started[output] = record
            return
        self._started.pop(output, None)
        if status == "done":
            self._done[output] = record

    def __exit__(self, *exc: object) -> None:
        self._handle.close()  # closing releases the lock

    def append(self, **record: Any) -> dict:
        """Write one record (``run`` and ``model`` added), durably, before the caller goes on."""
        record = {"run": self.run, **{k: record.pop(k) for k in _FIRST_FIELDS if k in record}, **record,
                  "model": self.model}  # fmt: skip
        self._handle.write(json.dumps(record, default=str) + "\n")
        self._handle.flush()
        _fsync(self._handle)
        self._remember(record)
        return record

    def existing(self, output: str) -> str | None:
        """"complete" when ``output`` is; None when it is to be written (absent, or left by an interrupted case of
        this model); otherwise why it cannot be trusted."""
        path = Path(output)
        if not path.exists():
            return None
        interrupted = self._started.get(output)
        if interrupted is not None and interrupted.get("model") == self.model:
            return None  # written (atomically) by this model in a run that was killed before it could say so
        record = self._done.get(output)
        if record is None:
            return f"{path} exists but this folder's run log does not record writing it"
        if record.get("model") != self.model:
            return f"{path} was written by model {record.get('model')}, not {self.model}"
        if record.get("bytes") != path.stat().st_size:
            size = path.stat().st_size
            return f"{path} changed since the run log recorded it ({record.get('bytes')} bytes, now {size})"
        try:
            read_output_header(path)
        except (OSError, ValueError, RuntimeError) as error:
            return f"{path} does not read ({str(error).strip().splitlines()[-1]})"
        return "complete"


def read_records(path: Path) -> list[dict]:
    """The records of a run log (none when it does not exist); a torn or foreign line is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_output_header(path: Path) -> None:
    """Raise unless an output file's header reads: a DICOM SEG's, or the image header SimpleITK reads."""
    if path.name.lower().endswith(DICOM_SEG_SUFFIX):
        read_dicom_seg_header(path)
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()


def remove_stale_temporaries(outputs: list[str]) -> int:
    """Remove what an interrupted write left beside these outputs (``.tmp-<hex>-<name>``, from `atomic_write`).

    A run killed outright (SIGKILL, a power cut) cannot clean up; the next run, holding the lock, can.
    """
    wanted: dict[Path, set[str]] = {}
    for output in outputs:
        wanted.setdefault(Path(output).parent, set()).add(Path(output).name)
    removed = 0
    for folder, names in wanted.items():
        for entry in folder.glob(".tmp-*") if folder.is_dir() else ():
            if entry.name.split("-", 2)[-1] in names and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def _fsync(handle: Any) -> None:
    os.fsync(handle.fileno())
