"""The bundled sample volumes (`Resources/SampleData/samples.json`): read by the demo, the tests and Slicer's
SampleData registration. Torch-free and numpy-free, so the Slicer module can import it at start-up."""

from __future__ import annotations

import json
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
