"""The network alone: this machine's matrix-product peak, one window's FLOPs, and each engine and precision timed on
the same windows, interleaved, with its label agreement against torch fp32.

Engines: torch (fp32; bf16 autocast), ONNX Runtime (fp32 with every graph optimisation; the
int8 QDQ export), OpenVINO (fp32, bf16, int8) when installed. Each engine is built once and warmed up on one
window; then every repetition runs each engine once per window, in an order that rotates per repetition, so a
slow spell of a shared machine falls on all of them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from unetseg.inference.engines import int8_path
from unetseg.inference.onnx_backend import open_session
from unetseg.inference.precision import agreement, labels_from_logits
from unetseg.inference.torch_precision import window_logits
from unetseg.inference.windows import WindowSettings
from unetseg.models.package import ModelPackage
from unetseg.models.weights import build_model

Engine = Callable[[np.ndarray], np.ndarray]
# (name, precision) in the order the table lists them.
ENGINES = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
           ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))  # fmt: skip


def matmul_peak(dtype: torch.dtype, size: int = 4096, reps: int = 5) -> float:
    """The best GFLOP/s of a ``size``² matrix product in ``dtype`` on this machine's torch threads."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * size**3 / best / 1e9


def window_gflop(package: ModelPackage) -> float:
    """The floating-point operations (GFLOP, a multiply-add counted as two) of one window through the network."""
    from torch.utils.flop_counter import FlopCounterMode

    network = build_model(package, "cpu")
    window = torch.zeros(1, int(package.network_config["in_channels"]), *package.inference["patch_size"])
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        network(window)
    return counter.get_total_flops() / 1e9


def build_engines(package: ModelPackage) -> dict[tuple[str, str], Engine]:
    """Every engine and precision this machine can run on the package (exports made beforehand)."""
    engines: dict[tuple[str, str], Engine] = {}
    for precision, run in window_logits(package, ("fp32", "bf16")).items():
        engines["torch", precision] = run
    for precision in ("fp32", "int8"):
        if precision == "fp32" or int8_path(package).is_file():
            session = open_session(package, "cpu", precision)
            engines["onnxruntime", precision] = lambda x, s=session: s.run(None, {"image": x})[0]
    try:
        from unetseg.inference.openvino_backend import open_session as openvino_session

        for precision in ("fp32", "bf16", "int8"):
            settings = WindowSettings(3, tuple(package.inference["patch_size"]), (0,), precision=precision)
            if precision != "int8" or int8_path(package).is_file():
                session = openvino_session(package, settings)
                engines["openvino", precision] = lambda x, s=session: s.run(None, {"image": x})[0]
    except ImportError:
        pass
    return {key: engines[key] for key in ENGINES if key in engines}


def time_engines(engines: dict[tuple[str, str], Engine], windows: np.ndarray, reps: int,
                 sigmoid: bool, names: list[str]) -> dict[tuple[str, str], dict]:  # fmt: skip
    """Seconds per window (every run), and the labels' agreement with torch fp32 on the same windows."""
    reference = labels_from_logits(engines["torch", "fp32"](windows), sigmoid)
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in engines}
    results = {}
    for key, engine in engines.items():  # warm-up, and the labels for the agreement
        results[key] = agreement(reference, labels_from_logits(engine(windows), sigmoid), names, sigmoid)
    order = list(engines)
    for rep in range(reps):
        for key in order[rep % len(order):] + order[: rep % len(order)]:
            for window in windows:
                seconds[key].append(_seconds(lambda e=engines[key], w=window: e(w[np.newaxis])))
        print(f"  window timing, repetition {rep + 1}/{reps} done", flush=True)
    return {key: {"seconds": seconds[key], **results[key]} for key in engines}


def summary(values: list[float]) -> tuple[float, float, float]:
    """Median, minimum and maximum."""
    return statistics.median(values), min(values), max(values)


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start
