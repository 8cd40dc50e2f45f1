"""The `unetseg train` job: run the trainer with the parsed arguments; report progress and the trained package."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetseg.jobs.runner import Job
from unetseg.models.manifest import DEFAULT_ONNX, MANIFEST_FILE
from unetseg.training.checkpoints import LAST
from unetseg.training.setup import TrainOptions
from unetseg.training.trainer import CHECKPOINT_DIR, LOG_FILE, train

# What a run leaves in --out besides the package: `--overwrite` removes these (and a stale ONNX export) first.
_PREVIOUS_RUN = (CHECKPOINT_DIR, LOG_FILE, DEFAULT_ONNX)
_SHOWN = 5


def print_progress(fraction: float | None, stage: str, message: str | None = None, **fields: Any) -> None:
    """A plain-text progress callback for the terminal (``--progress text``)."""
    if message:
        print(f"[{100 * (fraction or 0):5.1f}%] {message}", flush=True)


def check_output_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Raise ValueError when training into ``out`` would destroy what it holds: a training run (unless
    ``resume``), a model package or anything else (unless ``overwrite``). A new or empty folder is always fine."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a new folder for the model.")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries or overwrite or resume:  # the trainer checks that a resumed run has its checkpoint
        return
    fixes = "choose a new or empty folder, or pass --overwrite to replace it"
    if (out / CHECKPOINT_DIR / LAST).is_file():
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it, or {fixes}.")
    if (out / MANIFEST_FILE).is_file():
        raise ValueError(f"{out} holds a model package: training there would replace its weights; {fixes}.")
    shown = ", ".join(entries[:_SHOWN]) + (", …" if len(entries) > _SHOWN else "")
    raise ValueError(f"{out} is not empty (it holds {shown}); {fixes} "
                     "(the package and training files are replaced, other files kept).")


def clear_previous_run(out: Path) -> None:
    """Remove an earlier run's checkpoints, log and ONNX export from ``out`` (``--overwrite``); keep the rest."""
    for name in _PREVIOUS_RUN:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run(job: Job, options: dict[str, Any]) -> None:
    """`unetseg train`: `train` with the parsed options, stopping between iterations when cancelled.

    ``--out`` must be new or empty, or hold the run being resumed, unless ``--overwrite`` says to replace it.
    """
    out, resume, overwrite = Path(options["out"]).expanduser(), bool(options.get("resume")), options.get("overwrite")
    check_output_folder(out, resume, bool(overwrite))
    if overwrite and _rank() == 0:
        clear_previous_run(out)
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    fields = {k: v for k, v in options.items() if k in known and v is not None}
    pkg = train(options["dataset"], out, plans=options.get("plans"), init=options.get("init"),
                resume=resume, progress=job.emitter or print_progress, cancel=job.cancel,
                cache_dir=options.get("cache_dir"), command=command_line(job.argv), **fields)
    if _rank() != 0:
        return  # under torchrun, rank 0 alone reports
    job.result(pkg.describe(), output=str(pkg.path), name=pkg.name, metrics=pkg.provenance.get("metrics", {}))


def _rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this run, for the model card."""
    return shlex.join(["unetseg", *(sys.argv[1:] if argv is None else argv)])
