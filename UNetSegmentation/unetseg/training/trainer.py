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

Many GPUs: run under ``torchrun --nproc_per_node N -m unetseg train …``; the ``RANK`` and
``WORLD_SIZE`` variables switch on DistributedDataParallel (NCCL on CUDA, gloo on CPU). Each rank computes
its share of every global batch; rank 0 validates, logs and writes checkpoints and the package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from unetseg.models.package import ModelPackage, load_package
from unetseg.networks.factory import build_network
from unetseg.training.checkpoints import (
    BEST,
    LAST,
    RunState,
    load_checkpoint,
    plain,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from unetseg.training.datasets import Dataset
from unetseg.training.export import write_package
from unetseg.training.losses import build_loss
from unetseg.training.planning import Plan
from unetseg.training.sampling import SamplingConfig, patch_loader
from unetseg.training.setup import (
    DistContext,
    Setup,
    TrainOptions,
    as_dataset,
    dist_context,
    load_init_weights,
    prepare,
)
from unetseg.training.validation import final_metrics, predict_cases, validation_dice

ProgressCallback = Callable[..., None]
LOG_FILE = "training_log.jsonl"
CHECKPOINT_DIR = "checkpoints"
_PROGRESS_INTERVAL_S = 2.0


class TrainingCancelled(Exception):  # noqa: N818 (mirrors inference.SegmentationCancelled)
    """Raised when the `cancel` event stops a run; the last epoch's checkpoint stays as it was."""


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
        self.predictions: tuple[int, dict[str, np.ndarray]] = (-1, {})  # the last validation's, by iteration
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
                                  self.setup.plan.schedule.oversample_foreground, self.setup.plan.augmentation,
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
        predictions = predict_cases(self.model, self.setup.val_cases, self.setup.patch_size, self.ctx.device, self.amp)
        self.model.train()
        self.predictions = (self.state.iteration, predictions)
        scores = validation_dice(predictions, self.setup.val_cases, self.setup.labels)
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

    def final_evaluation(self) -> dict:
        """Per-label metrics of the final weights on the validation cases (the training cases when there are
        none), reusing the last validation's predictions when they were made with these weights."""
        setup = self.setup
        cases = setup.val_cases or setup.train_cases
        iteration, predictions = self.predictions
        if iteration != self.state.iteration or not setup.val_cases:
            predictions = predict_cases(self.model, cases, setup.patch_size, self.ctx.device, self.amp)
        return final_metrics(predictions, cases, setup.labels, bool(setup.val_cases))


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
    iterations_per_epoch, batch_size, patch_size, learning_rate, width, deep_supervision, augment, amp,
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
        elif plans is None and init_pkg is None:
            plans = Plan.from_dict(ckpt["plan"])  # resume with the run's own plan
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
            write_package(setup, opts, trainer.state, trainer.final_evaluation(), trainer.model.state_dict(), out,
                          command, init_pkg)
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
