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


def test_int8_calibration_measures_orts_ranges_a_group_at_a_time_and_refuses_what_cannot_fit(checked, monkeypatch):
    """ONNX Runtime's calibrator holds every convolution input and output of a window at once (11.5 GiB for a
    five-fold nnU-Net ensemble): ours measures the same ranges in groups that fit the memory share, and where one
    activation alone exceeds it the int8 check is recorded as not run instead of the process being killed."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    package, _ = checked
    windows = validation_windows(package, 2).windows
    model = onnx.load(str(package.onnx_path))
    sizes = int8_export.calibration_tensors(model, (1, *windows.shape[1:]))
    assert 4 * 3 * 16 * 32 * 32 in sizes.values() and len(sizes) > 20  # the head's logits among them
    calibrator = create_calibrator(package.onnx_path, list(int8_export.QUANTISED_OPS),
                                   augmented_model_path=str(package.path.parent / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(_Reader(windows))
    theirs = calibrator.compute_data()
    monkeypatch.setattr(int8_export, "physical_memory_bytes",
                        lambda: 2 * max(sizes.values()) / int8_export.CALIBRATION_MEMORY_SHARE)  # several groups
    assert len(int8_export._groups(sizes, max(sizes.values()))) > 3
    ours = int8_export.tensor_ranges(model, windows)
    assert set(theirs) - set(ours) == {"image"} and set(ours) <= set(theirs)  # the image feeds an fp32 conv
    for name, (low, high) in ours.items():
        assert np.allclose([low, high], np.ravel(theirs[name].range_value), rtol=1e-5, atol=1e-6), name
    monkeypatch.setattr(int8_export, "physical_memory_bytes",
                        lambda: 2 * max(sizes.values()) / int8_export.CALIBRATION_MEMORY_SHARE - 1)
    int8 = check_precisions(package, count=1, write=False)["checked"]["int8"]
    assert "calibrating int8 would hold a" in int8["not_checked"], int8


class _Reader:
    """ONNX Runtime's calibration data reader over windows."""

    def __init__(self, windows: np.ndarray) -> None:
        self._items = iter({"image": w[None]} for w in windows)

    def get_next(self) -> dict | None:
        return next(self._items, None)


def test_the_int8_export_keeps_the_convolutions_on_the_image_and_the_logits_in_fp32(checked):
    """The first convolution and the logits head stay fp32 (cheap, and the most sensitive); the others run int8."""
    import onnx

    package, _ = checked
    graph = onnx.load(str(int8_path(package))).graph
    producer = {name: node.op_type for node in graph.node for name in node.output}
    convolutions = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    fp32 = [n for n in convolutions if producer.get(n.input[1]) != "DequantizeLinear"]
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    assert len(fp32) == 2 and fp32[0].input[0] == "image", [n.name for n in fp32]
    assert shapes[fp32[0].input[1]][:2] == [shapes[fp32[0].input[1]][0], 1]  # one input channel: the CT
    assert shapes[fp32[1].input[1]][0] == 3  # three output channels: the logits
    assert len(convolutions) > 10


def test_a_tta_model_has_its_refused_precisions_judged_again_on_the_mirrored_mean(checked, tmp_path, capsys):
    """A model that mirrors by default (as nnU-Net's do) gets, for each precision refused for one pass, a second
    record on the mean of its mirrored copies against fp32's mean, on a case of the user's own (the phantom passed
    a borderline int8 that a real case refused); validated ones are not run again. The command's last line names
    every precision validated, for one pass or with TTA."""
    import SimpleITK as sitk

    package, _ = checked
    shutil.copytree(package.path, tmp_path / "m")
    manifest = json.loads(json.dumps(package.manifest))
    manifest["inference"].update({"tta": True, "mirror_axes": [1, 2]})
    (tmp_path / "m" / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert cli.main(["models", "validate-precision", str(tmp_path / "m"), "--windows", "1"]) == 0
    assert "only on a case of your own (--image)" in capsys.readouterr().err
    assert "mirrored" not in read_manifest(tmp_path / "m")["inference"]["precision"]
    case = tmp_path / "case.nii.gz"
    sitk.WriteImage(phantoms.ct_phantom(shape=(24, 48, 40), spacing=(1.5, 1.5, 3.0))[0].to_sitk(), str(case))
    args = ["models", "validate-precision", str(tmp_path / "m"), "--windows", "1", "--image", str(case)]
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    lines = (printed.err + printed.out).splitlines()
    record = read_manifest(tmp_path / "m")["inference"]["precision"]
    named = [f"{p}{where}{tta}" for section, tta in ((record, ""), (record["mirrored"], " with TTA"))
             for key, where in (("checked", ""), ("openvino", " on OpenVINO"))
             for p, r in section.get(key, {}).items() if r["validated"]]  # fmt: skip
    assert any(line.endswith(f"validated for {', '.join(['fp32', *named])} (recorded in {tmp_path / 'm'}/model.json)")
               for line in lines), lines[-3:]  # fmt: skip
    single = {(key, p): r for key in ("checked", "openvino") for p, r in record.get(key, {}).items()}
    refused = {k for k, r in single.items() if "not_checked" not in r and not r["validated"]}
    assert refused, single  # a random network's int8 moves labels
    again = record["mirrored"]
    assert again["axes"] == [1, 2] and any("mean of 4 mirrored copies" in line for line in lines)
    assert {(key, p) for key in ("checked", "openvino") for p in again.get(key, {})} == refused
    for key, precision in refused:
        entry = again[key][precision]
        assert entry["tta"] and entry["engine"] == single[key, precision]["engine"] and entry["foreground_voxels"]
        assert entry["foreground_agreement"] != single[key, precision]["foreground_agreement"]
    plain = check_precisions(package, count=1, write=False)
    assert "mirrored" not in plain  # a model without TTA by default: one pass only


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
