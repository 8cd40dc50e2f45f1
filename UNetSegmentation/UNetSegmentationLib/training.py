"""The trainer: `train(dataset, out_dir, …)` turns a dataset into a model package, on one process or many.

nnU-Net v2's recipe (``nnUNetTrainer``), rebuilt from MONAI parts: patches with one-third foreground
oversampling (`sampling`), MONAI augmentation (`augmentation`), Dice + cross-entropy with deep supervision
(`losses`), SGD with Nesterov momentum 0.99 and poly learning-rate decay (AdamW selectable), AMP with a
gradient scaler on CUDA, gradient-norm clipping at 12, and a held-out validation split scored with a Gaussian
sliding window (MONAI's `sliding_window_inference`) every ``val_every`` epochs.

What lands in ``out_dir``: the model package (``model.json``, ``weights.safetensors`` — the final weights, as
nnU-Net ships its final checkpoint), ``plans.json``, ``training_log.jsonl`` (one line per epoch), and
``checkpoints/`` (``checkpoint_last.pt`` every epoch, ``checkpoint_best.pt`` at the best validation Dice),
each written atomically so a crash or a cancel leaves the previous one intact; ``resume=True`` continues
from ``checkpoint_last.pt``. Patches are seeded by their position in the run, so a resumed run trains on
the very patches an uninterrupted one would, and a fixed seed reproduces a CPU run exactly.

Many GPUs: run under ``torchrun --nproc_per_node N -m UNetSegmentationLib train …``; the ``RANK`` and
``WORLD_SIZE`` variables switch on DistributedDataParallel (NCCL on CUDA, gloo on CPU). Each rank computes
its share of every global batch; rank 0 validates, logs and writes checkpoints and the package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import distributed as dist
from torch import nn

from . import __version__
from .checkpoints import BEST, LAST, load_checkpoint, plain, restore_rng_state, rng_state, save_checkpoint
from .datasets import Dataset, PreprocessedCase, ensure_valid, load_dataset, preprocess_dataset
from .io import read_image
from .losses import build_loss
from .metrics import compute_metrics, dice
from .networks import VARIANTS, build_network, normalize_config, total_stride
from .package import ModelPackage, fit_problems, load_package, load_state_dict, save_package
from .planning import Plan, compute_fingerprint, load_plan, plan_experiment, save_plans
from .sampling import SamplingConfig, patch_loader
from .terminology import default_color, default_terminology

ProgressCallback = Callable[..., None]
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODALITIES = ("CT", "MR", "XR")
LOG_FILE = "training_log.jsonl"
CHECKPOINT_DIR = "checkpoints"
_PROGRESS_INTERVAL_S = 2.0
_CLASSIC_DEFAULT_WIDTH = {"cuda": 0.5, "other": 0.25}  # 32 or 16 features at the first level


class TrainingCancelled(Exception):  # noqa: N818 (mirrors inference.SegmentationCancelled)
    """Raised when the `cancel` event stops a run; the last epoch's checkpoint stays as it was."""


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
    elastic: bool = False
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
        _check_choice("variant", self.variant, VARIANTS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("device", self.device, DEVICES)
        if self.configuration is not None:
            _check_choice("configuration", self.configuration, ("2d", "3d_fullres"))
        if self.modality is not None:
            _check_choice("modality", self.modality, MODALITIES)
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


def _check_choice(key: str, value: Any, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {key} {value!r}; choose one of {', '.join(map(str, allowed))}.")


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


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; asking for an absent device is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device auto or cpu.")
    if device == "mps" and not _mps_available():
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use --device auto or cpu.")
    return torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device(device)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


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
    return tuple(int(math.ceil(p / s) * s) for p, s in zip(patch, stride, strict=True))


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
    return Setup(
        dataset=dataset, plan=plan, patch_size=training_patch(plan, network, opts),
        batch_size=opts.batch_size or plan.batch_size, network=network, train_cases=train_cases,
        val_cases=val_cases, labels=model_labels(dataset, plan, info),
        modality=model_modality(dataset, cases, opts, log), mirror_axes=mirror_axes(dataset, plan, opts, log),
        dataset_info=info,
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


# ------------------------------------------------------------------------------------------ schedule, steps


def poly_lr(initial: float, progress: float, exponent: float = 0.9) -> float:
    """nnU-Net's poly decay: initial × (1 − progress)^0.9, progress in [0, 1]."""
    return initial * max(0.0, 1.0 - min(progress, 1.0)) ** exponent


def build_optimizer(model: nn.Module, opts: TrainOptions, plan: Plan) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (nnU-Net's settings from the plan's schedule) or AdamW."""
    schedule = plan.schedule
    if opts.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=opts.learning_rate if opts.learning_rate is not None else schedule.initial_lr,
            momentum=schedule.momentum, nesterov=schedule.nesterov,
            weight_decay=opts.weight_decay if opts.weight_decay is not None else schedule.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=opts.learning_rate if opts.learning_rate is not None else 1e-3,
        weight_decay=opts.weight_decay if opts.weight_decay is not None else 1e-2,
    )


@dataclass
class RunState:
    """Counters that a checkpoint carries across a resume."""

    epoch: int = 0
    iteration: int = 0
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    best_dice: float = -1.0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """The optimisation loop of one process (see the module docstring)."""

    def __init__(self, setup: Setup, opts: TrainOptions, ctx: DistContext, out_dir: Path,
                 progress: ProgressCallback | None, cancel: threading.Event | None) -> None:
        self.setup, self.opts, self.ctx, self.out_dir = setup, opts, ctx, out_dir
        self.progress, self.cancel = progress, cancel
        plan = setup.plan
        self.epochs = opts.epochs or (None if opts.time_budget_min else plan.schedule.epochs)
        self.iterations = opts.iterations_per_epoch or plan.schedule.iterations_per_epoch
        self.budget_s = opts.time_budget_min * 60.0 if opts.time_budget_min else None
        torch.manual_seed(opts.seed)
        self.model = build_network(setup.network).to(ctx.device)
        self.loss = build_loss({"name": opts.loss, "batch_dice": plan.batch_dice})
        self.optimizer = build_optimizer(self.model, opts, plan)
        self.initial_lr = self.optimizer.param_groups[0]["lr"]
        self.amp = opts.amp and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = RunState()
        self._session_start = time.perf_counter()
        ids = [ctx.device] if ctx.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids) if ctx.distributed else self.model

    # -- checkpoints --------------------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """The run's full state (plain values and tensors only)."""
        s = self.state
        return {
            "epoch": s.epoch, "iteration": s.iteration, "train_seconds": s.train_seconds,
            "cpu_seconds": s.cpu_seconds, "best_dice": s.best_dice, "history": plain(s.history),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": {"initial_lr": self.initial_lr, "progress": self.schedule_progress()},
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "network": plain(self.setup.network), "plan": plain(self.setup.plan.to_dict()),
            "options": plain(dataclasses.asdict(self.opts)), "patch_size": list(self.setup.patch_size),
        }

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint of the same setup (weights, optimizer, scaler, RNG, counters)."""
        if ckpt["network"] != plain(self.setup.network):
            raise ValueError("The checkpoint was trained with another network; resume with the same variant and "
                             "plans, or start a new run in another --out folder.")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.initial_lr = float(ckpt["scheduler"]["initial_lr"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        self.state = RunState(int(ckpt["epoch"]), int(ckpt["iteration"]), float(ckpt["train_seconds"]),
                              float(ckpt["cpu_seconds"]), float(ckpt["best_dice"]), list(ckpt["history"]))

    # -- schedule -----------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.state.train_seconds + (time.perf_counter() - self._session_start)

    def schedule_progress(self) -> float:
        """Fraction of the run done: by iterations (epochs) or by time (budget), whichever is further."""
        done = 0.0
        if self.epochs:
            done = self.state.iteration / (self.epochs * self.iterations)
        if self.budget_s:
            done = max(done, self.elapsed() / self.budget_s)
        return min(done, 1.0)

    def time_up(self) -> bool:
        return self.budget_s is not None and self.elapsed() >= self.budget_s

    def finished(self) -> bool:
        """Epochs done or time up (rank 0's clock decides for every rank)."""
        return bool(self._agree(int((self.epochs is not None and self.state.epoch >= self.epochs) or self.time_up())))

    def _stop_flag(self) -> int:
        """0 go on, 1 time is up, 2 cancelled; rank 0 decides for every rank."""
        return self._agree(2 if self.cancel is not None and self.cancel.is_set() else int(self.time_up()))

    def _agree(self, value: int) -> int:
        """Rank 0's value on every rank."""
        if not self.ctx.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        dist.broadcast(t, 0)
        return int(t.item())

    def _comm_device(self) -> torch.device:
        return self.ctx.device if self.ctx.device.type == "cuda" else torch.device("cpu")

    # -- the loop ------------------------------------------------------------------------------------------

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on this rank's share of a batch; returns the loss."""
        images, labels = images.to(self.ctx.device, non_blocking=True), labels.to(self.ctx.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(self.initial_lr, self.schedule_progress(), self.setup.plan.schedule.poly_exponent)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.ctx.device.type, dtype=torch.float16, enabled=self.amp):
            output = self.ddp(images)
            loss = self.loss(output, labels)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.setup.plan.schedule.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def run(self) -> None:
        """Train until the epochs or the time budget are used up; validate and checkpoint every epoch."""
        sampling = SamplingConfig(self.setup.patch_size, self.setup.batch_size,
                                  self.setup.plan.schedule.oversample_foreground, self.opts.elastic,
                                  self.setup.mirror_axes, self.opts.seed)
        batches = patch_loader(self.setup.train_cases, sampling, self.ctx.rank, self.ctx.world_size,
                               self.state.iteration, self.opts.num_workers)
        self._session_start = time.perf_counter()
        cpu_start = time.process_time()
        last_report = -math.inf
        self.model.train()
        while not self.finished():
            losses = []
            flag = 0
            for _ in range(self.iterations):
                flag = self._stop_flag()
                if flag:
                    break
                losses.append(self.step(*next(batches)))
                self.state.iteration += 1
                if time.perf_counter() - last_report >= _PROGRESS_INTERVAL_S:
                    last_report = time.perf_counter()
                    self.report("train", loss=losses[-1], epoch=self.state.epoch + 1)
            if flag == 2:
                raise TrainingCancelled("Training cancelled; the last checkpoint is kept (resume with --resume).")
            if not losses:
                break
            self.end_epoch(float(np.mean(losses)), cpu_start)
            cpu_start = time.process_time()

    def end_epoch(self, train_loss: float, cpu_start: float) -> None:
        """Count the epoch, validate when due, checkpoint and log (rank 0)."""
        s = self.state
        s.epoch += 1
        s.cpu_seconds += self._all_ranks_sum(time.process_time() - cpu_start)
        s.train_seconds = self.elapsed()
        self._session_start = time.perf_counter()
        row = {"epoch": s.epoch, "iteration": s.iteration, "train_loss": train_loss,
               "lr": self.optimizer.param_groups[0]["lr"]}
        if self.setup.val_cases and (s.epoch % self.opts.val_every == 0 or self.finished()):
            row.update(self.validate_now())
        row["elapsed_s"] = self.elapsed()
        s.history.append(row)
        if self.ctx.is_main:
            self.save_epoch(row)
        self.ctx.barrier()
        self.report("epoch", **row)

    def validate_now(self) -> dict:
        """Mean validation Dice overall and per label (rank 0 computes, the others wait)."""
        if not self.ctx.is_main:
            return {}
        self.model.eval()
        scores = validation_dice(self.model, self.setup, self.ctx.device, self.amp)
        self.model.train()
        named = {f"val_dice_{label['name']}": scores[label["value"]] for label in self.setup.labels}
        return {"val_dice": float(np.nanmean(list(scores.values()))), **named}

    def save_epoch(self, row: dict) -> None:
        """Checkpoint last (and best), append the epoch to the log."""
        s = self.state
        ckpt = self.checkpoint()
        folder = self.out_dir / CHECKPOINT_DIR
        save_checkpoint(folder / LAST, ckpt)
        if "val_dice" in row and row["val_dice"] > s.best_dice:
            s.best_dice = row["val_dice"]
            save_checkpoint(folder / BEST, {**ckpt, "best_dice": s.best_dice})
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(plain(row)) + "\n")

    def _all_ranks_sum(self, value: float) -> float:
        if not self.ctx.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t.item())

    def report(self, stage: str, **fields: Any) -> None:
        """A progress event (rank 0): fraction, a readable message and the numbers (epoch, losses, ETA)."""
        if self.progress is None or not self.ctx.is_main:
            return
        fraction = self.schedule_progress()
        if self.budget_s and not self.epochs:
            eta = self.budget_s - self.elapsed()
        else:
            eta = self.elapsed() * (1 - fraction) / fraction if fraction > 0 else None
        fields = {"iteration": self.state.iteration, **fields, "eta_s": None if eta is None else max(0.0, eta)}
        numbers = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in plain(fields).items()}
        self.progress(fraction, stage, _message(stage, fields), **numbers)


def _message(stage: str, fields: dict) -> str:
    parts = [f"epoch {fields.get('epoch')}", f"iteration {fields['iteration']}"]
    loss = fields.get("train_loss", fields.get("loss"))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if "val_dice" in fields:
        parts.append(f"validation Dice {fields['val_dice']:.4f}")
    if fields.get("eta_s") is not None:
        parts.append(f"ETA {fields['eta_s'] / 60:.1f} min")
    return f"{stage}: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------ validation


def predict_case(model: nn.Module, image: np.ndarray, patch: Sequence[int], device: torch.device,
                 amp: bool = False) -> np.ndarray:
    """Class indices (z, y, x) of a preprocessed case (C, z, y, x): Gaussian sliding window, overlap 0.5
    (2D models: the slices are the batch)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))
    x = x.permute(1, 0, 2, 3) if len(patch) == 2 else x[None]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        logits = sliding_window_inference(
            x, tuple(patch), sw_batch_size=4 if len(patch) == 2 else 1, predictor=model, overlap=0.5,
            mode="gaussian", sigma_scale=0.125, sw_device=device, device=torch.device("cpu"),
        )
    labels = logits.argmax(1).to(torch.uint8)
    return (labels if len(patch) == 2 else labels[0]).numpy()


def validation_dice(model: nn.Module, setup: Setup, device: torch.device, amp: bool = False) -> dict[int, float]:
    """Mean Dice per class index over the validation cases (on the preprocessed grid)."""
    per_class: dict[int, list[float]] = {label["value"]: [] for label in setup.labels}
    for case in setup.val_cases:
        pred = predict_case(model, case.image, setup.patch_size, device, amp)
        for value, scores in per_class.items():
            scores.append(dice(pred == value, np.asarray(case.label) == value))
    return {value: float(np.mean(scores)) for value, scores in per_class.items()}


def final_metrics(model: nn.Module, setup: Setup, device: torch.device, amp: bool) -> dict:
    """Per-label Dice, IoU and HD95 (mm) on the validation cases (or the training cases, when there are
    none), on the preprocessed grid, averaged over cases; plus what they were measured on."""
    cases = setup.val_cases or setup.train_cases
    values = [label["value"] for label in setup.labels]
    rows = []
    model.eval()
    for case in cases:
        pred = predict_case(model, case.image, setup.patch_size, device, amp)
        rows.append(compute_metrics(pred, np.asarray(case.label), values, tuple(case.spacing)[::-1]))
    metrics: dict[str, Any] = {
        "evaluated_on": "validation split" if setup.val_cases else
        "training-set Dice only; not a measure of generalisation",
        "evaluated_cases": [c.name for c in cases],
    }
    for label in setup.labels:
        for key in ("dice", "iou", "hd95"):
            finite = [r[label["value"]][key] for r in rows if math.isfinite(r[label["value"]][key])]
            metrics[f"{key}_{label['name']}"] = round(float(np.mean(finite)), 4) if finite else None
    dices = [metrics[f"dice_{label['name']}"] for label in setup.labels]
    metrics["dice_mean"] = round(float(np.mean(dices)), 4)
    return metrics


# ------------------------------------------------------------------------------------------ the package


def manifest(setup: Setup, opts: TrainOptions, state: RunState, metrics: dict, out_dir: Path,
             command: str | None, init: ModelPackage | None) -> dict:
    """The model.json of the trained network (see `package`)."""
    plan, info = setup.plan, setup.dataset_info
    slice_wise = plan.spatial_dims == 2 and max(c.image.shape[1] for c in setup.train_cases) > 1
    name = opts.name or _safe_name(info.get("name") or out_dir.name)
    return {
        "name": name,
        "version": "1.0",
        "description": opts.description or info.get("description") or
        f"{opts.variant} trained by unetseg {__version__} on {len(setup.dataset.cases)} case(s)",
        "modality": setup.modality,
        "variant": setup.network["variant"],
        "spatial_dims": plan.spatial_dims,
        "network": setup.network,
        "inputs": [{"name": n} for n in setup.dataset.channel_names],
        "labels": setup.labels,
        "preprocessing": {
            "orientation": None,
            "target_spacing": list(plan.target_spacing),
            "normalization": [dict(n) for n in plan.normalization],
            "crop": "nonzero",
            "slice_wise": slice_wise,
        },
        "inference": {"patch_size": list(setup.patch_size), "overlap": 0.5,
                      "mirror_axes": list(setup.mirror_axes), "tta": False, "postprocessing": {}},
        "provenance": {
            "training_data": str(info.get("training_data") or setup.dataset.root or "in-memory dataset"),
            "licence": str(info.get("licence") or info.get("license") or "unknown"),
            "cases": len(setup.dataset.cases),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": command or "UNetSegmentationLib.training.train",
            "cpu_time_s": round(state.cpu_seconds, 1),
            "wall_time_s": round(state.train_seconds, 1),
            "metrics": metrics,
            "epochs": state.epoch,
            "iterations": state.iteration,
            "training_cases": [c.name for c in setup.train_cases],
            "validation_cases": [c.name for c in setup.val_cases],
            "source_label_values": {lab["name"]: v for lab, v in zip(setup.labels, plan.label_values[1:], strict=True)},
            "fine_tuned_from": init.name if init is not None else None,
            "plans": "plans.json",
            "options": plain(dataclasses.asdict(opts)),
            "trainer": f"unetseg {__version__}",
        },
    }


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")
    return (name or "model")[:100]


def write_package(trainer: Trainer, out_dir: Path, command: str | None, init: ModelPackage | None) -> ModelPackage:
    """Final metrics, plans.json and the model package (weights from the end of training)."""
    setup = trainer.setup
    metrics = final_metrics(trainer.model, setup, trainer.ctx.device, trainer.amp)
    save_plans(out_dir / "plans.json", {setup.plan.configuration: setup.plan})
    doc = manifest(setup, trainer.opts, trainer.state, metrics, out_dir, command, init)
    return save_package(out_dir, doc, trainer.model.state_dict(), half=trainer.opts.half)


# ------------------------------------------------------------------------------------------ entry point


def train(
    dataset: str | os.PathLike | Dataset,
    out_dir: str | os.PathLike,
    variant: str = "nnunet",
    plans: str | os.PathLike | Plan | None = None,
    epochs: int | None = None,
    time_budget_min: float | None = None,
    device: str = "auto",
    loss: str = "dice_ce",
    optimizer: str = "sgd",
    seed: int = 0,
    init: str | os.PathLike | ModelPackage | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    cache_dir: str | os.PathLike | None = None,
    command: str | None = None,
    **options: Any,
) -> ModelPackage:
    """Train a model on a dataset (folder, list file or `Dataset`) and write its package to ``out_dir``.

    Further ``options`` are the fields of `TrainOptions` (val_every, val_fraction, val_cases,
    iterations_per_epoch, batch_size, patch_size, learning_rate, width, deep_supervision, elastic, amp,
    num_workers, gpu_memory_gb, configuration, name, description, modality, half …). ``progress(fraction,
    stage, message, **numbers)`` receives epoch, iteration, losses, validation Dice and ETA (a
    `progress.ProgressEmitter` prints them as JSON lines); setting ``cancel`` stops between iterations with
    `TrainingCancelled`. Invalid datasets raise `datasets.DatasetError` with the full report. Returns the
    package on every rank.
    """
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Unknown training option(s) {unknown}; allowed: {sorted(known)}.")
    opts = TrainOptions(variant=variant, epochs=epochs, time_budget_min=time_budget_min, device=device,
                        loss=loss, optimizer=optimizer, seed=seed, **options)
    out = Path(out_dir).expanduser().resolve()
    ctx = dist_context(opts.device)
    try:
        log = _logger(progress, ctx)
        ds = as_dataset(dataset)
        init_pkg = init if isinstance(init, ModelPackage) else load_package(init) if init else None
        ckpt = load_checkpoint(out / CHECKPOINT_DIR / LAST) if resume else None
        if ckpt is None:
            _check_fresh_output(out)
        out.mkdir(parents=True, exist_ok=True)
        setup = prepare(ds, plans, opts, ctx, init_pkg, Path(cache_dir) if cache_dir else default_cache_dir(), log)
        trainer = Trainer(setup, opts, ctx, out, progress, cancel)
        if ckpt is not None:
            trainer.restore(ckpt)
            log(f"resuming after epoch {trainer.state.epoch} (iteration {trainer.state.iteration})")
        elif init_pkg is not None:
            load_init_weights(trainer.model, init_pkg, log)
        trainer.run()
        if ctx.is_main:
            write_package(trainer, out, command, init_pkg)
            if progress is not None:
                progress(1.0, "done", f"model written to {out}")
        ctx.barrier()
        return load_package(out)
    finally:
        ctx.close()


def _check_fresh_output(out: Path) -> None:
    """Refuse to start a new run over an earlier one's checkpoints (resume it, or choose another folder)."""
    if (out / CHECKPOINT_DIR / LAST).exists():
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or choose another --out.")


def default_cache_dir() -> Path:
    """Where preprocessed cases are cached: ``$UNETSEG_CACHE_DIR`` or ``~/.cache/unetseg/preprocessed``."""
    if os.environ.get("UNETSEG_CACHE_DIR"):
        return Path(os.environ["UNETSEG_CACHE_DIR"]) / "preprocessed"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unetseg" / "preprocessed"


def _logger(progress: ProgressCallback | None, ctx: DistContext) -> Callable[[str], None]:
    """Log lines (rank 0) through the progress callback's ``log`` when it has one, else to stderr."""
    def log(message: str) -> None:
        if not ctx.is_main:
            return
        if progress is not None and hasattr(progress, "log"):
            progress.log(message)
        else:
            print(message, file=sys.stderr, flush=True)
    return log


def print_progress(fraction: float | None, stage: str, message: str | None = None, **fields: Any) -> None:
    """A plain-text progress callback for the terminal (``--progress text``)."""
    if message:
        print(f"[{100 * (fraction or 0):5.1f}%] {message}", flush=True)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT while the block runs, so a killed run stops between iterations."""
    event = threading.Event()
    handled = [s for s in (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread()]
    previous = {s: signal.signal(s, lambda *_: event.set()) for s in handled}
    try:
        yield event
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_train_command(args: dict, argv: Sequence[str]) -> int:
    """`unetseg train`: run `train` with the parsed arguments; report errors (exit 2) and a cancel (exit 130)."""
    from .datasets import DatasetError
    from .package import PackageError
    from .progress import ProgressEmitter

    emitter = ProgressEmitter() if args.get("progress") == "json" else None
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    options = {k: v for k, v in args.items() if k in known and v is not None}
    with cancel_on_signals() as cancel:
        try:
            pkg = train(args["dataset"], args["out"], plans=args.get("plans"), init=args.get("init"),
                        resume=bool(args.get("resume")), progress=emitter or print_progress, cancel=cancel,
                        cache_dir=args.get("cache_dir"), command=command_line(argv), **options)
        except TrainingCancelled as err:
            _report_failure(emitter, str(err))
            return 130
        except (DatasetError, PackageError, ValueError, FileNotFoundError) as err:
            _report_failure(emitter, str(err))
            return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 alone reports
    if emitter is not None:
        emitter.result(output=str(pkg.path), name=pkg.name, metrics=pkg.provenance.get("metrics", {}))
    else:
        print(pkg.describe())
    return 0


def _report_failure(emitter: Any, message: str) -> None:
    if emitter is not None:
        emitter.error(message, stage="train")
    else:
        print(f"unetseg train: {message}", file=sys.stderr)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this run, for the model card."""
    return shlex.join(["unetseg", *(sys.argv[1:] if argv is None else argv)])
