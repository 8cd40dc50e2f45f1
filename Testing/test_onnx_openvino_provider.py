"""The ONNX path on ONNX Runtime's OpenVINO build (`onnxruntime-openvino`, which installs in place of onnxruntime):
on the CPU it runs OpenVINO's kernels through ONNX Runtime's API — fp32, and bf16 where OpenVINO's records validate
it — while the export check and the int8 record keep ONNX Runtime's own CPU kernels.

The build shadows onnxruntime, so the Makefile installs it aside (``.venv/ort-openvino``) and these tests run it in a
child process with that folder first on PYTHONPATH and torch blocked, as on a workstation without PyTorch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg import cli, phantoms
from unetseg.inference.predictor import segment
from unetseg.models.package import load_package, save_package
from unetseg.models.precision_check import check_precisions, record_in_manifest
from unetseg.networks.factory import build_network

REPO = Path(__file__).resolve().parents[1]
ORT_OPENVINO = Path(sys.prefix) / "ort-openvino"
pytestmark = pytest.mark.skipif(
    not (ORT_OPENVINO / "onnxruntime").is_dir(), reason=f"no ONNX Runtime OpenVINO build in {ORT_OPENVINO} (make test)"
)
SHAPE = (30, 56, 48)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-weight CT package with its ONNX export and int8 export, and fp32 labels of ONNX Runtime's CPU kernels
    on a phantom: (package, labels path)."""
    from test_precision_check import _manifest

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "ort-openvino-ct"
    save_package(folder, _manifest("ort-openvino-ct"), build_network(_manifest()["network"]).state_dict())
    assert cli.main(["export-onnx", str(folder)]) == 0
    package = load_package(folder)
    check_precisions(package, count=1)  # makes the int8 export
    image, _ = phantoms.ct_phantom(shape=SHAPE)
    labels = folder.parent / "onnx-cpu-labels.npy"
    np.save(labels, segment(image, package, device="cpu", backend="onnx", precision="fp32").image.array)
    return load_package(folder), labels


def run_in_ort_openvino(script: str) -> str:
    """Run ``script`` in a child process whose onnxruntime is the OpenVINO build; its standard output."""
    paths = [ORT_OPENVINO, REPO / "UNetSegmentation", Path(__file__).resolve().parent]  # the last: test helpers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          encoding="utf-8", cwd=REPO, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_onnx_path_runs_openvinos_kernels_in_fp32_and_bf16_and_reads_openvinos_records(exported, tmp_path):
    package, onnx_cpu = exported
    agreed = {"engine": "openvino", "foreground_agreement": 1.0, "min_dice": 1.0, "dice": {}, "validated": True,
              "foreground_voxels": 1}  # fmt: skip
    refused = {**agreed, "engine": "onnxruntime", "foreground_agreement": 0.9, "validated": False}
    record_in_manifest(package, {**package.inference["precision"], "checked": {"int8": refused},
                                 "openvino": {"bf16": agreed}})  # fmt: skip
    out = run_in_ort_openvino(f"""
        import sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed
        import numpy as np
        import onnxruntime
        from unetseg import phantoms
        from fed_windows import told_reshapes
        from unetseg.cpu_features import cpu_features
        from unetseg.inference.onnx_backend import open_session
        from unetseg.inference.predictor import segment
        from unetseg.models.package import load_package
        assert "openvino" in onnxruntime.__file__.split("/")[-3], onnxruntime.__file__  # the build set aside
        package = load_package({str(package.path)!r})
        print("providers", open_session(package, "cpu").get_providers()[0],
              open_session(package, "cpu", "int8", own_kernels=True).get_providers())
        image, _ = phantoms.ct_phantom(shape={SHAPE})
        reference = np.load({str(onnx_cpu)!r})
        reshapes = told_reshapes()
        for precision in ("fp32", "bf16", "auto"):
            lines = []
            labels = segment(image, package, device="cpu", backend="onnx", precision=precision,
                             progress=lambda f, s: lines.append(s)).image.array
            same = float((labels == reference).mean())
            print([line for line in lines if line.startswith("engine:")][0], same)
            assert labels.max() > 0 and same > (0.999 if precision == "fp32" else 0.9), (precision, same)
        print("native bf16", cpu_features().native_bf16)
        print("reshapes", sorted(reshapes))
    """)
    assert "providers OpenVINOExecutionProvider ['CPUExecutionProvider']" in out
    # the predictor's sessions tell OpenVINO the one window shape they run (compiled once, no dynamic model kept)
    assert f"reshapes ['image[1,1,{','.join(map(str, package.inference['patch_size']))}]']" in out
    assert "engine: onnxruntime-openvino 1.24.1 on cpu" in out and "precision fp32: as asked" in out
    assert "precision bf16: as asked, not validated" not in out  # OpenVINO's record is the one read
    assert "precision bf16: as asked" in out
    if "native bf16 True" in out:  # OpenVINO's validated bf16, not ONNX Runtime's refused int8, decides auto
        assert "precision bf16: fastest validated" in out
    else:
        assert "precision fp32: no faster precision validated" in out


def test_the_precision_check_measures_openvinos_rounding_through_onnx_runtime_without_the_openvino_package(
    exported,
):
    package, _ = exported
    out = run_in_ort_openvino(f"""
        import json, sys
        sys.modules["openvino"] = None  # only ONNX Runtime's OpenVINO build is there
        from fed_windows import told_reshapes
        from unetseg.models.package import load_package
        from unetseg.models.precision_check import check_precisions
        reshapes = told_reshapes()
        record = check_precisions(load_package({str(package.path)!r}), count=1)
        print(json.dumps(sorted(reshapes)))
        print(json.dumps({{name: {{p: r.get("engine", r.get("not_checked")) for p, r in section.items()}}
                          for name, section in record.items() if name in ("checked", "openvino")}}))
    """)
    *_, reshapes, engines = map(json.loads, out.strip().splitlines())
    # its sessions on OpenVINO's kernels are compiled for the window they run, one at a time
    assert reshapes == [f"image[1,1,{','.join(map(str, package.inference['patch_size']))}]"]
    # Its quantiser predates the calibration cache: the int8 record of ONNX Runtime's own kernels says why it is
    # missing, and OpenVINO's rounding is measured on the package's int8 export through the build's provider.
    assert engines["checked"]["int8"] == (
        "this ONNX Runtime (1.24.1) cannot write an int8 export from measured ranges (onnxruntime 1.27 or newer can)")
    assert engines["openvino"]["int8"] == "onnxruntime-openvino"
