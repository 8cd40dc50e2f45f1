"""`--backend auto`: the fastest engine installed that can run the model (OpenVINO, then ONNX Runtime, on a current
ONNX export; torch on a GPU or without an export), and the rules for engines asked for by name."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tiny_models import write_tiny_package

from unetseg import cli, phantoms
from unetseg.inference import engines
from unetseg.inference.engines import choose_backend
from unetseg.inference.predictor import segment
from unetseg.models.package import load_package


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny CT package with random weights and its ONNX export."""
    package = write_tiny_package(tmp_path_factory.mktemp("models") / "auto-ct", "auto-ct")
    assert cli.main(["export-onnx", str(package.path)]) == 0
    return load_package(package.path)


def _without(monkeypatch, *modules: str) -> None:
    """Choose as if ``modules`` were not installed."""
    installed = engines._installed
    monkeypatch.setattr(engines, "_installed", lambda module: module not in modules and installed(module))


def test_auto_takes_openvino_then_onnx_runtime_then_torch_on_the_cpu(exported, monkeypatch):
    notes: list[str] = []
    if engines._installed("openvino"):
        assert choose_backend("auto", "cpu", exported, notes.append) == "openvino"
    _without(monkeypatch, "openvino")
    assert choose_backend("auto", "cpu", exported, notes.append) == "onnx"
    _without(monkeypatch, "openvino", "onnxruntime")
    assert choose_backend("auto", "cpu", exported, notes.append) == "torch"
    assert notes == []


def test_auto_runs_torch_without_a_current_export_or_on_a_gpu(exported, tmp_path, monkeypatch):
    unexported = write_tiny_package(tmp_path / "plain", "plain")
    assert choose_backend("auto", "cpu", unexported, print) == "torch"
    weights = exported.weights_path
    later = exported.onnx_path.stat().st_mtime + 60
    os.utime(weights, (later, later))  # weights newer than the export: the export is out of date
    try:
        assert choose_backend("auto", "cpu", exported, print) == "torch"
    finally:
        os.utime(weights, (later - 120, later - 120))
    assert choose_backend("auto", "cuda", exported, print) == "torch"  # a GPU asked for: torch (CUDA, MPS)
    _without(monkeypatch, "torch")
    assert choose_backend("auto", "cpu", unexported, print) == "onnx"  # which then asks for the export


def test_engines_asked_for_by_name(exported, monkeypatch):
    notes: list[str] = []
    assert choose_backend("onnx", "cpu", exported, notes.append) == "onnx"
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        choose_backend("tensorrt", "cpu", exported, notes.append)
    _without(monkeypatch, "torch", "openvino")
    assert choose_backend("torch", "cpu", exported, notes.append) == "onnx"
    assert notes == ["PyTorch is not installed: running the model's ONNX export with ONNX Runtime."]
    with pytest.raises(ValueError, match="needs OpenVINO: pip install openvino"):
        choose_backend("openvino", "cpu", exported, notes.append)


def test_auto_segments_as_torch_does_and_says_which_engine_ran(exported):
    image, _ = phantoms.ct_phantom(shape=(30, 56, 48))
    lines: list[str] = []
    auto = segment(image, exported, device="cpu", backend="auto", precision="fp32",
                   progress=lambda _f, stage: lines.append(stage)).image.array  # fmt: skip
    reference = segment(image, exported, device="cpu", backend="torch", precision="fp32").image.array
    engine = next(line for line in lines if line.startswith("engine: "))
    expected = "openvino" if engines._installed("openvino") else "onnxruntime"
    assert engine.startswith(f"engine: {expected}"), engine
    assert auto.max() > 0 and float(np.mean(auto == reference)) > 0.999
