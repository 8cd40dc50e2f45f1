"""Export every bundled model to ONNX (``model.onnx`` beside its weights), so a stock Slicer runs it without PyTorch.

`unetseg export-onnx` writes the network with fp32 initializers. The bundled weights are stored in fp16, so those
initializers hold fp16 values exactly: this script stores each one that converts without loss as fp16, followed
by a Cast back to fp32 in the graph. ONNX Runtime's CPU kernels still compute in fp32 (the Cast is folded when
the session starts), the files are half as large, and the logits are checked to be identical to the plain
export's before the file is kept. Run after `bundled_models.py` (which calls `export_bundled` itself):

    python benchmarks/bundled_onnx.py [NAME ...]

Prints each export's size and the total; exits 1 above `ONNX_LIMIT_MB`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_cards  # a sibling script

ONNX_LIMIT_MB = 25.0  # all bundled exports together
MIN_COMPACTED = 16  # initializers smaller than this stay fp32: a Cast node would cost more than it saves
FP16_SUFFIX = "__fp16"


def compact_fp16(model):  # onnx.ModelProto -> onnx.ModelProto
    """A copy of `model` whose fp32 initializers that are exact in fp16 are stored as fp16 plus a Cast node."""
    import onnx
    from onnx import numpy_helper

    compacted = onnx.ModelProto()
    compacted.CopyFrom(model)
    graph, casts, kept = compacted.graph, [], []
    for initializer in graph.initializer:
        values = numpy_helper.to_array(initializer)
        half = values.astype(np.float16)
        if values.dtype != np.float32 or values.size < MIN_COMPACTED or not np.array_equal(half, values):
            kept.append(initializer)
            continue
        kept.append(numpy_helper.from_array(half, initializer.name + FP16_SUFFIX))
        casts.append(onnx.helper.make_node(
            "Cast", [initializer.name + FP16_SUFFIX], [initializer.name], to=onnx.TensorProto.FLOAT,
            name=f"cast_{initializer.name}",
        ))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(compacted)
    return compacted


def _logits(model_bytes: bytes, example: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: example})[0]


def export_bundled(folder: Path) -> Path:
    """Export one bundled package to ONNX, compact it to fp16 storage, check it, and return the file."""
    import onnx

    from unetseg.inference.onnx_backend import export_onnx
    from unetseg.io.atomic import atomic_write
    from unetseg.models.package import load_package

    package = load_package(folder)
    path = export_onnx(package)
    plain = onnx.load(str(path))
    compacted = compact_fp16(plain)
    channels = int(package.network_config["in_channels"])
    shape = (1, channels, *package.inference["patch_size"])
    example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected, got = _logits(plain.SerializeToString(), example), _logits(compacted.SerializeToString(), example)
    if not np.array_equal(expected, got):
        raise RuntimeError(f"{package.name}: fp16 storage changed the logits (max {np.abs(expected - got).max():.2g})")
    with atomic_write(path) as temporary:
        onnx.save(compacted, str(temporary))
    plain_mb = len(plain.SerializeToString()) / 1e6
    print(f"  {package.name}: {path.stat().st_size / 1e6:.1f} MB (fp32 export {plain_mb:.1f} MB), logits identical")
    return path


def main(argv: list[str] | None = None) -> int:
    folders = {f.name: f for f in sorted(model_cards.MODELS_DIR.iterdir()) if (f / "model.json").is_file()}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"which models (default all: {', '.join(folders)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in folders]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(folders)}")
    for name in args.names or folders:
        export_bundled(folders[name])
    total = sum((f / "model.onnx").stat().st_size for f in folders.values() if (f / "model.onnx").is_file()) / 1e6
    print(f"All bundled ONNX exports: {total:.1f} MB (limit {ONNX_LIMIT_MB:g} MB).")
    return 0 if total <= ONNX_LIMIT_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
