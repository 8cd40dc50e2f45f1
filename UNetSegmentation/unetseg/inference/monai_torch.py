"""An imported bundle's inferer run with PyTorch: MONAI's own `sliding_window_inference`, as ``monai.bundle run``.

The window settings come from the checked description (`monai_windows.window_plan`), never from the bundle's
config; the network is rebuilt from the manifest (`unetseg.models.weights.build_model`). Windows run on the
compute device (autocast on CUDA, as the project's torch backend), the volume and its scores stay on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from unetseg.devices import resolve_device
from unetseg.inference.monai_windows import batch_size, window_count, window_plan
from unetseg.inference.torch_backend import WindowNetwork
from unetseg.inference.windows import WindowSettings
from unetseg.models.weights import build_model


def torch_scores(package: Any, volume: np.ndarray, inferer: dict, settings: WindowSettings, run: Any) -> np.ndarray:
    """The network's blended scores (K, *spatial) over a preprocessed ``volume`` (C, *spatial)."""
    device = resolve_device(settings.device)
    network = WindowNetwork(build_model(package, device), settings, device, run)
    roi, slice_axis = window_plan(inferer, volume.shape[1:])

    def predict(windows: torch.Tensor) -> torch.Tensor:
        if slice_axis is None:
            return network(windows)
        return network(windows.squeeze(slice_axis + 2)).unsqueeze(slice_axis + 2)

    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    run.start_windows(window_count(inferer, volume.shape[1:]))
    with torch.no_grad():
        if inferer["kind"] == "whole_image":
            scores = predict(x.to(device))
        else:
            scores = sliding_window_inference(
                x,
                roi,
                batch_size(inferer, settings),
                predict,
                overlap=float(inferer["overlap"]),
                mode=inferer["mode"],
                sigma_scale=float(inferer["sigma_scale"]),
                padding_mode=inferer["padding_mode"],
                cval=float(inferer["cval"]),
                sw_device=device,
                device=torch.device("cpu"),
            )
    return scores[0].float().cpu().numpy()
