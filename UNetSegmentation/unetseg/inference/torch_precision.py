"""How torch runs windows in a precision: the autocast dtype and, for bf16 on the CPU, channels-last 3D memory.

oneDNN's bf16 convolutions (AVX-512 BF16, AMX) want channels-last (NDHWC) tensors: in the default layout each
convolution reorders its input and weights first. The network is converted once and each window batch on the way
in; the logits come back in fp32 and the default layout, so stitching is unchanged.
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


def channels_last(device: torch.device, precision: str, windows_ndim: int) -> bool:
    """Whether windows of ``windows_ndim`` dimensions run channels-last: 3D windows in bf16 on the CPU."""
    return device.type == "cpu" and precision == "bf16" and windows_ndim == 5


def prepare_network(network: nn.Module, device: torch.device, precision: str, spatial_dims: int) -> nn.Module:
    """The network in the memory layout its windows will use (converted in place; returned for chaining)."""
    if channels_last(device, precision, spatial_dims + 2):
        network.to(memory_format=torch.channels_last_3d)
    return network


def window_layout(windows: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """A window batch in the layout `prepare_network` chose."""
    if channels_last(device, precision, windows.ndim):
        return windows.contiguous(memory_format=torch.channels_last_3d)
    return windows


def run_windows(network: nn.Module, windows: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """Logits (fp32, default layout) of one window batch in ``precision``, without gradients."""
    dtype = autocast_dtype(device, precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = network(window_layout(windows.to(device), device, precision))
    return logits.float().contiguous()


def window_logits(package: Any, precisions: Sequence[str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """For each precision, a function from windows ``(N, C, *patch)`` to their fp32 logits: the package's network
    built once, on the CPU, in the memory layout of the precision asked (as the predictor runs it), one window at a
    time."""
    device = torch.device("cpu")
    network = build_model(package, device)
    dims = int(package.spatial_dims)

    def runner(precision: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(windows: np.ndarray) -> np.ndarray:
            layout = torch.channels_last_3d if channels_last(device, precision, dims + 2) else torch.contiguous_format
            network.to(memory_format=layout)
            return np.concatenate([run_windows(network, torch.from_numpy(w[np.newaxis]), device, precision).numpy()
                                   for w in windows])  # fmt: skip

        return run

    return {precision: runner(precision) for precision in precisions}
