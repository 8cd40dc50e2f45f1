"""The precision check end to end: records in the manifest, `auto` following them (and the faked ISA), the engine
line in the progress log, the int8 export run without torch, the CLI and the import."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg import cli, phantoms
from unetseg.inference import int8_export
from unetseg.inference.engines import int8_path
from unetseg.inference.predictor import segment
from unetseg.models.manifest import read_manifest
from unetseg.models.package import load_package, save_package
from unetseg.models.precision_check import check_precisions, window_labels
from unetseg.models.validation_windows import validation_windows
from unetseg.networks.factory import build_network

REPO = Path(__file__).resolve().parents[1]
ZEN4 = "avx avx2 fma avx512f avx512_bf16 avx512_vnni"
ZEN2 = "avx avx2 fma"


def _manifest(name: str = "precision-ct") -> dict:
    config = {"variant": "unet", "spatial_dims": 3, "in_channels": 1, "num_classes": 3, "width": 0.125}
    return {
        "name": name, "version": "1", "modality": "CT", "variant": "unet", "spatial_dims": 3, "network": config,
        "inputs": [{"name": "CT"}], "labels": [{"value": 1, "name": "bright"}, {"value": 2, "name": "dark"}],
        "preprocessing": {"orientation": "RAS", "target_spacing": [2.0, 2.0, 3.5], "crop": "body",
                          "normalization": [{"scheme": "ct", "mean": 0.0, "std": 400.0, "clip": [-1000.0, 1000.0]}]},
        "inference": {"patch_size": [16, 32, 32]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A random-weight CT package with its ONNX export, validated: (package, record)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "precision-ct"
    save_package(folder, _manifest(), build_network(_manifest()["network"]).state_dict())
    assert cli.main(["export-onnx", str(folder)]) == 0
    package = load_package(folder)
    record = check_precisions(package, count=2)
    return load_package(folder), record


def test_windows_come_from_a_synthetic_phantom_of_the_modality_or_the_bundled_sample(checked):
    package, _ = checked
    windows = validation_windows(package, 2)
    assert windows.windows.shape == (2, 1, 16, 32, 32) and windows.windows.dtype.name == "float32"
    assert "synthetic CT" in windows.source and windows.windows.std() > 0.1
    spleen = validation_windows(load_package(REPO / "UNetSegmentation/Resources/Models/ct-spleen"), 1)
    assert spleen.source == "bundled sample spleen2"


def test_int8_calibration_that_would_not_fit_in_memory_is_refused_not_killed(checked, monkeypatch):
    """Calibration holds every convolution's input and output of one window (measured from the export's shapes:
    at least the window and the logits, twice as much for a window twice as large); where that exceeds the share of
    this machine's memory, the int8 check is recorded as not run instead of the process being killed."""
    package, _ = checked
    one = int8_export.calibration_bytes(package.onnx_path, (1, 1, 16, 32, 32))
    assert one >= 4 * (16 * 32 * 32) * (1 + 3)
    assert int8_export.calibration_bytes(package.onnx_path, (1, 1, 32, 32, 32)) == 2 * one
    monkeypatch.setattr(int8_export, "physical_memory_bytes", lambda: one / int8_export.CALIBRATION_MEMORY_SHARE - 1)
    int8 = check_precisions(package, count=1, write=False)["checked"]["int8"]
    assert "calibrating int8 would hold" in int8["not_checked"], int8


@pytest.mark.slow
def test_the_record_is_in_the_manifest_and_passes_the_schema(checked):
    package, record = checked
    stored = read_manifest(package.path)["inference"]["precision"]
    assert stored == json.loads(json.dumps(record))
    assert stored["windows"] == 2 and stored["reference"] == "fp32 (torch)" and "synthetic CT" in stored["input"]
    entry = stored["checked"]["bf16"]
    assert entry["engine"] == "torch" and set(entry["dice"]) == {"bright", "dark"}
    assert entry["foreground_voxels"] > 0 and 0.9 < entry["foreground_agreement"] <= 1.0
    assert entry["validated"] == (entry["foreground_agreement"] >= 0.995 and entry["min_dice"] >= 0.99)
    from unetseg.cpu_features import cpu_features

    fp16 = stored["checked"]["fp16"]  # measured only where the CPU computes fp16 natively
    assert ("engine" in fp16) == cpu_features().native_fp16
    assert cpu_features().native_fp16 or ("no native fp16" in fp16["not_checked"] and not fp16["validated"])
    assert stored["checked"]["int8"]["engine"] == "onnxruntime" and int8_path(package).is_file()
    if importlib.util.find_spec("openvino") is not None:  # OpenVINO's own records, apart from torch's and ORT's
        own = stored["openvino"]
        assert own["int8"]["engine"] == "openvino" and set(own["int8"]["dice"]) == {"bright", "dark"}
        assert ("bf16" in own) == cpu_features().native_bf16
        assert all(r["validated"] == (r["foreground_agreement"] >= 0.995 and r["min_dice"] >= 0.99)
                   for r in own.values())  # fmt: skip


