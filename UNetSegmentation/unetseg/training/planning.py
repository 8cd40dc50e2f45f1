"""nnU-Net-style automatic planning: the experiment plan a dataset fingerprint implies, and its file.

The rules are those published in nnU-Net v2 (``default_experiment_planner.py``; the network topology rules are
in `topology`), re-implemented here as pure functions over small dataclasses (no code copied; nnU-Net's plans
come from a class hierarchy and need its network package to count feature maps).

Axis conventions: spacings are ITK ``(x, y, z)``; shapes, patch sizes, strides and kernel sizes are numpy
``(z, y, x)`` (2D plans: ``(y, x)``). Importing this module needs numpy only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unetseg.training.augment_settings import AugmentationSettings
from unetseg.training.topology import (
    FEATUREMAP_MIN_EDGE,
    Topology,
    estimate_memory,
    features_per_stage,
    initial_patch_size,
    pool_and_conv_props,
)
from unetseg.vocabulary import MODALITIES

if TYPE_CHECKING:
    from unetseg.training.fingerprint import Fingerprint

# nnU-Net v2 constants (configuration.py and ExperimentPlanner.__init__).
ANISO_THRESHOLD = 3.0
# Feature-map units a PlainConvUNet may hold at `REFERENCE_GB` with the reference batch size (empirical).
REFERENCE_UNITS = {2: 85_000_000, 3: 560_000_000}
REFERENCE_BATCH = {2: 12, 3: 2}
REFERENCE_GB = 8.0
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05
MASK_NORM_CROP_RATIO = 0.75
PLANS_FORMAT = "unetseg-plans/1"
CT_CHANNEL_NAMES = {"ct"}


@dataclass(frozen=True)
class TrainingSchedule:
    """nnU-Net's default optimisation schedule (nnUNetTrainer)."""

    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_iterations: int = 50
    initial_lr: float = 1e-2
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    oversample_foreground: float = 0.33
    grad_clip_norm: float = 12.0


