"""What a training run is made of before its first step: options, processes and devices, the plan, the
preprocessed cases and their split, the network config, labels, mirroring, and fine-tuning weights.

`training.train` calls `prepare` once per process; everything here is a small function of the dataset and
the options, so each rule (which plan, which patch, which validation cases, which mirror axes) is testable
alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from unetseg.devices import resolve_device
from unetseg.io import read_image
from unetseg.io.terminology import default_color, default_terminology
from unetseg.models.package import ModelPackage
from unetseg.models.weights import fit_problems, load_state_dict
from unetseg.networks.factory import check_patch_size, normalize_config, total_stride
from unetseg.training.augment_settings import AugmentationSettings
from unetseg.training.cache import PreprocessedCase, preprocess_dataset
from unetseg.training.dataset_checks import ensure_valid
from unetseg.training.datasets import Dataset, load_dataset
from unetseg.training.fingerprint import compute_fingerprint
from unetseg.training.planning import Plan, load_plan, plan_experiment
from unetseg.vocabulary import AUGMENTATIONS, DEVICES, MODALITIES, VARIANTS, check_choice

OPTIMIZERS = ("sgd", "adamw")
_CLASSIC_DEFAULT_WIDTH = {"cuda": 0.5, "other": 0.25}  # 32 or 16 features at the first level


@dataclass
class TrainOptions:
    """Every setting of a run besides the data (plain values; stored in checkpoints and the manifest)."""

    variant: str = "nnunet"
    configuration: str | None = None  # "2d" or "3d_fullres"; None: 3D for volumes, 2D for single slices
    epochs: int | None = None  # None with no time budget: the plan's 1000
    time_budget_min: float | None = None
    iterations_per_epoch: int | None = None  # None: the plan's 250
    val_every: int = 1
    val_fraction: float = 0.2
    val_cases: list[str] | None = None
    batch_size: int | None = None
    patch_size: list[int] | None = None
    loss: str = "dice_ce"
    optimizer: str = "sgd"
    learning_rate: float | None = None  # None: 1e-2 (SGD) or 1e-3 (AdamW)
    weight_decay: float | None = None  # None: 3e-5 (SGD) or 1e-2 (AdamW)
    deep_supervision: bool | None = None  # None: on where the variant has it (nnunet, unet)
    width: float | None = None  # feature multiplier; None: the plan's (nnunet) or 0.5 GPU / 0.25 CPU
    augment: dict[str, bool] | None = None  # switches over the plan's augmentations, by name (vocabulary)
    mirror_axes: list[int] | None = None  # None: every axis but the left-right one when labels are lateral
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    gpu_memory_gb: float = 8.0
    name: str | None = None
    description: str | None = None
    modality: str | None = None
    half: bool = False

    def __post_init__(self) -> None:
        check_choice("variant", self.variant, VARIANTS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("device", self.device, DEVICES)
        if self.configuration is not None:
            check_choice("configuration", self.configuration, ("2d", "3d_fullres"))
        if self.modality is not None:
            check_choice("modality", self.modality, MODALITIES)
        if self.augment is not None:  # a mapping, or the CLI's (name, on) pairs
            self.augment = {check_choice("augmentation", name, AUGMENTATIONS): bool(on)
                            for name, on in dict(self.augment).items()}
        for key in ("epochs", "iterations_per_epoch", "batch_size"):
            value = getattr(self, key)
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"{key} must be a positive integer; got {value}.")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise ValueError(f"time_budget_min must be positive; got {self.time_budget_min}.")
        if self.val_every < 1:
            raise ValueError(f"val_every must be at least 1; got {self.val_every}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}.")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name):
            raise ValueError(f"Model name {self.name!r} may use letters, digits, '.', '_' and '-' only.")


# ------------------------------------------------------------------------------------------ processes, devices


@dataclass
class DistContext:
    """This process's place in a (possibly single-process) run and its compute device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def dist_context(device: str) -> DistContext:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    return DistContext(dist.get_rank(), dist.get_world_size(), target, owns)


