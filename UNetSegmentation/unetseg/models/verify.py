"""Refuse at import a package that could never run: its weights must fit the network its manifest describes.

The manifest alone is validated by `manifest.validate_manifest`; this builds the network and loads the weights
strictly (torch), or, where PyTorch is absent, checks the ONNX export's output channels against the label table,
so a wrong class count or a mistyped network fails at import, not at a user's first Apply.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from unetseg.models.manifest import PackageError

if TYPE_CHECKING:
    from unetseg.models.package import ModelPackage


def verify_loadable(pkg: ModelPackage) -> None:
    """Raise `PackageError` naming the mismatch when ``pkg``'s weights cannot run as its manifest says."""
    if importlib.util.find_spec("torch") is not None:
        from unetseg.models.weights import build_model  # lazy: torch

        build_model(pkg)  # WeightsError (a PackageError) names missing, unexpected and mis-shaped tensors
        return
    if pkg.onnx_path.is_file() and importlib.util.find_spec("onnxruntime") is not None:
        _check_onnx_outputs(pkg)


def _check_onnx_outputs(pkg: ModelPackage) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(pkg.onnx_path), providers=["CPUExecutionProvider"])
    channels = session.get_outputs()[0].shape[1]
    expected = pkg.network_config.get("heads") or pkg.network_config["num_classes"]
    if isinstance(channels, int) and channels != expected:
        raise PackageError(
            f"The ONNX export of model {pkg.name} gives {channels} output channels but its manifest declares "
            f"{expected}; re-export it (`unetseg export-onnx {pkg.name}`) from the matching weights."
        )
