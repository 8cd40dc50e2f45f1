"""ONNX export of a model package's network, and the predictor backend that runs it with ONNX Runtime.

The runner imports neither torch nor MONAI, so a CPU-only workstation needs no PyTorch: the image is
resampled with `linear_resampling` (the same sampling positions as the torch backend's trilinear
interpolation) and the windows are stitched by `windows.sliding_window` (the same windows and Gaussian
weights as MONAI's). Only `export_onnx` needs torch, and imports it when called. Where the installed ONNX Runtime
is its OpenVINO build (`onnxruntime-openvino`), the CPU sessions run on its OpenVINO execution provider.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.inference.engines import OPENVINO_PROVIDER, int8_path, openvino_cpu_config, session_options
from unetseg.inference.linear_resampling import argmax_on_grid, resample_linear
from unetseg.inference.windows import WindowSettings, call_shape, count_windows, sliding_window
from unetseg.io.atomic import atomic_write
from unetseg.models.catalog import load_model
from unetseg.models.package import ModelPackage
from unetseg.models.weights import build_model
from unetseg.vocabulary import NNUNET_VARIANT

INPUT_NAME, OUTPUT_NAME = "image", "logits"
# The export's metadata entry holding the SHA-256 of the weights it was made from: a shipped or copied export
# is checked by content, since file times after a git checkout or an install say nothing about which is newer.
WEIGHTS_DIGEST_KEY = "unetseg.weights_sha256"
# Largest |torch − onnxruntime| logit difference accepted right after an export, relative to the largest logit.
_EXPORT_TOLERANCE = 1e-4


def export_onnx(model: ModelPackage | str) -> Path:
    """Write the network of a package (object, catalog name or folder) next to its weights, dynamic axes.

    Uses torch's current (torch.export-based) exporter with every batch and spatial axis dynamic (an imported
    nnU-Net model's spatial axes are its patch: its windows always are, and its residual encoders do not export
    with symbolic sizes), records the weights' digest in the export's metadata, then checks ONNX Runtime against
    torch on one batch of windows before keeping the file (atomically).
    """
    import torch
    from torch.export import Dim

    package = load_model(model)
    target = package.onnx_path
    network = build_model(package, torch.device("cpu")).eval()
    channels = int(package.network_config["in_channels"])
    patch = [int(p) for p in package.inference["patch_size"]]
    example = torch.randn(2, channels, *patch, generator=torch.Generator().manual_seed(0))
    spatial = () if package.variant == NNUNET_VARIANT else range(2, 2 + len(patch))
    dynamic = {axis: Dim.AUTO for axis in (0, *spatial)}
    with atomic_write(target) as temporary:
        torch.onnx.export(
            network,
            (example,),
            str(temporary),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(dynamic,),
            external_data=False,
            dynamo=True,
        )
        record_weights_digest(temporary, weights_digest(package.weights_path))
        with torch.no_grad():
            expected = network(example).numpy()
        _check_export(temporary, example.numpy(), expected)
    return target


def weights_digest(path: Path) -> str:
    """The SHA-256 (hex) of a weights file, as recorded in the exports made from it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_weights_digest(path: Path, digest: str) -> None:
    """Store the weights' digest in an ONNX file's metadata (the fp32 export and the int8 export)."""
    import onnx  # lazy: only exports write ONNX files

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, WEIGHTS_DIGEST_KEY: digest})
    onnx.save(model, str(path))


def _check_export(path: Path, example: np.ndarray, expected: np.ndarray) -> None:
    got = _session(path, "cpu", own_kernels=True).run([OUTPUT_NAME], {INPUT_NAME: example})[0]
    error = float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf
    if error > _EXPORT_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(
            f"The ONNX export disagrees with the torch network (shape {got.shape} vs {expected.shape}, max "
            f"difference {error:.2g}); the network uses an operation the exporter does not translate faithfully."
        )