@dataclass(frozen=True)
class Plan:
    """One training configuration ("2d" or "3d_fullres"): preprocessing, network, patch, batch, schedule and
    augmentations (None: the defaults for the modality the trainer settles on, recorded in the run's plan)."""

    configuration: str
    spatial_dims: int
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, ...]
    batch_size: int
    median_shape: tuple[int, ...]
    normalization: tuple[dict, ...]
    pool_strides: tuple[tuple[int, ...], ...]
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    features: tuple[int, ...]
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    modality: str
    estimated_memory: float
    memory_budget: float
    gpu_memory_gb: float
    batch_dice: bool
    schedule: TrainingSchedule = field(default_factory=TrainingSchedule)
    augmentation: AugmentationSettings | None = None

    @property
    def num_input_channels(self) -> int:
        """Number of image channels (sequences)."""
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Label-map values in class-index order: class ``i`` of the network is value ``label_values[i]``."""
        return tuple(sorted(self.labels))

    @property
    def num_classes(self) -> int:
        """Network output channels, background included."""
        return len(self.labels)

    @property
    def deep_supervision_heads(self) -> int:
        """Extra outputs nnU-Net trains with a non-zero weight (all decoder levels but the lowest)."""
        return max(0, len(self.features) - 3)

    @property
    def estimated_memory_gb(self) -> float:
        """Training memory this plan is predicted to need at its batch size (nnU-Net's proxy, in GB)."""
        units_per_gb = REFERENCE_UNITS[self.spatial_dims] / REFERENCE_GB
        return self.estimated_memory * self.batch_size / REFERENCE_BATCH[self.spatial_dims] / units_per_gb

    @property
    def network_config(self) -> dict:
        """The `networks.build_network` configuration of the DynUNet this plan implies."""
        heads = self.deep_supervision_heads
        return {
            "variant": "nnunet",
            "spatial_dims": self.spatial_dims,
            "in_channels": self.num_input_channels,
            "num_classes": self.num_classes,
            "kernel_size": [list(k) for k in self.conv_kernel_sizes],
            "strides": [list(s) for s in self.pool_strides],
            "filters": list(self.features),
            "deep_supervision": heads > 0,
            "deep_supr_num": max(heads, 1),
            "norm_name": "instance",
        }

    def to_dict(self) -> dict:
        """JSON-ready dictionary, with the derived network configuration for readers of the file."""
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        d["network_config"] = self.network_config
        d["estimated_memory_gb"] = round(self.estimated_memory_gb, 3)
        d["augmentation"] = self.augmentation.to_dict() if self.augmentation is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """Inverse of `to_dict` (derived entries are ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["target_spacing"] = tuple(float(v) for v in d["target_spacing"])
        kw["patch_size"] = tuple(int(v) for v in d["patch_size"])
        kw["median_shape"] = tuple(int(v) for v in d["median_shape"])
        kw["normalization"] = tuple(dict(n) for n in d["normalization"])
        kw["pool_strides"] = tuple(tuple(int(v) for v in s) for s in d["pool_strides"])
        kw["conv_kernel_sizes"] = tuple(tuple(int(v) for v in k) for k in d["conv_kernel_sizes"])
        kw["features"] = tuple(int(v) for v in d["features"])
        kw["channel_names"] = tuple(d["channel_names"])
        kw["labels"] = {int(k): str(v) for k, v in d["labels"].items()}
        kw["schedule"] = TrainingSchedule(**d.get("schedule", {}))
        switches = d.get("augmentation")
        kw["augmentation"] = AugmentationSettings.from_dict(switches) if switches is not None else None
        return cls(**kw)

    def summary(self) -> str:
        """A few human-readable lines describing the plan."""
        norm = ", ".join(n["scheme"] + ("+mask" if n.get("use_mask") else "") for n in self.normalization)
        return "\n".join([
            f"configuration {self.configuration}: {self.spatial_dims}D, "
            f"spacing (x,y,z) {tuple(round(s, 3) for s in self.target_spacing)} mm",
            f"  median shape {self.median_shape}, patch {self.patch_size}, batch {self.batch_size}",
            f"  stages {len(self.features)}, features {list(self.features)}",
            f"  strides {[list(s) for s in self.pool_strides]}",
            f"  kernels {[list(k) for k in self.conv_kernel_sizes]}",
            f"  normalisation [{norm}], batch dice {self.batch_dice}, "
            f"memory ≈ {self.estimated_memory_gb:.2f} of {self.gpu_memory_gb:g} GB",
            "  augmentation: " + (self.augmentation.summary() if self.augmentation is not None
                                  else "the defaults for the model's modality"),
        ])


# ---------------------------------------------------------------------------------------------- rules


def target_spacing(spacings_zyx: np.ndarray, shapes_zyx: np.ndarray) -> np.ndarray:
    """Median spacing, except a much coarser axis with few voxels takes its 10th percentile (numpy order)."""
    target = np.percentile(spacings_zyx, 50, axis=0)
    median_size = np.percentile(shapes_zyx, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[others])
    aniso_voxels = median_size[worst] * ANISO_THRESHOLD < min(median_size[others])
    if aniso_spacing and aniso_voxels:
        low = float(np.percentile(spacings_zyx[:, worst], 10))
        # Never finer than the in-plane axes (nnU-Net adds 1e-5 to keep that axis the coarsest).
        target[worst] = low if low >= max(target[others]) else max(target[others]) + 1e-5
    return target


def resampled_shape(shape: tuple[int, ...], spacing: np.ndarray, new_spacing: np.ndarray) -> np.ndarray:
    """Voxel counts of a shape after resampling from `spacing` to `new_spacing` (same axis order)."""
    return np.round(np.asarray(shape, float) * np.asarray(spacing, float) / np.asarray(new_spacing, float))



def normalization_schemes(fp: Fingerprint) -> tuple[dict, ...]:
    """CT scheme (dataset-wide clip and z-score) for CT channels, per-image z-score for the others.

    The z-score is restricted to the non-zero region when cropping removed over a quarter of the volume
    (skull-stripped MRI), as in nnU-Net.
    """
    use_mask = fp.median_relative_size_after_crop < MASK_NORM_CROP_RATIO
    schemes = []
    for name, stats in zip(fp.channel_names, fp.intensity_stats, strict=True):
        is_ct = name.lower() in CT_CHANNEL_NAMES or (fp.modality.upper() == "CT" and len(fp.channel_names) == 1)
        if is_ct:
            schemes.append({"scheme": "ct", "mean": stats.mean, "std": stats.std,
                            "clip": [stats.p00_5, stats.p99_5]})
        else:
            schemes.append({"scheme": "zscore", "use_mask": bool(use_mask)})
    return tuple(schemes)


def _axis_to_shrink(patch: tuple[int, ...], median_shape: np.ndarray) -> int:
    """The axis largest relative to the median shape (the last one on ties, like nnU-Net's argsort)."""
    ratios = np.asarray(patch, float) / np.asarray(median_shape, float)
    return int(len(ratios) - 1 - np.argmax(ratios[::-1]))


def _fit_to_budget(spacing: np.ndarray, median_shape: np.ndarray, budget: float, num_classes: int) -> Topology:
    """Shrink the patch one divisibility step at a time until twice the reference batch fits the budget."""
    dims = len(spacing)
    topo = pool_and_conv_props(spacing, initial_patch_size(spacing, median_shape))

    def estimate(t: Topology) -> float:
        return estimate_memory(t.patch_size, t.pool_strides, features_per_stage(len(t.pool_strides), dims),
                               num_classes)

    while estimate(topo) / REFERENCE_BATCH[dims] * MIN_BATCH > budget:
        axis = _axis_to_shrink(topo.patch_size, median_shape)
        patch = list(topo.patch_size)
        trial = list(patch)
        trial[axis] -= topo.divisor[axis]
        patch[axis] -= pool_and_conv_props(spacing, trial).divisor[axis]
        if min(patch) < FEATUREMAP_MIN_EDGE:
            raise ValueError(
                f"No patch fits the memory budget ({budget:.3g} units); raise gpu_memory_gb."
            )
        topo = pool_and_conv_props(spacing, patch)
    return topo


def plan_configuration(
    fp: Fingerprint,
    configuration: str,
    spacing_zyx: np.ndarray,
    median_shape: np.ndarray,
    dataset_voxels: float,
    gpu_memory_gb: float,
) -> Plan:
    """Topology, patch and batch size of one configuration at the given spacing and median shape."""
    dims = len(spacing_zyx)
    num_classes = len(fp.labels)
    budget = REFERENCE_UNITS[dims] * gpu_memory_gb / REFERENCE_GB
    topo = _fit_to_budget(spacing_zyx, median_shape, budget, num_classes)
    features = features_per_stage(len(topo.pool_strides), dims)
    estimate = estimate_memory(topo.patch_size, topo.pool_strides, features, num_classes)
    batch = round(budget / estimate * REFERENCE_BATCH[dims])
    cap = round(dataset_voxels * MAX_DATASET_COVERED / math.prod(topo.patch_size))
    batch = max(min(batch, cap), MIN_BATCH)
    full_spacing_zyx = np.median(np.asarray(fp.spacings, float)[:, ::-1], axis=0)
    full_spacing_zyx[3 - dims:] = spacing_zyx
    return Plan(
        configuration=configuration,
        spatial_dims=dims,
        target_spacing=tuple(float(s) for s in full_spacing_zyx[::-1]),
        patch_size=tuple(int(p) for p in topo.patch_size),
        batch_size=int(batch),
        median_shape=tuple(round(float(m)) for m in median_shape),
        normalization=normalization_schemes(fp),
        pool_strides=topo.pool_strides,
        conv_kernel_sizes=topo.conv_kernel_sizes,
        features=features,
        channel_names=tuple(fp.channel_names),
        labels=dict(fp.labels),
        modality=fp.modality,
        estimated_memory=estimate,
        memory_budget=budget,
        gpu_memory_gb=float(gpu_memory_gb),
        batch_dice=dims == 2,
        augmentation=AugmentationSettings.for_modality(fp.modality) if fp.modality in MODALITIES else None,
    )


def plan_configurations(fp: Fingerprint, gpu_memory_gb: float = 8.0) -> dict[str, Plan]:
    """The "2d" plan always, and the "3d_fullres" plan when the data are volumes (nnU-Net's `plan_experiment`).

    nnU-Net's 3d_lowres/cascade configurations are not planned. The 2D plan slices along numpy axis 0 (z),
    which nnU-Net would first transpose to be the coarsest axis.
    """
    if not gpu_memory_gb > 0:
        raise ValueError(f"gpu_memory_gb must be positive; got {gpu_memory_gb}.")
    spacings = np.asarray(fp.spacings, float)[:, ::-1]
    shapes = np.asarray(fp.shapes_after_crop, float)
    target = target_spacing(spacings, shapes)
    new_shapes = np.array([resampled_shape(sh, sp, target) for sh, sp in zip(shapes, spacings, strict=True)])
    median_shape = np.median(new_shapes, axis=0)
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64) * fp.num_cases)
    plans = {}
    if median_shape[0] > 1:
        plans["3d_fullres"] = plan_configuration(fp, "3d_fullres", target, median_shape, dataset_voxels,
                                                 gpu_memory_gb)
    plans["2d"] = plan_configuration(fp, "2d", target[1:], median_shape[1:], dataset_voxels, gpu_memory_gb)
    return plans


