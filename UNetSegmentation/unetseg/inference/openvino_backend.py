"""The OpenVINO backend: a package's ONNX export (or its int8 export) compiled by OpenVINO for the CPU.

On this project's CPUs OpenVINO ran nnU-Net's planned network fastest (README, inference speed): it fuses the
convolution, instance-norm and activation chains and runs bf16 natively where the CPU has AVX-512 BF16 or AMX, int8
on VNNI. It reads the same ``model.onnx`` ONNX Runtime reads (no conversion step, no torch), compiled once per run
for one window shape (windows always have the patch's size); everything else — resampling, stitching, the arg-max
on the input grid — is the ONNX path's (`onnx_backend.predict_labels` with this session). Optional: ``pip install
openvino`` (about 60 MB, no other dependency than its telemetry stub).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.inference import onnx_backend
from unetseg.inference.engines import int8_path, openvino_cpu_config
from unetseg.inference.onnx_backend import INPUT_NAME, WEIGHTS_DIGEST_KEY, check_current
from unetseg.inference.windows import WindowSettings
from unetseg.models.package import ModelPackage


class OpenVinoSession:
    """ONNX Runtime's ``run(outputs, feeds)`` over an OpenVINO model compiled for one window at a time (once per
    window shape: a package's windows have one shape, an imported bundle's slice inferer another)."""

    def __init__(self, path: Path, precision: str) -> None:
        self.core = shared_core()
        self.model = self.core.read_model(str(path))
        self.recorded = _recorded_digest(self.model)
        self.options = openvino_cpu_config(precision)
        self.compiled: dict[tuple[int, ...], Any] = {}

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        windows = feeds[INPUT_NAME]
        return [np.concatenate([self._compiled(w.shape)([w[np.newaxis]])[0] for w in windows])]

    def _compiled(self, window: tuple[int, ...]) -> Any:
        if window not in self.compiled:
            self.model.reshape([1, *window])
            self.compiled[window] = self.core.compile_model(self.model, "CPU", self.options)
        return self.compiled[window]


@functools.cache
def shared_core() -> Any:
    """The process's one OpenVINO Core, kept for its lifetime.

    Each Core's CPU plugin installs its own signal stack for the thread that compiles and, when the Core goes,
    puts back the one it found: two Cores released in the order they were made (two sessions, the precision
    check's bf16 and int8) leave the thread on the first one's freed stack, and the next Python signal handler it
    runs (Ctrl-C, a DataLoader worker's exit) kills the process (seen with OpenVINO 2026.4). One Core never swaps.
    """
    import openvino  # lazy: OpenVINO, only when this backend runs

    return openvino.Core()


def _recorded_digest(model: Any) -> str | None:
    key = ["framework", WEIGHTS_DIGEST_KEY]
    return str(model.get_rt_info(key).astype(str)) if model.has_rt_info(key) else None


def open_session(package: ModelPackage, settings: WindowSettings) -> OpenVinoSession:
    """OpenVINO on the package's current export (int8 export for int8); a missing or outdated one is a clear error."""
    if settings.device not in ("auto", "cpu"):
        raise ValueError(f"The OpenVINO backend runs on the CPU; got device {settings.device!r}.")
    path = int8_path(package) if settings.precision == "int8" else package.onnx_path
    if not path.is_file():
        name = package.name
        raise ValueError(f"Model '{name}' has no ONNX export ({path}). Create it with: unetseg export-onnx {name}")
    session = OpenVinoSession(path, settings.precision)
    check_current(package, path, session.recorded)
    return session


def export_session(backend: str, package: ModelPackage, settings: WindowSettings, window: Sequence[int]) -> Any:
    """A session on the package's ONNX export with ``run(outputs, feeds)``: ONNX Runtime's or OpenVINO's.
    ``window``: the input shape of every call (batch first); OpenVINO's session compiles per shape anyway."""
    if backend == "openvino":
        return open_session(package, settings)
    return onnx_backend.open_session(package, settings.device, settings.precision, window=window)


def predict_labels(
    package: ModelPackage,
    volume: np.ndarray,
    grid: Sequence[int],
    grid_spacing: Sequence[float],
    settings: WindowSettings,
    run: Any,
) -> np.ndarray:
    """Labels (z, y, x) on the grid of `volume` (C, z, y, x), the network seeing it resampled to `grid`."""
    session = open_session(package, settings)
    return onnx_backend.predict_labels(package, volume, grid, grid_spacing, settings, run, session=session)