# ------------------------------------------------------------------------------------------ setup


@dataclass
class Setup:
    """Everything derived from the data before the first step."""

    dataset: Dataset
    plan: Plan
    patch_size: tuple[int, ...]
    batch_size: int
    network: dict
    train_cases: list[PreprocessedCase]
    val_cases: list[PreprocessedCase]
    labels: list[dict]
    modality: str
    mirror_axes: tuple[int, ...]
    dataset_info: dict = field(default_factory=dict)


def as_dataset(dataset: str | os.PathLike | Dataset) -> Dataset:
    """A validated `Dataset` (read from a path first); raises `DatasetError` listing every problem."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    ensure_valid(ds)
    return ds


def dataset_info(dataset: Dataset) -> dict:
    """Optional model-card keys of the dataset's ``dataset.json``: name, description, licence, training_data,
    reference and label_details (``[{"value", "name", "color", "terminology"}]``)."""
    path = dataset.root / "dataset.json" if dataset.root else None
    if path is None or not path.is_file():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    keys = ("name", "description", "licence", "license", "training_data", "reference", "label_details")
    return {k: doc[k] for k in keys if isinstance(doc, dict) and k in doc}


def resolve_plan(dataset: Dataset, plans: str | os.PathLike | Plan | None, opts: TrainOptions,
                 init: ModelPackage | None, log: Callable[[str], None]) -> Plan:
    """The plan to train with: given, read from a plans file (or ``DATASET/plans.json``), or planned now.

    Fine-tuning (`init`) keeps the model's own spacing, normalisation and patch size, so the pretrained
    filters see the inputs they were trained on.
    """
    if init is not None:
        plan = plan_experiment(compute_fingerprint(dataset), opts.gpu_memory_gb, force_2d=init.spatial_dims == 2)
        return _plan_from_package(plan, init)
    if isinstance(plans, Plan):
        plan = plans
    elif plans is not None:
        plan = load_plan(plans, opts.configuration)
    elif dataset.root is not None and (dataset.root / "plans.json").is_file():
        log(f"using the plans in {dataset.root / 'plans.json'}")
        plan = load_plan(dataset.root / "plans.json", opts.configuration)
    else:
        force_2d = None if opts.configuration is None else opts.configuration == "2d"
        plan = plan_experiment(compute_fingerprint(dataset), opts.gpu_memory_gb, force_2d=force_2d)
    if dict(plan.labels) != dict(dataset.labels) or plan.num_input_channels != len(dataset.channel_names):
        raise ValueError(
            f"The plans were made for labels {plan.labels} and {plan.num_input_channels} channel(s), but the dataset "
            f"has labels {dataset.labels} and {len(dataset.channel_names)} channel(s); re-run `unetseg plan`."
        )
    return plan


def _plan_from_package(plan: Plan, pkg: ModelPackage) -> Plan:
    if len(pkg.input_names) != plan.num_input_channels:
        raise ValueError(
            f"Model {pkg.name} reads {len(pkg.input_names)} input(s) ({', '.join(pkg.input_names)}) but the dataset "
            f"has {plan.num_input_channels} channel(s); fine-tune on data with the same inputs."
        )
    pre = pkg.preprocessing
    return dataclasses.replace(
        plan,
        target_spacing=tuple(pre["target_spacing"] or plan.target_spacing),
        normalization=tuple(pre["normalization"]),
        patch_size=tuple(pkg.inference["patch_size"]),
    )


def network_config(plan: Plan, opts: TrainOptions, device: torch.device, init: ModelPackage | None) -> dict:
    """The `build_network` config: the model's own (fine-tuning), the plan's DynUNet, or another variant at
    the plan's spacing and patch with a width suited to the device."""
    if init is not None:
        cfg = init.network_config
        cfg["num_classes"] = plan.num_classes
        return normalize_config(cfg)
    if opts.variant == "nnunet":
        cfg = plan.network_config
        if opts.width is not None:
            cfg["filters"] = [max(2, round(f * opts.width)) for f in cfg["filters"]]
        if opts.deep_supervision is False:
            cfg["deep_supervision"] = False
        return normalize_config(cfg)
    width = opts.width or _CLASSIC_DEFAULT_WIDTH["cuda" if device.type == "cuda" else "other"]
    supervised = opts.deep_supervision if opts.deep_supervision is not None else opts.variant == "unet"
    return normalize_config({
        "variant": opts.variant, "spatial_dims": plan.spatial_dims, "in_channels": plan.num_input_channels,
        "num_classes": plan.num_classes, "width": width, "norm": "instance", "deep_supervision": supervised,
    })


