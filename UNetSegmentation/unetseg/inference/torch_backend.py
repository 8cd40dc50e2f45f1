"""The torch backend of the predictor: device choice, autocast, window batch size, mirror TTA, MONAI's
sliding window with nnU-Net's settings, the slab-wise return to the input grid, and the out-of-memory ladder.

The windows run in the settings' precision (`torch_precision`: autocast), and on
CUDA the volume with its stitched scores may stay in CPU memory while windows run on the GPU (MONAI's
``sw_device``/``device`` split). Out of
memory, the run is retried with half the window batch, then with the volume in CPU memory, then entirely on
the CPU, each step reported through the progress messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetseg.devices import resolve_device
from unetseg.inference.crf import dense_crf
from unetseg.inference.linear_resampling import ArrayOps, argmax_on_grid
from unetseg.inference.preprocessing import resample
from unetseg.inference.torch_precision import autocast_dtype
from unetseg.inference.windows import WindowSettings, count_windows, gaussian_weights
from unetseg.models.weights import build_model

# Cap on windows per network call on a GPU: beyond it the GPU is saturated and latency only grows.
_MAX_GPU_BATCH = 8
# Share of the free GPU memory the windows may use; the rest absorbs fragmentation and cuDNN workspaces.
_GPU_MEMORY_SHARE = 0.6


def is_out_of_memory(error: BaseException) -> bool:
    """True for the errors torch raises when a device runs out of memory."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


@dataclass(frozen=True)
class Attempt:
    """One way to run: where the windows run, where the volume and its scores live, windows per call."""

    compute: torch.device
    storage: torch.device
    batch_size: int

    def describe(self) -> str:
        """A short phrase for the progress messages."""
        where = f"windows on {self.compute.type}, volume on {self.storage.type}"
        return f"{where}, {self.batch_size} window(s) per batch"


def fallback_attempts(first: Attempt) -> list[Attempt]:
    """The out-of-memory ladder: halve the window batch, then keep the volume on the CPU, then CPU only."""
    ladder = [first]
    batch = first.batch_size
    while batch > 1:
        batch //= 2
        ladder.append(Attempt(first.compute, first.storage, batch))
    cpu = torch.device("cpu")
    if first.storage.type != "cpu":
        ladder.append(Attempt(first.compute, cpu, 1))
    if first.compute.type != "cpu":
        ladder.append(Attempt(cpu, cpu, 1))
    return ladder


class WindowNetwork:
    """The callable MONAI runs per window batch: autocast, mirror TTA averaging, progress and cancel."""

    def __init__(self, network: torch.nn.Module, settings: WindowSettings, device: torch.device, run: Any):
        self.network, self.run = network, run
        self.mirror_sets = settings.mirror_sets()
        self.autocast = autocast_dtype(device, settings.precision)
        self.device = device

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            total = None
            for axes in self.mirror_sets:
                dims = [a + 2 for a in axes]
                logits = self.network(windows.flip(dims) if dims else windows)
                logits = (logits.flip(dims) if dims else logits).float()
                total = logits if total is None else total + logits
        self.run.advance(windows.shape[0])
        return total / len(self.mirror_sets)


