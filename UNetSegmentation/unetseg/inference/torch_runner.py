"""A package's network as a numpy forward on a torch device, for pipelines that stitch tiles themselves.

fp32 on the CPU and fp16 autocast on CUDA, as nnU-Net runs its networks; `mirroring.MirroredTiles` adds the
mirrored copies. No MONAI: it takes seconds to import and this path never needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unetseg.devices import resolve_device
from unetseg.inference.mirroring import CPU_COPIES, MirroredTiles
from unetseg.inference.windows import WindowSettings
from unetseg.models.weights import build_model


def window_runner(package: Any, settings: WindowSettings, run: Any) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The callable mapping tiles ``(B, C, *patch)`` to mirror-averaged logits, and the tiles per call."""
    device = resolve_device(settings.device)
    network = build_model(package, device)

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            return network(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    copies = CPU_COPIES if device.type == "cpu" else len(settings.mirror_sets())
    return MirroredTiles(forward, settings.mirror_sets(), copies, run), settings.batch_size or 1