def training_patch(plan: Plan, network: dict, opts: TrainOptions) -> tuple[int, ...]:
    """The plan's (or the given) patch, rounded up to a multiple of the network's total stride."""
    patch = opts.patch_size or plan.patch_size
    if len(patch) != plan.spatial_dims:
        raise ValueError(f"patch_size {list(patch)} needs {plan.spatial_dims} values for a {plan.spatial_dims}D plan.")
    stride = total_stride(network)
    rounded = tuple(int(math.ceil(p / s) * s) for p, s in zip(patch, stride, strict=True))
    check_patch_size(network, rounded)  # a clear error for a patch that leaves a one-voxel bottleneck
    return rounded


def split_cases(cases: list[PreprocessedCase], opts: TrainOptions) -> tuple[list, list]:
    """Training and validation cases: the named ones, else a seeded ``val_fraction`` (≥ 1 case when there
    are ≥ 2). A single case (or ``val_fraction`` 0) validates on the training data, and the card says so."""
    if opts.val_cases:
        unknown = sorted(set(opts.val_cases) - {c.name for c in cases})
        if unknown:
            raise ValueError(f"Validation case(s) {unknown} are not in the dataset; cases: {[c.name for c in cases]}.")
        val = [c for c in cases if c.name in opts.val_cases]
        train = [c for c in cases if c.name not in opts.val_cases]
    elif len(cases) < 2 or opts.val_fraction == 0:
        return cases, []
    else:
        order = np.random.default_rng(opts.seed).permutation(len(cases))
        count = max(1, round(len(cases) * opts.val_fraction))
        val = [cases[i] for i in sorted(order[:count])]
        train = [cases[i] for i in sorted(order[count:])]
    if not train:
        raise ValueError("Every case is a validation case; leave at least one case for training.")
    return train, val


def model_labels(dataset: Dataset, plan: Plan, info: dict) -> list[dict]:
    """Manifest labels: class index as value, the dataset's name, and colour/terminology from the dataset's
    ``label_details`` or the defaults for known names."""
    details = {d.get("name"): d for d in info.get("label_details", [])}
    labels = []
    for index, value in enumerate(plan.label_values[1:], start=1):
        name = dataset.labels[value]
        given = details.get(name, {})
        entry = {"value": index, "name": name, "color": list(given.get("color") or default_color(index))}
        terminology = given.get("terminology") or default_terminology(name)
        if terminology:
            entry["terminology"] = terminology
        labels.append(entry)
    return labels


def model_modality(dataset: Dataset, cases: list[PreprocessedCase], opts: TrainOptions,
                   log: Callable[[str], None]) -> str:
    """CT, MR or XR for the manifest: given, the dataset's, or (unknown) XR for single slices else MR."""
    if opts.modality:
        return opts.modality
    if dataset.modality in MODALITIES:
        return dataset.modality
    guess = "XR" if all(c.image.shape[1] == 1 for c in cases) else "MR"
    log(f"the dataset does not name its modality; the model is marked {guess} (pass modality= to change it)")
    return guess


