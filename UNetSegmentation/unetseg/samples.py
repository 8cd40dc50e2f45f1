"""The bundled sample volumes (`Resources/SampleData/samples.json`): read by the demo, the tests and Slicer's
SampleData registration. Torch-free and numpy-free, so the Slicer module can import it at start-up."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
SAMPLES_FILE = SAMPLE_DIR / "samples.json"


def load_samples(modality: str | None = None) -> list[dict]:
    """The bundled samples (optionally of one modality), each with its files, reference, model and licence."""
    if not SAMPLES_FILE.is_file():
        return []
    samples = json.loads(SAMPLES_FILE.read_text(encoding="utf-8"))["samples"]
    return [s for s in samples if modality is None or s.get("modality") == modality]


def sample_path(name: str) -> Path:
    """Absolute path of a file of the bundled sample data; a clear error when it is missing."""
    path = SAMPLE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"Bundled sample file {path} is missing; reinstall the extension.")
    return path


def unseen_by(model: str) -> list[dict]:
    """The bundled samples that `model` never saw in training (marked ``heldout_for`` it)."""
    return [s for s in load_samples() if model in s.get("heldout_for", [])]


def showcase(models: Iterable[str], modality: str | None = None) -> dict | None:
    """The sample the demo and the self-test segment first: the first one whose model is among `models` and has
    a shipped case it never saw (so a held-out Dice stands next to the training case's), else the first one whose
    model is among `models`; None when no sample names one of them."""
    available = set(models)
    candidates = [s for s in load_samples(modality) if s.get("model") in available]
    return next((s for s in candidates if unseen_by(s["model"])), next(iter(candidates), None))


def reference_labels(sample: dict, names: Iterable[str]) -> list[str]:
    """The label names a sample's reference holds among `names` (its ``reference_labels``; default all): a
    reference that labels only the spleen scores only the spleen."""
    names = list(names)
    held = sample.get("reference_labels")
    return names if held is None else [n for n in names if n in held]
