"""Bounds on the work one segmentation may take, checked before any resampling or window runs.

A tiny file can declare a huge spacing (or a huge grid), and resampling it to the model's spacing would then
fill the machine's memory for minutes before failing. The predictor computes the network grid, the windows and
the memory they imply first, and refuses beyond `WorkLimits` with the numbers and the model's spacing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from unetseg.inference.windows import WindowSettings, count_windows
from unetseg.vocabulary import DEFAULT_MAX_WINDOWS

# Share of the machine's physical memory one segmentation may plan to use by default.
DEFAULT_MEMORY_SHARE = 0.75


class WorkTooLargeError(ValueError):
    """The input would need more windows or memory than the limits allow; the message gives the numbers."""


@dataclass(frozen=True)
class WorkLimits:
    """Ceilings for one segmentation: memory in GB (None: a share of this machine's memory) and windows."""

    max_memory_gb: float | None = None
    max_windows: int = DEFAULT_MAX_WINDOWS

    def memory_bytes(self) -> float:
        """The memory ceiling in bytes."""
        if self.max_memory_gb is not None:
            return self.max_memory_gb * 1024**3
        return DEFAULT_MEMORY_SHARE * physical_memory_bytes()


def physical_memory_bytes() -> float:
    """This machine's physical memory (POSIX sysconf); infinity where the platform does not say."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return math.inf


def planned_windows(grid: Sequence[int], settings: WindowSettings) -> int:
    """Windows a backend runs over a volume of network `grid` (z, y, x): per slice for 2D networks."""
    if settings.spatial_dims == 2:
        return int(grid[0]) * count_windows(grid[1:], settings.roi_size, settings.overlap)
    return count_windows(grid, settings.roi_size, settings.overlap)


def planned_bytes(grid: Sequence[int], channels: int, settings: WindowSettings) -> int:
    """Memory the volume needs on the network grid: the resampled input channels, one score per class and the
    blending weights, in float32 (what the backends hold while windows run)."""
    return 4 * (channels + len(settings.label_values) + 1) * math.prod(int(n) for n in grid)


def check_work(
    grid: Sequence[int],
    channels: int,
    settings: WindowSettings,
    limits: WorkLimits,
    image_spacing: Sequence[float],
    network_spacing: Sequence[float],
) -> None:
    """Refuse a segmentation whose network grid needs more windows or memory than `limits` allow.

    Spacings are (z, y, x) mm: the image's own and the one the model resamples it to, quoted in the message.
    """
    windows = planned_windows(grid, settings)
    needed = planned_bytes(grid, channels, settings)
    ceiling = limits.memory_bytes()
    if windows <= limits.max_windows and needed <= ceiling:
        return
    grid_text = " x ".join(str(int(n)) for n in grid)
    raise WorkTooLargeError(
        f"This input would be resampled to a {grid_text} voxel grid (its spacing {_mm(image_spacing)} resampled "
        f"to the model's {_mm(network_spacing)}, z, y, x): {windows:,} windows and about "
        f"{needed / 1024**3:.1f} GB of memory, beyond the limits of {limits.max_windows:,} windows and "
        f"{ceiling / 1024**3:.1f} GB. Check the image's spacing in its header (a wrong spacing makes a small file "
        "huge), crop it to the region of interest, or raise the limits (--max-windows, --max-memory-gb)."
    )


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{float(s):g}" for s in spacing) + " mm"