def window_batch_size(network: torch.nn.Module, settings: WindowSettings, channels: int, device: torch.device) -> int:
    """Windows per network call: as asked, else measured against free GPU memory; 1 on CPU/MPS.

    On a GPU one probe window gives the real memory a window needs. On the CPU, batching windows gains
    nothing (convolutions already use every core) while memory grows with the batch, as nnU-Net observed.
    """
    if settings.batch_size is not None:
        return settings.batch_size
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    probe = torch.zeros((1, channels, *settings.roi_size), device=device)
    dtype = autocast_dtype(device, settings.precision)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        network(probe)
    per_window = max(torch.cuda.max_memory_allocated(device) - before, 1)  # mirrored passes run one by one
    return int(max(1, min(_MAX_GPU_BATCH, _GPU_MEMORY_SHARE * free // per_window)))


def _volume_fits(device: torch.device, volume_bytes: int) -> bool:
    """Whether the volume and its scores can live in the device's memory (always on the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return volume_bytes < 0.3 * free


def predict_labels(
    package: Any,
    volume: np.ndarray,
    grid: Sequence[int],
    grid_spacing: Sequence[float],
    settings: WindowSettings,
    run: Any,
) -> np.ndarray:
    """Labels (z, y, x) on the grid of `volume` (C, z, y, x), the network seeing it resampled to `grid`
    (of voxel size `grid_spacing`, z, y, x mm)."""
    device = resolve_device(settings.device)
    num_classes = len(settings.label_values)
    network = build_model(package, device)
    batch = window_batch_size(network, settings, volume.shape[0], device)
    scores_bytes = 4 * (volume.shape[0] + num_classes + 1) * int(np.prod(grid))
    storage = device if _volume_fits(device, scores_bytes) else torch.device("cpu")
    ladder = fallback_attempts(Attempt(device, storage, batch))
    for number, attempt in enumerate(ladder):
        if number:
            run.note(f"Out of memory; retrying with {attempt.describe()}.")
        try:
            return _run_attempt(network.to(attempt.compute), volume, grid, grid_spacing, settings, attempt, run)
        except Exception as error:
            if not is_out_of_memory(error) or number == len(ladder) - 1:
                raise
            _release(attempt.compute)
    raise AssertionError("unreachable: the last attempt re-raises")


def refine_with_crf(scores: torch.Tensor, image: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Class probabilities (C, z, y, x) refined by the dense CRF on the network grid (a slab of one 2D slice
    is refined in 2D), from the blended logits and the normalised first input channel."""
    probabilities = torch.softmax(scores.float(), dim=0)
    if scores.shape[1] == 1:
        return dense_crf(probabilities[:, 0], image[0], spacing[1:])[:, None]
    return dense_crf(probabilities, image, spacing)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _run_attempt(
    network: torch.nn.Module,
    volume: np.ndarray,
    grid: Sequence[int],
    grid_spacing: Sequence[float],
    settings: WindowSettings,
    attempt: Attempt,
    run: Any,
) -> np.ndarray:
    """One try: resample to the network grid, stitch the windows, return labels on the volume's grid."""
    from monai.inferers import sliding_window_inference  # lazy: MONAI (seconds to import; other pipelines skip it)

    x = torch.from_numpy(volume).to(attempt.storage)
    if settings.spatial_dims == 2:  # slices become the batch: (z, C, y, x)
        x = resample(x.permute(1, 0, 2, 3), grid[1:], "linear")
    else:
        x = resample(x, grid, "linear").unsqueeze(0)
    roi = settings.roi_size
    run.start_windows(x.shape[0] * count_windows(x.shape[2:], roi, settings.overlap))
    with torch.no_grad():
        scores = sliding_window_inference(
            x,
            roi,
            attempt.batch_size,
            WindowNetwork(network, settings, attempt.compute, run),
            overlap=settings.overlap,
            mode="gaussian",
            sigma_scale=settings.sigma_scale,
            sw_device=attempt.compute,
            device=attempt.storage,
            roi_weight_map=torch.from_numpy(gaussian_weights(roi, settings.sigma_scale)).to(attempt.compute),
        )
    scores = scores.permute(1, 0, 2, 3) if settings.spatial_dims == 2 else scores[0]
    if settings.crf:
        run.report(run.fraction, "dense CRF")
        scores = refine_with_crf(scores, x[:, 0] if settings.spatial_dims == 2 else x[0, 0], grid_spacing)
    del x
    ops = ArrayOps(asarray=lambda a: torch.as_tensor(a, device=scores.device), to_numpy=lambda t: t.cpu().numpy())
    return argmax_on_grid(scores, volume.shape[1:], settings.label_values, ops)