def _session(
    path: Path, device: str, precision: str = "fp32", own_kernels: bool = False, window: Sequence[int] | None = None
) -> Any:
    """ONNX Runtime on ``path``: CUDA where asked and there; on the CPU the OpenVINO provider where this build has
    it (in ``precision``; not with ``own_kernels``: ONNX Runtime's CPU kernels, whose arithmetic the export check and
    the int8 record judge), else ONNX Runtime's CPU kernels. ``window``: the input shape every call will have
    (batch first), so that the OpenVINO provider compiles for it once instead of keeping a dynamic model beside the
    compiled one (community benchmark, 5 folds: a session's peak 3.40 → 2.51 GiB); other shapes still run."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "mps":
        raise ValueError("The ONNX backend does not run on Apple MPS; use device 'cpu' or the torch backend.")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ValueError("Device 'cuda' was asked for but this ONNX Runtime has no CUDA support; use 'cpu'.")
    providers: list[Any] = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    elif device in ("auto", "cpu") and OPENVINO_PROVIDER in available and not own_kernels:
        options = {"device_type": "CPU", "load_config": json.dumps({"CPU": openvino_cpu_config(precision)})}
        if window is not None:
            options["reshape_input"] = f"{INPUT_NAME}[{','.join(str(int(n)) for n in window)}]"
        providers.insert(0, (OPENVINO_PROVIDER, options))
    return ort.InferenceSession(str(path), sess_options=session_options(), providers=providers)


def open_session(
    package: ModelPackage,
    device: str = "auto",
    precision: str = "fp32",
    own_kernels: bool = False,
    window: Sequence[int] | None = None,
) -> Any:
    """An ONNX Runtime session on a package's export (its int8 export for ``precision`` int8); a missing or
    outdated export is a clear error. ``own_kernels``: ONNX Runtime's CPU kernels even where this build has the
    OpenVINO provider; ``window``: the input shape of every call, where known (`_session`).

    An export that records its weights' digest is current when the weights still have it; an older export
    without one is current when it is newer than the weights file.
    """
    path = int8_path(package) if precision == "int8" else package.onnx_path
    name = package.manifest["name"]
    if not path.is_file():
        raise ValueError(f"Model '{name}' has no ONNX export ({path}). Create it with: unetseg export-onnx {name}")
    session = _session(path, device, precision, own_kernels, window)
    check_current(package, path, session.get_modelmeta().custom_metadata_map.get(WEIGHTS_DIGEST_KEY))
    return session


def check_current(package: ModelPackage, path: Path, recorded: str | None) -> None:
    """Refuse an export (at ``path``, recording the weights digest ``recorded``) that its weights have outlived."""
    weights, name = package.weights_path, package.manifest["name"]
    if weights.is_file() and (weights_digest(weights) != recorded if recorded else package.older_than_weights(path)):
        raise ValueError(
            f"The ONNX export of model '{name}' is out of date: it is older than its weights. "
            f"Re-export it: unetseg export-onnx {name}"
        )


class WindowRunner:
    """Runs a window batch through the session, averaging mirrored passes, then reports progress."""

    def __init__(self, session: Any, settings: WindowSettings, run: Any):
        self.session, self.run = session, run
        self.mirror_sets = settings.mirror_sets()

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        total = None
        for axes in self.mirror_sets:
            dims = tuple(a + 2 for a in axes)
            batch = np.ascontiguousarray(np.flip(windows, dims)) if dims else windows
            logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            logits = np.flip(logits, dims) if dims else logits
            total = logits if total is None else total + logits
        self.run.advance(windows.shape[0])
        return total / len(self.mirror_sets)


def predict_labels(
    package: ModelPackage,
    volume: np.ndarray,
    grid: Sequence[int],
    grid_spacing: Sequence[float],
    settings: WindowSettings,
    run: Any,
    session: Any = None,
) -> np.ndarray:
    """Labels (z, y, x) on the grid of `volume` (C, z, y, x), the network seeing it resampled to `grid`; ``session``
    (default: ONNX Runtime's on the export) is anything with ONNX Runtime's ``run`` (OpenVINO's, `openvino_backend`)."""
    if settings.crf:
        raise ValueError(
            "The dense-CRF post-processing step needs PyTorch; use the torch backend or switch the CRF off."
        )
    roi, batch = settings.roi_size, settings.batch_size or 1
    images, spatial = (volume.shape[1], grid[1:]) if settings.spatial_dims == 2 else (1, grid)  # 2D: slices
    windows = images * count_windows(spatial, roi, settings.overlap)
    window = call_shape(batch, windows, (volume.shape[0], *roi))
    session = session or open_session(package, settings.device, settings.precision, window=window)
    if settings.spatial_dims == 2:  # (z, C, y, x)
        x = resample_linear(volume.transpose(1, 0, 2, 3), grid[1:])
    else:
        x = resample_linear(volume, grid)[np.newaxis]
    x = np.ascontiguousarray(x, dtype=np.float32)
    run.start_windows(windows)
    scores = sliding_window(
        x, roi, batch, WindowRunner(session, settings, run), settings.overlap, settings.sigma_scale
    )
    del x
    scores = scores.transpose(1, 0, 2, 3) if settings.spatial_dims == 2 else scores[0]
    return argmax_on_grid(scores, volume.shape[1:], settings.label_values)
