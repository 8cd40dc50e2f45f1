"""The int8 export: ONNX Runtime's static quantisation of a package's ONNX export, calibrated on its own windows.

Weights are quantised per output channel (int8), activations per tensor (uint8) with ranges measured on the
calibration windows (the precision check's windows of the model's sample), in QDQ form so ONNX Runtime fuses
each quantised convolution. The convolutions that read the image or write the logits stay fp32: they are a
sliver of the work (one input channel, or a 1x1 head) and, quantised alone, moved the most labels of any layer
of an nnU-Net model (1.8 % of its foreground for the head). The file records the digest of the weights it was
made from, like the fp32 export, so an export outliving its weights is refused. Torch-free.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.inference.engines import int8_path
from unetseg.inference.limits import physical_memory_bytes
from unetseg.inference.onnx_backend import INPUT_NAME, open_session, record_weights_digest, weights_digest
from unetseg.io.atomic import atomic_write
from unetseg.models.package import ModelPackage

QUANTISED_OPS = ("Conv", "ConvTranspose")
# The calibration tensors of one window held at once (with their numpy copies) stay under this share of the
# machine's memory (a five-fold nnU-Net ensemble's are 11.5 GiB at 80x128x128); one tensor larger is refused.
CALIBRATION_MEMORY_SHARE = 0.4


def quantizer_missing() -> str | None:
    """Why this ONNX Runtime cannot write the int8 export, or None: quantising from ranges measured here needs its
    calibration cache (onnxruntime 1.27; ONNX Runtime's OpenVINO build 1.24 lacks it, yet runs an int8 export)."""
    import onnxruntime
    from onnxruntime.quantization import calibrate

    if hasattr(calibrate, "save_tensors_data"):
        return None
    return (f"this ONNX Runtime ({onnxruntime.__version__}) cannot write an int8 export from measured ranges "
            "(onnxruntime 1.27 or newer can)")  # fmt: skip


class CalibrationTooLargeError(ValueError):
    """Calibrating would not fit this machine: one activation and its copy over `CALIBRATION_MEMORY_SHARE` of it."""


def quantize_int8(package: ModelPackage, windows: np.ndarray) -> Path:
    """Write ``model.int8.onnx`` from the package's (current) ONNX export, calibrated on ``windows``; raises
    `CalibrationTooLargeError` before any window runs where calibrating would not fit."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    open_session(package, "cpu")  # a missing or outdated fp32 export is a clear error here
    target = int8_path(package)
    with tempfile.TemporaryDirectory(prefix="unetseg-int8-") as folder:
        prepared, ranges = Path(folder) / "prepared.onnx", Path(folder) / "ranges.json"
        quant_pre_process(str(package.onnx_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, tensor_ranges(model, windows)), ranges)
        with atomic_write(target) as temporary:
            quantize_static(
                str(prepared), str(temporary), None, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTISED_OPS),
                nodes_to_exclude=kept_fp32(model), calibration_cache_path=str(ranges),
            )  # fmt: skip
            record_weights_digest(temporary, weights_digest(package.weights_path))
    return target


def kept_fp32(model: Any) -> list[str]:
    """The quantisable nodes that stay fp32: those reading the graph's input, and those whose output reaches a
    graph output through other ops only (the logits head of each fold)."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    producer = {name: node for node in graph.node for name in node.output}
    heads, pending, seen = set(), [o.name for o in graph.output], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        if node.op_type in QUANTISED_OPS:
            heads.add(node.name)
        else:
            pending.extend(node.input)
    readers = {n.name for n in graph.node if n.op_type in QUANTISED_OPS and inputs & set(n.input)}
    return sorted(heads | readers)


def tensor_ranges(model: Any, windows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ONNX Runtime's MinMax calibration ranges (lowest, highest of each quantised op's float inputs and outputs
    over ``windows``), measured a group of tensors at a time: a group's tensors are a session's outputs, and they
    and their copies into numpy stay under `CALIBRATION_MEMORY_SHARE` of memory. Written here because ONNX
    Runtime's calibrator keeps every such tensor of a window alive until its reductions run at the end of the graph.
    """
    import onnx
    import onnxruntime

    sizes = calibration_tensors(model, (1, *windows.shape[1:]))
    largest, memory = max(sizes.values(), default=0), physical_memory_bytes()
    if 2 * largest > CALIBRATION_MEMORY_SHARE * memory:
        raise CalibrationTooLargeError(
            f"calibrating int8 would hold a {largest / 2**30:.1f} GiB activation and its copy per window, more "
            f"than {CALIBRATION_MEMORY_SHARE:.0%} of this machine's {memory / 2**30:.0f} GiB")  # fmt: skip
    budget = CALIBRATION_MEMORY_SHARE * memory / 2  # outputs, then their numpy copies
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # as its calibrator
    options.enable_cpu_mem_arena = False  # each group's memory back when its run ends
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)  # one copy whose outputs each group replaces
    for group in _groups(sizes, budget):
        del augmented.graph.output[:]
        augmented.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                      for n in group)  # fmt: skip
        session = onnxruntime.InferenceSession(augmented.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])  # fmt: skip
        for window in windows:
            for name, value in zip(group, session.run(group, {INPUT_NAME: window[np.newaxis]}), strict=True):
                low, high = np.float32(value.min()), np.float32(value.max())
                if name in ranges:
                    low, high = min(ranges[name][0], low), max(ranges[name][1], high)
                ranges[name] = (np.array(low, np.float32), np.array(high, np.float32))
    return ranges


def _groups(sizes: dict[str, int], budget: float) -> list[list[str]]:
    """``sizes``' names in order, cut into runs whose bytes stay under ``budget``."""
    groups: list[list[str]] = [[]]
    held = 0
    for name, size in sizes.items():
        if groups[-1] and held + size > budget:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


def calibration_tensors(model: Any, window_shape: Sequence[int]) -> dict[str, int]:
    """Bytes of each tensor that calibration measures (the float inputs and outputs of the quantised ops, but the
    graph input), in graph order, for one window of ``window_shape`` (N, C, *patch): from ONNX shape inference."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # inferred again for this window's size
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, window_shape, strict=True):
        dim.dim_value = int(size)
    graph = onnx.shape_inference.infer_shapes(model).graph
    infos = {info.name: info.type.tensor_type for info in (*graph.value_info, *graph.output)}
    weights = {tensor.name for tensor in graph.initializer}
    sizes: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in QUANTISED_OPS:
            for name in (*node.input, *node.output):
                info = infos.get(name)
                if info is not None and name not in weights and info.elem_type == onnx.TensorProto.FLOAT:
                    sizes[name] = 4 * math.prod(d.dim_value for d in info.shape.dim)
    return sizes
