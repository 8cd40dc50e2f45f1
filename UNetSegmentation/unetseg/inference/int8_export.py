"""The int8 export: ONNX Runtime's static quantisation of a package's ONNX export, calibrated on its own windows.

Weights are quantised per output channel (int8), activations per tensor (uint8) with ranges measured on the
calibration windows (the precision check's windows of the model's sample), in QDQ form so ONNX Runtime fuses
each quantised convolution. The file records the digest of the weights it was made from, like the fp32 export,
so an export outliving its weights is refused. Torch-free.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from unetseg.inference.engines import int8_path
from unetseg.inference.onnx_backend import INPUT_NAME, open_session, record_weights_digest, weights_digest
from unetseg.io.atomic import atomic_write
from unetseg.models.package import ModelPackage


class _Windows:
    """ONNX Runtime's CalibrationDataReader protocol over a window array, one window per batch."""

    def __init__(self, windows: np.ndarray) -> None:
        self._items: Iterator[dict] = iter({INPUT_NAME: w[np.newaxis]} for w in windows)

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
                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv", "ConvTranspose"],
            )  # fmt: skip
            record_weights_digest(temporary, weights_digest(package.weights_path))
    return target

