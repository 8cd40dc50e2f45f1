"""ONNX export (`unetseg export-onnx`) and the ONNX Runtime backend: same labels as torch, no torch needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fed_windows import FedWindows

from unetseg import cli, phantoms
from unetseg.inference.predictor import segment
from unetseg.jobs.runner import EXIT_FAILED
from unetseg.models.package import load_package, save_package
from unetseg.networks.factory import build_network

REPO = Path(__file__).resolve().parents[1]


def _random_model_manifest() -> dict:
    config = {"variant": "unet", "spatial_dims": 3, "in_channels": 1, "num_classes": 3, "width": 0.125}
    return {
        "name": "random-ct", "version": "1", "modality": "CT", "variant": "unet", "spatial_dims": 3,
        "network": config, "inputs": [{"name": "CT"}],
        "labels": [{"value": 1, "name": "bright"}, {"value": 2, "name": "dark"}],
        "preprocessing": {
            "orientation": "RAS", "target_spacing": [2.0, 2.0, 3.5], "crop": "body",
            "normalization": [{"scheme": "ct", "mean": 0.0, "std": 400.0, "clip": [-1000.0, 1000.0]}],
        },
        "inference": {"patch_size": [32, 32, 32], "mirror_axes": [0]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomly initialised CT U-Net package, exported through the command line."""
    torch.manual_seed(0)
    manifest = _random_model_manifest()
    folder = tmp_path_factory.mktemp("models") / "random-ct"
    package = save_package(folder, manifest, build_network(manifest["network"]).state_dict())
    assert cli.main(["export-onnx", str(folder)]) == 0
    return package


@pytest.mark.slow
def test_export_writes_model_onnx_next_to_the_weights(exported, capsys):
    assert exported.onnx_path.is_file() and exported.onnx_path.parent == exported.weights_path.parent
    import onnx

    model = onnx.load(str(exported.onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == 5 and all(d.dim_param for i, d in enumerate(dims) if i != 1)  # batch and spatial axes dynamic


@pytest.mark.slow
def test_torch_and_onnx_backends_agree(exported, monkeypatch):
    windows = FedWindows(monkeypatch)
    image, _ = phantoms.ct_phantom(shape=(30, 56, 48))
    by_backend = {
        backend: segment(image, exported, device="cpu", backend=backend, tta=True).image
        for backend in ("torch", "onnx")
    }
    assert windows.check() == (1, 1, 32, 32, 32)  # the session was opened for the windows it ran on
    assert by_backend["onnx"].same_grid(image)
    for value in (1, 2):
        a, b = by_backend["torch"].array == value, by_backend["onnx"].array == value
        assert a.sum() > 100  # a real comparison: the random network does predict this class
        assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) >= 0.999


@pytest.mark.slow
def test_outdated_or_missing_export_is_a_clear_error(exported, tmp_path):
    image, _ = phantoms.ct_phantom(shape=(12, 24, 24))
    retrained = tmp_path / "retrained"
    shutil.copytree(exported.path, retrained)
    torch.manual_seed(2)  # new weights under the old export
    save_package(retrained, exported.manifest, build_network(exported.network_config).state_dict())
    with pytest.raises(ValueError, match=r"older than its weights\. Re-export it: unetseg export-onnx"):
        segment(image, load_package(retrained), device="cpu", backend="onnx")
    torch.manual_seed(1)
    manifest = {**_random_model_manifest(), "name": "not-exported"}
    other = save_package(tmp_path / "other", manifest, build_network(manifest["network"]).state_dict())
    with pytest.raises(ValueError, match=r"has no ONNX export.*unetseg export-onnx not-exported"):
        segment(image, other, device="cpu", backend="onnx")


@pytest.mark.slow
def test_export_is_checked_by_content_not_by_file_times(exported, tmp_path):
    """A git checkout or an install may leave the weights newer than their export: that export is still current.
    An export made before the digest was recorded falls back to comparing the file times."""
    import onnx

    image, _ = phantoms.ct_phantom(shape=(12, 24, 24))
    later = exported.onnx_path.stat().st_mtime + 10
    os.utime(exported.weights_path, (later, later))
    try:
        assert segment(image, exported, device="cpu", backend="onnx").image.same_grid(image)
    finally:
        os.utime(exported.weights_path, (time.time() - 3600,) * 2)
    legacy = tmp_path / "legacy"
    shutil.copytree(exported.path, legacy)
    model = onnx.load(str(legacy / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(legacy / "model.onnx"))
    later = (legacy / "model.onnx").stat().st_mtime + 10
    os.utime(legacy / "weights.safetensors", (later, later))
    with pytest.raises(ValueError, match=r"older than its weights\. Re-export it"):
        segment(image, load_package(legacy), device="cpu", backend="onnx")


def test_export_of_a_missing_model_fails_cleanly(tmp_path, capsys):
    assert cli.main(["export-onnx", str(tmp_path / "nowhere")]) == EXIT_FAILED
    assert "No model" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_backend_runs_without_torch(exported, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed: importing them fails
        from unetseg import cli
        from unetseg import phantoms
        from unetseg.inference.predictor import segment
        from unetseg.models.package import load_package
        image, _ = phantoms.ct_phantom(shape=(12, 24, 24))
        options = {{"largest_component": True, "fill_holes": True, "min_island_mm3": 10.0}}
        result = segment(image, load_package({str(exported.path)!r}), device="cpu", postprocess=options)
        print("messages:", result.messages)
        import SimpleITK as sitk
        sitk.WriteImage(image.to_sitk(), {str(tmp_path / "ct.nrrd")!r})
        code = cli.main(["predict", "-i", {str(tmp_path / "ct.nrrd")!r}, "-m", {str(exported.path)!r},
                         "-o", {str(tmp_path / "out.seg.nrrd")!r}, "--backend", "onnx", "--device", "cpu"])
        assert code == 0 and sys.modules["torch"] is None
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "PyTorch is not installed" in done.stdout
    assert (tmp_path / "out.seg.nrrd").is_file()