def default_configuration(plans: dict[str, Plan]) -> str:
    """The configuration to train when none is chosen: 3D for volumes, 2D otherwise."""
    return "3d_fullres" if "3d_fullres" in plans else "2d"


def plan_experiment(fp: Fingerprint, gpu_memory_gb: float = 8.0, force_2d: bool | None = None) -> Plan:
    """The plan to train: 3D for volumes and 2D for single-slice data, unless `force_2d` says otherwise."""
    plans = plan_configurations(fp, gpu_memory_gb)
    if force_2d is False and "3d_fullres" not in plans:
        raise ValueError("A 3D plan was requested but the dataset's images are single slices (2D).")
    return plans["2d"] if force_2d else plans[default_configuration(plans)]


# ---------------------------------------------------------------------------------------------- files


def save_plans(path: str | Path, plans: dict[str, Plan], fingerprint: Fingerprint | None = None) -> Path:
    """Write the plans (and the fingerprint they came from) as one JSON file; returns the path."""
    path = Path(path)
    doc = {
        "format": PLANS_FORMAT,
        "default_configuration": default_configuration(plans),
        "configurations": {name: plan.to_dict() for name, plan in plans.items()},
    }
    if fingerprint is not None:
        doc["fingerprint"] = fingerprint.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def load_plans(path: str | Path) -> dict[str, Plan]:
    """Read every configuration of a plans file written by `save_plans`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != PLANS_FORMAT:
        raise ValueError(f"{path} is not a UNetSegmentation plans file (format {doc.get('format')!r}); "
                         "create one with `unetseg plan DATASET`.")
    return {name: Plan.from_dict(d) for name, d in doc["configurations"].items()}


def load_plan(path: str | Path, configuration: str | None = None) -> Plan:
    """One configuration of a plans file (its default one when `configuration` is None)."""
    plans = load_plans(path)
    name = configuration or default_configuration(plans)
    if name not in plans:
        raise ValueError(f"Plans file {path} has no configuration {name!r}; it has {sorted(plans)}.")
    return plans[name]
