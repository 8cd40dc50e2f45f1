"""The bundled models' ONNX exports (benchmarks/bundled_onnx.py): present, made from the shipped weights, within
the size budget, and segmenting each model's sample at its card's Dice without PyTorch's help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unetseg.inference.onnx_backend import WEIGHTS_DIGEST_KEY, weights_digest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "Models"
SAMPLE_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "SampleData"
ONNX_LIMIT_BYTES = 25_000_000
TOLERANCE = 0.02
MODEL_FOLDERS = sorted(f for f in MODELS_DIR.glob("*") if (f / "model.json").is_file()) if MODELS_DIR.is_dir() else []
needs_models = pytest.mark.skipif(not MODEL_FOLDERS, reason="no bundled model")


@needs_models
def test_every_bundled_model_ships_an_export_of_its_own_weights():
    ort = pytest.importorskip("onnxruntime")
    for folder in MODEL_FOLDERS:
        assert (folder / "model.onnx").is_file(), f"{folder.name}: run benchmarks/bundled_onnx.py"
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        recorded = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_DIGEST_KEY)
        assert recorded == weights_digest(folder / "weights.safetensors"), f"{folder.name}: export is out of date"


@needs_models
def test_bundled_exports_fit_their_size_budget():
    assert sum((f / "model.onnx").stat().st_size for f in MODEL_FOLDERS) < ONNX_LIMIT_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("folder", MODEL_FOLDERS, ids=lambda f: f.name)
def test_onnx_backend_segments_the_sample_at_the_card_dice(folder: Path):
    pytest.importorskip("onnxruntime")
    from unetseg.evaluation.metrics import dice
    from unetseg.inference.predictor import segment
    from unetseg.io import read_image, read_label_image
    from unetseg.models.package import load_package

    package = load_package(folder)
    entry = package.provenance["metrics"]["sample"]
    samples = {s["name"]: s for s in json.loads((SAMPLE_DIR / "samples.json").read_text(encoding="utf-8"))["samples"]}
    sample = samples[entry["sample"]]
    images = [read_image(SAMPLE_DIR / name) for name in sample["images"]]
    result = segment(images, package, device="cpu", backend="onnx")
    reference = read_label_image(SAMPLE_DIR / sample["reference"]).image.array
    values = {label.name: label.value for label in package.labels}
    for name, stated in entry["dice"].items():
        got = dice(result.image.array == values[name], reference == values[name])
        assert got >= stated - TOLERANCE, f"{package.name} (ONNX) on {sample['name']}: Dice {name} {got:.3f} < {stated}"
