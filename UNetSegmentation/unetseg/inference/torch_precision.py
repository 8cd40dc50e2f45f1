"""How torch runs windows in a precision: the autocast dtype, windows in and fp32 logits out.

Windows stay in the default (NCDHW) memory layout in every precision: on this project's CPU (AVX-512 BF16, torch
2.13) oneDNN's bf16 convolutions ran 20 % slower on channels-last 3D tensors than on the default layout (nnU-Net's
80x128x128 and a 160x160x128 window of its PlainConvUNet; no difference on the bundled networks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unetseg.models.weights import build_model

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None: fp32). ``auto`` is the predictor's behaviour before precisions
    were validated: bf16 on CUDA where supported, else fp16; none on CPU/MPS."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES.get(precision)


def run_windows(network: nn.Module, windows: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """Logits (fp32, default layout) of one window batch in ``precision``, without gradients."""
    dtype = autocast_dtype(device, precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = network(windows.to(device))
    return logits.float().contiguous()


def window_logits(package: Any, precisions: Sequence[str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """For each precision, a function from windows ``(N, C, *patch)`` to their fp32 logits: the package's network
    built once, on the CPU, run as the predictor runs it, one window at a time."""
    device = torch.device("cpu")
    network = build_model(package, device)

    def runner(precision: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(windows: np.ndarray) -> np.ndarray:
            return np.concatenate([run_windows(network, torch.from_numpy(w[np.newaxis]), device, precision).numpy()
                                   for w in windows])  # fmt: skip

        return run

    return {precision: runner(precision) for precision in precisions}
