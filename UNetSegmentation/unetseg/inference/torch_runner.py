"""A package's network as a numpy forward on a torch device, for pipelines that stitch tiles themselves.

The windows run in the settings' precision (`torch_precision`: fp32 on the CPU unless a lower precision was asked
for or validated, CUDA autocast); `mirroring.MirroredTiles` adds the mirrored copies. No MONAI: it takes seconds
to import and this path never needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unetseg.devices import resolve_device
from unetseg.inference.mirroring import CPU_COPIES, MirroredTiles
from unetseg.inference.torch_precision import run_windows
from unetseg.inference.windows import WindowSettings
from unetseg.models.weights import build_model


def window_runner(package: Any, settings: WindowSettings, run: Any) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The callable mapping tiles ``(B, C, *patch)`` to mirror-averaged logits, and the tiles per call."""
    device = resolve_device(settings.device)
    network = build_model(package, device)

    def forward(batch: np.ndarray) -> np.ndarray:
        return run_windows(network, torch.from_numpy(batch), device, settings.precision).cpu().numpy()

    copies = CPU_COPIES if device.type == "cpu" else len(settings.mirror_sets())
    return MirroredTiles(forward, settings.mirror_sets(), copies, run), settings.batch_size or 1
