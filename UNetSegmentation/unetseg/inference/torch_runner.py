"""A package's network as a numpy window callable on a torch device: tiles in, logits out.

For pipelines that stitch windows themselves (nnU-Net's sliding window in numpy) rather than through MONAI: the
network is built once, runs under `torch_backend.WindowNetwork` (autocast on CUDA, mirror TTA averaging,
progress and cancel) and returns float32 numpy logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unetseg.devices import resolve_device
from unetseg.inference.torch_backend import WindowNetwork, window_batch_size
from unetseg.inference.windows import WindowSettings
from unetseg.models.weights import build_model


def window_runner(package: Any, settings: WindowSettings, run: Any,
                  channels: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The callable mapping tiles ``(B, C, *patch)`` to logits ``(B, K, *patch)``, and the tiles per call."""
    device = resolve_device(settings.device)
    network = build_model(package, device)
    call = WindowNetwork(network, settings, device, run)

    def predict(tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return call(torch.from_numpy(tiles).to(device)).float().cpu().numpy()

    return predict, window_batch_size(network, settings, channels, device)
