"""The int8 export: ONNX Runtime's static quantisation of a package's ONNX export, calibrated on its own windows.

Weights are quantised per output channel (int8), activations per tensor (uint8) with ranges measured on the
calibration windows (the precision check's windows of the model's sample), in QDQ form so ONNX Runtime fuses
each quantised convolution. The file records the digest of the weights it was made from, like the fp32 export,
so an export outliving its weights is refused. Torch-free.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from unetseg.inference.engines import int8_path
from unetseg.inference.limits import physical_memory_bytes
from unetseg.inference.onnx_backend import INPUT_NAME, open_session, record_weights_digest, weights_digest
from unetseg.io.atomic import atomic_write
from unetseg.models.package import ModelPackage

QUANTISED_OPS = ("Conv", "ConvTranspose")
# Calibration holds every quantised convolution's input and output of one window at once (fp32): a five-fold nnU-Net
# ensemble at 80x128x128 holds 11.5 GiB. Beyond this share of the machine's memory the int8 check is not run.
CALIBRATION_MEMORY_SHARE = 0.4


class _Windows:
    """ONNX Runtime's CalibrationDataReader protocol over a window array, one window per batch; ``set_range`` lets
    its strided calibration (``CalibStridedMinMax``) take them one at a time."""

    def __init__(self, windows: np.ndarray) -> None:
        self._windows = windows
        self.set_range(0, len(windows))

    def __len__(self) -> int:
        return len(self._windows)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items: Iterator[dict] = iter({INPUT_NAME: w[np.newaxis]} for w in self._windows[start_index:end_index])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def quantize_int8(package: ModelPackage, windows: np.ndarray) -> Path:
    """Write ``model.int8.onnx`` from the package's (current) ONNX export, calibrated on ``windows``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    open_session(package, "cpu")  # a missing or outdated fp32 export is a clear error here
    target = int8_path(package)
    with tempfile.TemporaryDirectory(prefix="unetseg-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(package.onnx_path), str(prepared), skip_symbolic_shape=True)
        with atomic_write(target) as temporary:
            quantize_static(
                str(prepared), str(temporary), _Windows(windows), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTISED_OPS),
                extra_options={"CalibStridedMinMax": 1},  # ranges merged window by window: one window in memory
            )  # fmt: skip
            record_weights_digest(temporary, weights_digest(package.weights_path))
    return target


def calibration_bytes(model_path: Path, window_shape: Sequence[int]) -> int:
    """Bytes of the convolution inputs and outputs that calibrating one window of ``window_shape`` (N, C, *patch)
    holds, from ONNX shape inference on the export."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, window_shape, strict=True):
        dim.dim_value = int(size)
    graph = onnx.shape_inference.infer_shapes(model).graph
    sizes = {info.name: math.prod(d.dim_value for d in info.type.tensor_type.shape.dim)
             for info in (*graph.value_info, *graph.input, *graph.output)}  # fmt: skip
    weights = {tensor.name for tensor in graph.initializer}
    held = {name for node in graph.node if node.op_type in QUANTISED_OPS for name in (*node.input, *node.output)}
    return 4 * sum(sizes.get(name, 0) for name in held - weights)


def calibration_too_large(model_path: Path, window_shape: Sequence[int]) -> str | None:
    """Why calibrating would not fit this machine (`CALIBRATION_MEMORY_SHARE` of its memory), or None."""
    need, memory = calibration_bytes(model_path, window_shape), physical_memory_bytes()
    if need <= CALIBRATION_MEMORY_SHARE * memory:
        return None
    return (f"calibrating int8 would hold {need / 2**30:.1f} GiB of activations per window, more than "
            f"{CALIBRATION_MEMORY_SHARE:.0%} of this machine's {memory / 2**30:.0f} GiB")