def mirror_axes(dataset: Dataset, plan: Plan, opts: TrainOptions, log: Callable[[str], None]) -> tuple[int, ...]:
    """Patch axes to mirror in augmentation and test-time augmentation: as given, else all of them except
    the left-right axis (from the first image's direction) when a label name says left or right."""
    if opts.mirror_axes is not None:
        bad = [a for a in opts.mirror_axes if not 0 <= a < plan.spatial_dims]
        if bad:
            raise ValueError(f"mirror_axes {bad} must lie in 0..{plan.spatial_dims - 1} ({plan.spatial_dims}D patch).")
        return tuple(sorted(set(opts.mirror_axes)))
    axes = tuple(range(plan.spatial_dims))
    if not any(re.search(r"\b(left|right)\b", name, re.IGNORECASE) for name in dataset.labels.values()):
        return axes
    image = read_image(dataset.cases[0].image_paths[0])
    lateral = 2 - int(np.argmax(np.abs(image.direction_matrix[0])))  # numpy axis along LPS x
    lateral -= 3 - plan.spatial_dims
    log(f"labels name left and right: no mirroring along patch axis {lateral} (left-right)")
    return tuple(a for a in axes if a != lateral)


def augmentation(plan: Plan, modality: str, opts: TrainOptions, log: Callable[[str], None]) -> AugmentationSettings:
    """The run's augmentations: the plan's (else the defaults for the model's `modality`) with the options'
    switches applied; the run's plan records them, so a resumed or repeated run augments alike."""
    base = plan.augmentation if plan.augmentation is not None else AugmentationSettings.for_modality(modality)
    settings = base.switched(opts.augment or {})
    log(f"augmentation: {settings.summary()}")
    return settings


def prepare(dataset: Dataset, plans: Any, opts: TrainOptions, ctx: DistContext, init: ModelPackage | None,
            cache_dir: Path, log: Callable[[str], None]) -> Setup:
    """Plan, preprocess (rank 0 first, the others then read its cache), split, and choose the network."""
    plan = resolve_plan(dataset, plans, opts, init, log)
    if ctx.is_main:
        log(plan.summary())
        cases = preprocess_dataset(dataset, plan, cache_dir, lambda i, n: log(f"preprocessed case {i}/{n}"))
    ctx.barrier()
    if not ctx.is_main:
        cases = preprocess_dataset(dataset, plan, cache_dir)
    train_cases, val_cases = split_cases(cases, opts)
    network = network_config(plan, opts, ctx.device, init)
    info = dataset_info(dataset)
    modality = model_modality(dataset, cases, opts, log)
    plan = dataclasses.replace(plan, augmentation=augmentation(plan, modality, opts, log))
    return Setup(
        dataset=dataset, plan=plan, patch_size=training_patch(plan, network, opts),
        batch_size=opts.batch_size or plan.batch_size, network=network, train_cases=train_cases,
        val_cases=val_cases, labels=model_labels(dataset, plan, info),
        modality=modality, mirror_axes=mirror_axes(dataset, plan, opts, log), dataset_info=info,
    )


def load_init_weights(model: nn.Module, pkg: ModelPackage, log: Callable[[str], None]) -> None:
    """Start from a package's weights: all of them, or all but the mismatching output head (new labels)."""
    state = load_state_dict(pkg)
    own = model.state_dict()
    fresh = [k for k in own if k in state and state[k].shape != own[k].shape]
    kept = {k: v for k, v in state.items() if k not in fresh}
    problems = fit_problems({k: v for k, v in own.items() if k not in fresh}, kept)
    if problems:
        raise ValueError(f"The weights of {pkg.name} do not fit its own network config: " + "; ".join(problems))
    model.load_state_dict(kept, strict=False)
    if fresh:
        log(f"fine-tuning {pkg.name} with new labels: fresh output layer(s) {', '.join(fresh)}")
    else:
        log(f"fine-tuning from {pkg.name} (all weights)")
