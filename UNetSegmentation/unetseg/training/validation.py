"""Validation of a network in training: class-index maps of preprocessed cases by a Gaussian sliding window
(MONAI's `sliding_window_inference` with the predictor's defaults), and their Dice, IoU and HD95.

Scores are measured on the preprocessed grid (the plan's spacing), where the trainer holds its cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from unetseg.evaluation.metrics import compute_metrics, dice
from unetseg.inference.windows import DEFAULT_SIGMA_SCALE
from unetseg.training.cache import PreprocessedCase
from unetseg.vocabulary import DEFAULT_CPU_WINDOW_BATCH, DEFAULT_OVERLAP


def predict_case(model: nn.Module, image: np.ndarray, patch: Sequence[int], device: torch.device,
                 amp: bool = False) -> np.ndarray:
    """Class indices (z, y, x) of a preprocessed case (C, z, y, x): Gaussian sliding window with the
    predictor's overlap (2D models: the slices are the batch)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))
    x = x.permute(1, 0, 2, 3) if len(patch) == 2 else x[None]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        logits = sliding_window_inference(
            x, tuple(patch), sw_batch_size=DEFAULT_CPU_WINDOW_BATCH[len(patch)], predictor=model,
            overlap=DEFAULT_OVERLAP, mode="gaussian", sigma_scale=DEFAULT_SIGMA_SCALE, sw_device=device,
            device=torch.device("cpu"),
        )
    labels = logits.argmax(1).to(torch.uint8)
    return (labels if len(patch) == 2 else labels[0]).numpy()


def predict_cases(model: nn.Module, cases: Sequence[PreprocessedCase], patch: Sequence[int], device: torch.device,
                  amp: bool = False) -> dict[str, np.ndarray]:
    """Class-index maps of preprocessed cases, by case name (the model is left in eval mode)."""
    model.eval()
    return {case.name: predict_case(model, case.image, patch, device, amp) for case in cases}


def validation_dice(predictions: dict[str, np.ndarray], cases: Sequence[PreprocessedCase],
                    labels: list[dict]) -> dict[int, float]:
    """Mean Dice per class index over the cases (on the preprocessed grid)."""
    return {label["value"]: float(np.mean([dice(predictions[c.name] == label["value"],
                                                np.asarray(c.label) == label["value"]) for c in cases]))
            for label in labels}


def final_metrics(predictions: dict[str, np.ndarray], cases: Sequence[PreprocessedCase], labels: list[dict],
                  validation: bool) -> dict:
    """Per-label Dice, IoU and HD95 (mm) averaged over the cases (validation ones, or the training ones when
    there are none), on the preprocessed grid; plus what they were measured on."""
    values = [label["value"] for label in labels]
    rows = [compute_metrics(predictions[c.name], np.asarray(c.label), values, tuple(c.spacing)[::-1]) for c in cases]
    metrics: dict[str, Any] = {
        "evaluated_on": "validation split" if validation else "training-set Dice only; not a measure of generalisation",
        "evaluated_cases": [c.name for c in cases],
    }
    for label in labels:
        for key in ("dice", "iou", "hd95"):
            finite = [r[label["value"]][key] for r in rows if math.isfinite(r[label["value"]][key])]
            metrics[f"{key}_{label['name']}"] = round(float(np.mean(finite)), 4) if finite else None
    dices = [metrics[f"dice_{label['name']}"] for label in labels]
    metrics["dice_mean"] = round(float(np.mean(dices)), 4)
    return metrics
