"""Training patches: nnU-Net's foreground oversampling, augmented, seeded by the sample's position in the run.

Sample ``g`` of the run (``g = iteration × global batch + position in the batch``) is a pure function of the
seed and ``g``: its case, centre and augmentation come from ``numpy.random.default_rng([seed, g])``. So a run
resumed at iteration ``i`` sees exactly the patches an uninterrupted run would, and DistributedDataParallel
ranks that each take their slice of every global batch (`rank_batches`, our DistributedSampler) train on the
same global batches as a single process would.

nnU-Net's data loader is written for its own batchgenerators; MONAI's `RandCropByLabelClassesd` picks
centres from full label maps, not from the cached foreground locations, and cannot force "the last third of
each batch" — so the sampling rule is ours (written after nnU-Net's ``data_loader.py``), the augmentation is
MONAI's (`augmentation.build_train_transforms`).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from unetseg.training.augment_settings import AugmentationSettings
from unetseg.training.augmentation import build_train_transforms, sampling_size
from unetseg.training.cache import PreprocessedCase


@dataclass(frozen=True)
class SamplingConfig:
    """What a patch looks like: its size (2 or 3 axes), batch size, the foreground share and its augmentations."""

    patch_size: tuple[int, ...]
    global_batch_size: int
    oversample_foreground: float = 0.33
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)  # default: nnU-Net's
    mirror_axes: tuple[int, ...] | None = None  # None: every axis
    seed: int = 0

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def forced_foreground(self, position: int) -> bool:
        """nnU-Net's rule: the last round(batch × share) samples of each batch are centred on foreground."""
        random_count = round(self.global_batch_size * (1.0 - self.oversample_foreground))
        return position >= random_count


def crop_padded(array: np.ndarray, lower: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The box ``[lower, lower + size)`` over the last ``len(size)`` axes, zero where it leaves the array."""
    lead = array.ndim - len(size)
    out = np.zeros((*array.shape[:lead], *size), dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for lo, n, extent in zip(lower, size, array.shape[lead:], strict=True):
        start, stop = max(lo, 0), min(lo + n, extent)
        if stop <= start:
            return out
        src.append(slice(start, stop))
        dst.append(slice(start - lo, stop - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler(torch.utils.data.Dataset):
    """Map-style dataset whose item ``g`` is the run's ``g``-th augmented patch: ``(image (C, *patch), label
    (1, *patch) int64)``. 2D plans sample one slice (numpy axis 0) of a case per patch."""

    def __init__(self, cases: Sequence[PreprocessedCase], config: SamplingConfig) -> None:
        if not cases:
            raise ValueError("No training cases to sample patches from.")
        self.cases = list(cases)
        self.config = config
        self.crop_size = sampling_size(config.patch_size, config.mirror_axes)
        self.transforms = build_train_transforms(config.patch_size, config.augmentation,
                                                 mirror_axes=config.mirror_axes)

    def __len__(self) -> int:
        return 2**62  # indexed by the run's sample counter, never exhausted

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, int(index)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        position = int(index) % cfg.global_batch_size
        lower = self._patch_lower(case, cfg.forced_foreground(position), rng)
        image, label = self._crop(case, lower)
        self.transforms.set_random_state(int(rng.integers(2**31)))
        out = self.transforms({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
        return _plain(out["image"]).float(), _plain(out["label"]).round().long()

    def _patch_lower(self, case: PreprocessedCase, foreground: bool, rng: np.random.Generator) -> list[int]:
        """Lower corner (numpy order, all 3 axes) of the patch: random, or around a foreground voxel."""
        shape = case.label.shape
        patch = self._patch_3d()
        voxel = _foreground_voxel(case, rng) if foreground else None
        lower = []
        for axis, (n, p) in enumerate(zip(shape, patch, strict=True)):
            pad = max(p - n, 0)
            lo, hi = -(pad // 2), n + pad // 2 + pad % 2 - p
            if voxel is None:
                lower.append(int(rng.integers(lo, hi + 1)))
            else:
                lower.append(int(np.clip(voxel[axis] - p // 2, lo, hi)))
        return lower

    def _patch_3d(self) -> tuple[int, ...]:
        """The patch over (z, y, x): one slice for 2D plans."""
        patch = self.config.patch_size
        return patch if len(patch) == 3 else (1, *patch)

    def _crop(self, case: PreprocessedCase, lower: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Image (C, *crop) and label (1, *crop) of the enlarged crop around the patch (zero-padded)."""
        patch = self._patch_3d()
        crop = self.crop_size if len(self.crop_size) == 3 else (1, *self.crop_size)
        start = [lo - (c - p) // 2 for lo, c, p in zip(lower, crop, patch, strict=True)]
        image = crop_padded(case.image, start, crop).astype(np.float32, copy=False)
        label = crop_padded(case.label, start, crop)[None].astype(np.float32)
        if self.config.spatial_dims == 2:
            return image[:, 0], label[:, 0]
        return image, label


def _foreground_voxel(case: PreprocessedCase, rng: np.random.Generator) -> np.ndarray | None:
    """A random cached location of a random foreground class present in the case (None: no foreground)."""
    classes = [c for c, locations in sorted(case.class_locations.items()) if len(locations)]
    if not classes:
        return None
    locations = case.class_locations[classes[int(rng.integers(len(classes)))]]
    return locations[int(rng.integers(len(locations)))]


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (collating metadata per patch is wasted work)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def rank_share(global_batch: int, rank: int, world_size: int) -> range:
    """Positions of the global batch this rank computes (contiguous; the first ranks take any remainder)."""
    if global_batch < world_size:
        raise ValueError(
            f"The batch size ({global_batch}) is smaller than the number of processes ({world_size}); "
            "use fewer processes or a larger batch size."
        )
    base, extra = divmod(global_batch, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class RankBatches(torch.utils.data.Sampler):
    """Batch sampler: for each iteration from ``start_iteration`` on, this rank's sample indices."""

    def __init__(self, global_batch: int, rank: int, world_size: int, start_iteration: int = 0) -> None:
        self.global_batch = global_batch
        self.share = rank_share(global_batch, rank, world_size)
        self.start_iteration = start_iteration

    def __iter__(self) -> Iterator[list[int]]:
        iteration = self.start_iteration
        while True:
            yield [iteration * self.global_batch + p for p in self.share]
            iteration += 1


def patch_loader(
    cases: Sequence[PreprocessedCase],
    config: SamplingConfig,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless iterator of this rank's batches ``(images (B, C, *patch), labels (B, 1, *patch))``."""
    loader = torch.utils.data.DataLoader(
        PatchSampler(cases, config),
        batch_sampler=RankBatches(config.global_batch_size, rank, world_size, start_iteration),
        num_workers=num_workers,
        multiprocessing_context=worker_context() if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)


def worker_context() -> multiprocessing.context.BaseContext | None:
    """Fork the data-loading workers on Linux, whatever the process's default start method.

    A process started by spawn or forkserver (the variant benchmark's runs, a Python 3.14 default) inherits that
    start method, and each worker would then re-import torch and MONAI and receive a pickled copy of the cases:
    measured 35-100 s before the first batch with 8 workers, against about 1 s forked. Elsewhere (macOS, Windows)
    forking is unsafe, so the platform's default stays."""
    return multiprocessing.get_context("fork") if sys.platform == "linux" else None
