"""The engine that runs a model's windows: which device it uses, which precision (`precision.choose`), ONNX Runtime's
session options and int8 export, and the line the progress log shows ("torch 2.13 on cpu (AVX-512 BF16): bf16 …").

Torch-free at import: the ONNX path never loads PyTorch (the device of the torch engine is resolved lazily).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from unetseg.cpu_features import cpu_features
from unetseg.inference.precision import Choice, choose, without
from unetseg.inference.windows import WindowSettings
from unetseg.models.package import ModelPackage
from unetseg.vocabulary import BACKENDS, check_choice

INT8_SUFFIX = ".int8.onnx"
ENGINE_PREFIX = "engine: "  # the progress stage naming the engine and precision that run
# OpenVINO's inference precision per requested precision (int8 comes from the quantised export itself).
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"


def int8_path(package: ModelPackage) -> Path:
    """Where a package's statically quantised export lives: ``model.int8.onnx`` beside ``model.onnx``."""
    return package.onnx_path.with_name(package.onnx_path.stem + INT8_SUFFIX)


def choose_backend(requested: str, device: str, package: ModelPackage, note: Callable[[str], None]) -> str:
    """The engine to run: as asked, or for ``auto`` the fastest one measured on CPUs (README, inference speed) that is
    installed and has the model's ONNX export (at least as new as its weights): OpenVINO, then ONNX Runtime; torch on
    a GPU or when neither can run. "torch" asked for without torch installed runs ONNX Runtime (with a note)."""
    check_choice("backend", requested, BACKENDS)
    if requested == "torch" and not _installed("torch"):
        note("PyTorch is not installed: running the model's ONNX export with ONNX Runtime.")
        return "onnx"
    if requested == "openvino" and not _installed("openvino"):
        raise ValueError("The OpenVINO backend needs OpenVINO: pip install openvino (or use --backend onnx).")
    if requested != "auto":
        return requested
    on_gpu = device in ("cuda", "mps")
    if device == "auto" and _installed("torch"):
        on_gpu = device_type("torch", device) != "cpu"
    if on_gpu:
        return "torch" if _installed("torch") else "onnx"
    exported = package.onnx_path.is_file() and not package.older_than_weights(package.onnx_path)
    for backend, module in (("openvino", "openvino"), ("onnx", "onnxruntime")):
        if exported and _installed(module):
            return backend
    return "torch" if _installed("torch") else "onnx"  # the ONNX path then says how to make the export


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def device_type(backend: str, device: str) -> str:
    """The device type the windows will run on: "cpu", "cuda" or "mps"."""
    if backend == "openvino":
        return "cpu"
    if backend == "onnx":
        import onnxruntime  # lazy: ONNX Runtime, only when the ONNX path runs

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        return "cuda" if device in ("auto", "cuda") and cuda else "cpu"
    from unetseg.devices import resolve_device  # lazy: torch

    return resolve_device(device).type


def openvino_cpu_config(precision: str) -> dict[str, str]:
    """OpenVINO's CPU compile settings for a run in ``precision``, one window at a time: for the OpenVINO backend
    and for ONNX Runtime's OpenVINO execution provider alike."""
    return {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}


def ort_openvino() -> bool:
    """Whether this ONNX Runtime build has the OpenVINO execution provider (`onnxruntime-openvino`, installed in
    place of `onnxruntime`): the ONNX path then runs OpenVINO's kernels on the CPU, bf16 included, through ONNX
    Runtime's API (ONNX Runtime's own CPU kernels have no bf16)."""
    import onnxruntime  # lazy: ONNX Runtime, only when the ONNX path runs

    return OPENVINO_PROVIDER in onnxruntime.get_available_providers()


def kernels(backend: str, kind: str) -> str:
    """Whose arithmetic runs the windows, which decides the precisions possible and the records that hold:
    ONNX Runtime's OpenVINO provider on the CPU computes (and rounds) as OpenVINO does."""
    return "openvino" if backend == "onnx" and kind == "cpu" and ort_openvino() else backend


def _cuda_bf16(backend: str, kind: str) -> bool:
    if backend != "torch" or kind != "cuda":
        return False
    import torch  # lazy: torch, only on a CUDA machine

    return bool(torch.cuda.is_bf16_supported())


def session_options() -> Any:
    """ONNX Runtime session options: every graph optimisation (constant folding, operator fusion, layout
    transformations) on, and the optimised graph kept in memory only."""
    import onnxruntime  # lazy: ONNX Runtime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def with_precision(
    settings: WindowSettings, package: ModelPackage, backend: str, requested: str, report: Any = None
) -> WindowSettings:
    """``settings`` with the precision to run (as asked, or `auto`'s choice); ``report(stage)`` gets the engine line.

    A lower precision that needs a file not made yet (the int8 export) is passed over by ``auto`` and refused when
    asked for by name.
    """
    kind = device_type(backend, settings.device)
    records = package.inference.get("precision")
    int8_ready = int8_path(package).is_file()
    if not int8_ready:
        records = without(records, "int8")
    choice = choose(requested, kernels(backend, kind), kind, cpu_features(), records, _cuda_bf16(backend, kind),
                    mirrored=bool(settings.mirror_axes))  # fmt: skip
    if choice.precision == "int8" and not int8_ready:
        raise ValueError(
            f"Model '{package.name}' has no int8 export ({int8_path(package).name}); make it with "
            f"`unetseg models validate-precision {package.name}` (needs its ONNX export), or use --precision auto."
        )
    if report is not None:
        report(describe(backend, kind, choice))
    return dataclasses.replace(settings, precision=choice.precision)


def describe(backend: str, kind: str, choice: Choice) -> str:
    """E.g. "engine: torch 2.13.0 on cpu (AVX-512 BF16 (VNNI; /proc/cpuinfo)), precision bf16: fastest …";
    ONNX Runtime with its OpenVINO provider is "onnxruntime-openvino"."""
    if backend == "onnx":
        import onnxruntime  # lazy: its own version (an onnxruntime-openvino build shadows onnxruntime's metadata)

        name = "onnxruntime-openvino" if kernels(backend, kind) == "openvino" else "onnxruntime"
        version = onnxruntime.__version__
    else:
        name, version = backend, _version(backend)
    where = f"{kind} ({cpu_features().describe()})" if kind == "cpu" else kind
    return f"{ENGINE_PREFIX}{name} {version} on {where}, precision {choice.precision}: {choice.reason}"


def _version(module: str) -> str:
    try:
        return version(module)
    except PackageNotFoundError:
        return ""
