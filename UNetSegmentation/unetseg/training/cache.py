"""The preprocessed-case cache: each training case cropped, normalised and resampled once, then memory-mapped.

nnU-Net's order of operations (crop, normalise at native resolution, resample to the plan's spacing); later
epochs and runs load the cache instead of reading the images again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unetseg.image import Image
from unetseg.inference import preprocessing
from unetseg.inference.prepare import Preparation, prepare
from unetseg.training.datasets import Case, CroppedCase, Dataset, load_cropped_case
from unetseg.training.planning import Plan

CACHE_VERSION = 1
MAX_LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_COVERAGE = 0.01


@dataclass
class PreprocessedCase:
    """A case ready for patch sampling: cropped, normalised, resampled to the plan's spacing.

    ``label`` holds class indices (class ``i`` is label value ``plan.label_values[i]``); ``class_locations``
    maps each foreground class index to sampled voxel coordinates ``(N, 3)`` for foreground oversampling.
    Arrays loaded from the cache are read-only memory maps.
    """

    name: str
    image: np.ndarray  # (C, z, y, x) float32
    label: np.ndarray  # (z, y, x) uint8
    spacing: tuple[float, float, float]  # (x, y, z)
    class_locations: dict[int, np.ndarray]
    properties: dict = field(default_factory=dict)


def preprocessing_key(plan: Plan) -> dict:
    """The part of a plan that determines preprocessed arrays (and so the cache key)."""
    spacing = list(plan.target_spacing[:2]) if plan.spatial_dims == 2 else list(plan.target_spacing)
    return {"spatial_dims": plan.spatial_dims, "spacing": spacing, "normalization": list(plan.normalization),
            "label_values": list(plan.label_values), "channels": len(plan.channel_names)}


def training_preparation(plan: Plan) -> Preparation:
    """How the trainer prepares every case, and so what its model's manifest declares: the plan's spacing and
    normalisation, the non-zero crop, the images' own axes (nnU-Net's preprocessing)."""
    return Preparation(spatial_dims=plan.spatial_dims, normalization=tuple(plan.normalization),
                       target_spacing=tuple(plan.target_spacing), orientation=None, crop="nonzero")


def preprocess_case(cropped: CroppedCase, plan: Plan) -> PreprocessedCase:
    """`prepare` a cropped case (normalised at native resolution), then resample it to the plan's spacing
    (nnU-Net's order of operations); label values become class indices."""
    if cropped.label is None:
        raise ValueError(f"Case {cropped.name!r} has no label map; training needs one.")
    # The crop's own grid: the trainer keeps the images' axes, so origin and direction play no part.
    prepared = prepare([Image(channel, cropped.spacing) for channel in cropped.images], training_preparation(plan))
    image = preprocessing.resample(torch.from_numpy(prepared.volume), prepared.grid, "cubic").numpy()
    classes = _to_class_indices(prepared.apply(cropped.label), plan.label_values)
    label = preprocessing.resample_labels(classes, prepared.grid)
    properties = {"original_spacing": list(cropped.spacing), "shape_before_crop": list(cropped.shape_before_crop),
                  "bbox": [list(b) for b in cropped.bbox], "shape_after_crop": list(cropped.label.shape)}
    spacing = tuple(reversed(prepared.target_spacing))
    return PreprocessedCase(cropped.name, image, label, spacing, _class_locations(label, cropped.name), properties)


def _to_class_indices(label: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    lut = np.zeros(max(int(label.max(initial=0)), max(label_values)) + 1, dtype=np.uint8)
    lut[list(label_values)] = np.arange(len(label_values), dtype=np.uint8)
    return lut[label.astype(np.int64)]


def _class_locations(label: np.ndarray, name: str) -> dict[int, np.ndarray]:
    """Up to 10 000 (at least 1 %) random voxel coordinates of each foreground class (nnU-Net's sampler)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    locations = {}
    for c in np.unique(label):
        if c == 0:
            continue
        coords = np.argwhere(label == c).astype(np.int32)
        n = max(min(MAX_LOCATIONS_PER_CLASS, len(coords)), math.ceil(len(coords) * MIN_LOCATION_COVERAGE))
        locations[int(c)] = coords[np.sort(rng.choice(len(coords), n, replace=False))]
    return locations


def preprocess_dataset(
    dataset: Dataset, plan: Plan, cache_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> list[PreprocessedCase]:
    """Preprocess every case once and cache it; later calls (epochs, runs) load the cache instead.

    Each case is stored in ``cache_dir/<case>-<key>/`` where the key hashes the case's file paths,
    modification times and sizes and the plan's preprocessing, so editing a file or the plan re-runs it.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for i, case in enumerate(dataset.cases):
        entry = cache_dir / f"{_safe(case.name)}-{_cache_key(case, plan)}"
        if not (entry / "meta.json").is_file():
            _save_case(entry, preprocess_case(load_cropped_case(case, dataset), plan))
        result.append(_load_case(entry))
        if progress is not None:
            progress(i + 1, len(dataset.cases))
    return result


def _cache_key(case: Case, plan: Plan) -> str:
    files = []
    for p in (*case.image_paths, case.label_path):
        if p is not None:
            stat = p.stat()
            files.append([str(p.resolve()), stat.st_mtime_ns, stat.st_size])
    doc = {"version": CACHE_VERSION, "files": files, "preprocessing": preprocessing_key(plan)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _save_case(entry: Path, case: PreprocessedCase) -> None:
    """Write a cache entry into a temporary folder renamed into place, so a crash never leaves half a case."""
    tmp = entry.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{entry.name}")
    tmp.mkdir()
    try:
        np.save(tmp / "image.npy", case.image.astype(np.float32, copy=False))
        np.save(tmp / "label.npy", case.label)
        np.savez(tmp / "locations.npz", **{str(c): v for c, v in case.class_locations.items()})
        meta = {"name": case.name, "spacing": list(case.spacing), "properties": case.properties}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # another process (DDP rank) may have written it first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _load_case(entry: Path) -> PreprocessedCase:
    meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    with np.load(entry / "locations.npz") as npz:
        locations = {int(k): npz[k] for k in npz.files}
    return PreprocessedCase(
        name=meta["name"],
        image=np.load(entry / "image.npy", mmap_mode="r"),
        label=np.load(entry / "label.npy", mmap_mode="r"),
        spacing=tuple(meta["spacing"]),
        class_locations=locations,
        properties=meta["properties"],
    )