@pytest.mark.slow
def test_auto_follows_the_record_and_the_cpu_and_says_which_engine_ran(checked, tmp_path, monkeypatch):
    package, _ = checked
    manifest = json.loads(json.dumps(package.manifest))
    for entry in manifest["inference"]["precision"]["checked"].values():
        entry["validated"] = True  # a random network's int8 agreement is not the point here
    shutil.copytree(package.path, tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    validated = load_package(tmp_path / "m")
    image, _ = phantoms.ct_phantom(shape=(20, 40, 40))

    def engine_line(**options) -> str:
        lines = []
        segment(image, validated, device="cpu", progress=lambda _f, stage: lines.append(stage), **options)
        return next(line for line in lines if line.startswith("engine:"))

    monkeypatch.setenv("UNETSEG_CPU_FLAGS", ZEN4)
    _clear_features()
    assert "torch" in engine_line() and "precision bf16: fastest validated" in engine_line()
    assert "onnxruntime" in engine_line(backend="onnx") and "precision int8" in engine_line(backend="onnx")
    monkeypatch.setenv("UNETSEG_CPU_FLAGS", ZEN2)  # an AVX2-only CPU: nothing faster than fp32 natively
    _clear_features()
    assert "(AVX2 (" in engine_line() and "precision fp32: no faster precision validated" in engine_line()
    assert "precision bf16: as asked" in engine_line(precision="bf16")
    with pytest.raises(ValueError, match="int8 is not available with torch"):
        engine_line(precision="int8")
    _clear_features()


def _clear_features() -> None:
    from unetseg.cpu_features import cpu_features

    cpu_features.cache_clear()


@pytest.mark.slow
def test_the_int8_export_runs_without_torch(checked, tmp_path):
    package, _ = checked
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed
        from unetseg import phantoms
        from unetseg.inference.predictor import segment
        from unetseg.models.package import load_package
        image, _ = phantoms.ct_phantom(shape=(20, 40, 40))
        lines = []
        result = segment(image, load_package({str(package.path)!r}), device="cpu", backend="onnx", precision="int8",
                         progress=lambda f, s: lines.append(s))
        print([line for line in lines if line.startswith("engine:")][0])
        assert sys.modules["torch"] is None and result.image.array.max() > 0
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          cwd=REPO, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine: onnxruntime" in done.stdout and "precision int8: as asked" in done.stdout


@pytest.mark.slow
def test_the_cli_validates_on_import_and_on_demand(tmp_path, monkeypatch, capsys):
    torch.manual_seed(1)
    source = tmp_path / "source"
    save_package(source, _manifest("imported-ct"), build_network(_manifest()["network"]).state_dict())
    monkeypatch.setenv("UNETSEG_MODELS_DIR", str(tmp_path / "user"))
    assert cli.main(["models", "import", str(source)]) == 0
    imported = load_package(tmp_path / "user" / "imported-ct")
    assert set(imported.inference["precision"]["checked"]) == {"bf16", "fp16", "int8"}
    assert "no ONNX export" in imported.inference["precision"]["checked"]["int8"]["not_checked"]
    assert "bf16 (torch): foreground agreement" in capsys.readouterr().err
    assert cli.main(["models", "validate-precision", "imported-ct", "--windows", "1"]) == 0
    assert load_package(tmp_path / "user" / "imported-ct").inference["precision"]["windows"] == 1
    assert "Model imported-ct: validated for fp32" in capsys.readouterr().out
    image = tmp_path / "ct.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(phantoms.ct_phantom(shape=(12, 24, 24))[0].to_sitk(), str(image))
    out = tmp_path / "out.nii.gz"
    assert cli.main(["predict", "-i", str(image), "-m", "imported-ct", "-o", str(out), "--device", "cpu",
                     "--precision", "bf16"]) == 0  # fmt: skip
    assert out.is_file()
    assert "engine: torch" in capsys.readouterr().err  # text mode logs the engine line too
    assert cli.main(["predict", "-i", str(image), "-m", "imported-ct", "-o", str(out), "--precision", "int8"]) == 1
    assert "int8 is not available with torch" in capsys.readouterr().err


@pytest.mark.slow
def test_openvino_runs_the_export_without_torch_and_agrees_with_onnx_runtime(checked, tmp_path):
    pytest.importorskip("openvino")
    package, _ = checked
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed
        import numpy as np
        from unetseg import phantoms
        from unetseg.inference.predictor import segment
        from unetseg.models.package import load_package
        image, _ = phantoms.ct_phantom(shape=(30, 56, 48))
        package = load_package({str(package.path)!r})
        onnx = segment(image, package, device="cpu", backend="onnx", precision="fp32").image.array
        for precision in ("fp32", "bf16", "int8"):
            lines = []
            labels = segment(image, package, device="cpu", backend="openvino", precision=precision,
                             progress=lambda f, s: lines.append(s)).image.array
            same = float((labels == onnx).mean())
            print(precision, same, [line for line in lines if line.startswith("engine:")][0])
            assert labels.max() > 0 and same > (0.999 if precision == "fp32" else 0.9), same
        assert sys.modules["torch"] is None
        sys.modules["openvino"] = None  # not installed: a clear error
        try:
            segment(image, package, device="cpu", backend="openvino")
        except ValueError as error:
            print("refused:", error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          cwd=REPO, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engine: openvino" in done.stdout and "precision bf16: as asked" in done.stdout
    assert "refused: The OpenVINO backend needs OpenVINO: pip install openvino" in done.stdout


def test_a_users_own_case_can_be_the_judge(checked, tmp_path, capsys):
    """`validate-precision --image` cuts the windows from the user's case instead of the phantom, and a case with
    the wrong number of inputs is a clear error."""
    import SimpleITK as sitk

    folder = shutil.copytree(checked[0].path, tmp_path / "precision-ct")
    image, _ = phantoms.ct_phantom(shape=(24, 48, 40), spacing=(1.5, 1.5, 3.0))
    case = tmp_path / "case.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(case))
    assert cli.main(["models", "validate-precision", str(folder), "--windows", "1", "--image", str(case)]) == 0
    record = load_package(folder).inference["precision"]
    assert record["input"] == "the user's case (size (40, 48, 24), spacing (1.5, 1.5, 3.0) mm)", record["input"]
    assert validation_windows(load_package(folder), 1, [image]).windows.shape == (1, 1, 16, 32, 32)
    capsys.readouterr()
    args = ["models", "validate-precision", str(folder), "--image", str(case), "--image", str(case)]
    assert cli.main(args) == 1
    assert "reads 1 image(s) (CT), in this order; got 2. Give one image per input." in capsys.readouterr().err


def test_an_ensembles_labels_come_from_its_fold_averaged_logits():
    """A fold ensemble's windows are judged on the folds' mean logits, as its pipeline combines them, not on an
    arg-max across the stacked channels (which named a fold's channel as a label)."""
    logits = np.zeros((1, 6, 1, 1, 2), np.float32)  # 2 folds x 3 heads, two voxels
    logits[0, [1, 5], 0, 0, 0] = 5.0, 6.0  # fold 0 says 1 at 5, fold 1 says 2 at 6: the mean says 2
    logits[0, [1, 4], 0, 0, 1] = 2.0, 3.0  # fold 0 says 1, fold 1 says 1 more strongly: 1
    assert window_labels(logits, 3, sigmoid=False).ravel().tolist() == [2, 1]
    assert window_labels(logits[:, :3], 3, sigmoid=False).ravel().tolist() == [1, 1]  # one network: as it says
