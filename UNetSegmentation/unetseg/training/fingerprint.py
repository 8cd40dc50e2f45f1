"""The dataset fingerprint: what nnU-Net's planner needs to know about a dataset, read from every case once.

Spacings, shapes after the non-zero crop, pooled foreground intensity statistics per channel and class sizes
(nnU-Net v2's ``fingerprint_extractor.py``, re-implemented). Axis conventions as in `planning`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from unetseg.training.datasets import Dataset, load_cropped_case

# nnU-Net samples 1e8 foreground voxels; 1e7 gives the same percentiles to 3 digits on a laptop's memory.
DEFAULT_FOREGROUND_SAMPLES = 10_000_000


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel, pooled over the dataset."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    p00_5: float
    p99_5: float

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> IntensityStats:
        """Statistics of a 1D sample of foreground intensities."""
        samples = np.asarray(samples, dtype=np.float64)
        p00_5, median, p99_5 = np.percentile(samples, (0.5, 50.0, 99.5))
        return cls(float(samples.mean()), float(samples.std()), float(median), float(samples.min()),
                   float(samples.max()), float(p00_5), float(p99_5))


@dataclass(frozen=True)
class Fingerprint:
    """What the planner needs to know about a dataset; saved as JSON next to the plans."""

    spacings: tuple[tuple[float, float, float], ...]
    shapes_after_crop: tuple[tuple[int, int, int], ...]
    intensity_stats: tuple[IntensityStats, ...]
    class_voxel_counts: dict[int, int]
    median_relative_size_after_crop: float
    modality: str
    channel_names: tuple[str, ...]
    labels: dict[int, str]

    def __post_init__(self) -> None:
        if not self.spacings or len(self.spacings) != len(self.shapes_after_crop):
            raise ValueError("A fingerprint needs one spacing and one cropped shape per case (and ≥ 1 case).")
        if len(self.intensity_stats) != len(self.channel_names):
            raise ValueError("A fingerprint needs intensity statistics for every channel.")

    @property
    def num_cases(self) -> int:
        """Number of training cases."""
        return len(self.spacings)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (integer keys become strings)."""
        d = asdict(self)
        d["class_voxel_counts"] = {str(k): int(v) for k, v in self.class_voxel_counts.items()}
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        """Inverse of `to_dict`."""
        return cls(
            spacings=tuple(tuple(float(v) for v in s) for s in d["spacings"]),
            shapes_after_crop=tuple(tuple(int(v) for v in s) for s in d["shapes_after_crop"]),
            intensity_stats=tuple(IntensityStats(**s) for s in d["intensity_stats"]),
            class_voxel_counts={int(k): int(v) for k, v in d["class_voxel_counts"].items()},
            median_relative_size_after_crop=float(d["median_relative_size_after_crop"]),
            modality=str(d["modality"]),
            channel_names=tuple(d["channel_names"]),
            labels={int(k): str(v) for k, v in d["labels"].items()},
        )


def compute_fingerprint(
    dataset: Dataset, max_foreground_samples: int = DEFAULT_FOREGROUND_SAMPLES, seed: int = 1234
) -> Fingerprint:
    """Read every case once and summarise spacings, cropped shapes, foreground intensities and class sizes."""
    if not dataset.cases:
        raise ValueError("The dataset has no cases; add training cases before planning.")
    per_case = max(1, int(max_foreground_samples) // len(dataset.cases))
    rng = np.random.default_rng(seed)
    spacings, shapes, ratios = [], [], []
    samples: list[list[np.ndarray]] = [[] for _ in dataset.channel_names]
    counts: dict[int, int] = {}
    for case in dataset.cases:
        cropped = load_cropped_case(case, dataset)
        if cropped.label is None:
            raise ValueError(f"Case {case.name!r} has no label map; planning needs labelled cases.")
        spacings.append(tuple(float(s) for s in cropped.spacing))
        shapes.append(tuple(int(n) for n in cropped.label.shape))
        ratios.append(cropped.label.size / math.prod(cropped.shape_before_crop))
        values, n = np.unique(cropped.label, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist(), strict=True):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
        foreground = cropped.label > 0
        if foreground.any():
            for channel, image in zip(samples, cropped.images, strict=True):
                channel.append(rng.choice(image[foreground], per_case, replace=True))
    if not samples[0]:
        raise ValueError("No case has any labelled foreground voxel; check the label maps.")
    return Fingerprint(
        spacings=tuple(spacings),
        shapes_after_crop=tuple(shapes),
        intensity_stats=tuple(IntensityStats.from_samples(np.concatenate(s)) for s in samples),
        class_voxel_counts=dict(sorted(counts.items())),
        median_relative_size_after_crop=float(np.median(ratios)),
        modality=dataset.modality,
        channel_names=tuple(dataset.channel_names),
        labels=dict(dataset.labels),
    )
