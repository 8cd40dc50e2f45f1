"""Small cohorts for the cohort tests: echo images whose labels the echo model gives back, a CLI call that returns
the JSON events, and readers of the outputs and the run log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from echo_model import echo_image

from unetseg import cli, phantoms
from unetseg.image import Image
from unetseg.io import read_label_image
from unetseg.jobs.progress import parse_progress_line
from unetseg.jobs.run_log import RUN_LOG_NAME, read_records


def case_image(seed: int, shape: tuple[int, int, int] = (8, 20, 20)) -> tuple[Image, np.ndarray]:
    """A small CT-shaped echo image and the labels the echo model gives back for it."""
    _, labels = phantoms.ct_phantom(shape=shape, seed=seed)
    labels = labels.array.clip(0, 3).astype(np.uint8)
    return echo_image(Image(labels)), labels


def write_cases(folder: Path, count: int, **kwargs) -> dict[str, np.ndarray]:
    """``count`` cases as NRRD files in ``folder``; returns each case's expected labels by case id."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for seed in range(count):
        image, labels = case_image(seed, **kwargs)
        sitk.WriteImage(image.to_sitk(), str(folder / f"case{seed}.nrrd"))
        expected[f"case{seed}"] = labels
    return expected


def events_of(text: str) -> list[dict]:
    """The JSON-lines events in a command's stdout."""
    return [e for e in (parse_progress_line(line) for line in text.splitlines()) if e is not None]


def predict(capsys, source, model, out, *extra) -> tuple[int, list[dict]]:
    """`unetseg predict -i SOURCE -m MODEL -o OUT` on the CPU with JSON progress: the exit code and the events."""
    code = cli.main(["predict", "-i", str(source), "-m", str(model), "-o", str(out), "--device", "cpu",
                     "--progress", "json", *extra])  # fmt: skip
    return code, events_of(capsys.readouterr().out)


def log_of(out: Path, last_run: bool = False) -> list[dict]:
    """The outcomes in an output folder's run log (not the ``started`` records); only the last run's if asked."""
    records = read_records(out / RUN_LOG_NAME)
    if last_run and records:
        records = [r for r in records if r["run"] == records[-1]["run"]]
    return [r for r in records if r["status"] != "started"]


def leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted writes anywhere under ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.rglob(".tmp-*"))


def assert_outputs(out: Path, expected: dict[str, np.ndarray], suffix: str = ".seg.nrrd") -> None:
    """Each case's output holds exactly its expected labels."""
    for case_id, labels in expected.items():
        np.testing.assert_array_equal(read_label_image(out / f"{case_id}{suffix}").image.array, labels, case_id)
