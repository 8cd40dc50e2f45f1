"""Segmentation losses from a plain config: `build_loss(config)` returns ``loss(output, target)``.

MONAI's implementations do the work (DiceLoss, FocalLoss, DiceCELoss, DeepSupervisionLoss). Conventions:

- ``output``: logits (N, C, *spatial), C = number of classes with background; or, from a deeply supervised
  network in train mode, a list ``[full resolution, 1/2, 1/4, …]`` of such logits.
- ``target``: an integer label map (N, 1, *spatial) or (N, *spatial) with values in [0, C).
- Softmax everywhere (mutually exclusive classes). The Dice term is soft, per class, averaged over classes
  and batch, background excluded by default. Focal and cross-entropy cover all classes and are averaged per
  voxel (so focal with gamma 0 equals cross-entropy). MONAI's own DiceFocalLoss is not used: its focal term
  is sigmoid-based whatever the Dice term does.
- Deep supervision (nnU-Net's rule): the target is down-sampled by nearest neighbour to each output's size,
  weights are 1/2^i for output i, normalised to sum to 1. nnU-Net also computes the lowest decoder level
  and gives it weight 0; our networks do not produce that output at all (``deep_supr_num`` counts the
  outputs that are trained), which trains identically without the wasted head.

Config keys (defaults): ``name`` ("dice_ce"; one of `LOSSES`), ``dice_weight`` (1.0), ``ce_weight`` (1.0),
``focal_weight`` (1.0), ``gamma`` (2.0), ``alpha`` (None: no class balancing; a number a weights the
background 1 − a and every other class a), ``include_background`` (False), ``smooth`` (1e-5, numerator and
denominator of the Dice), ``batch_dice`` (False: Dice per image; True: over the whole batch, as nnU-Net's
batch Dice).
"""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, FocalLoss
from torch import nn

LOSSES = ("dice", "focal", "dice_focal", "dice_ce")
_DEFAULTS = {
    "name": "dice_ce",
    "dice_weight": 1.0,
    "ce_weight": 1.0,
    "focal_weight": 1.0,
    "gamma": 2.0,
    "alpha": None,
    "include_background": False,
    "smooth": 1e-5,
    "batch_dice": False,
}


def normalize_loss_config(config: dict) -> dict:
    """Validate a loss config and return it with every default filled in (JSON-serialisable)."""
    unknown = sorted(set(config) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown loss key(s) {unknown}; allowed keys: {sorted(_DEFAULTS)}.")
    cfg = {**_DEFAULTS, **config}
    if cfg["name"] not in LOSSES:
        raise ValueError(f"Unknown loss name {cfg['name']!r}; allowed: {list(LOSSES)}.")
    for key in ("dice_weight", "ce_weight", "focal_weight", "gamma", "smooth"):
        cfg[key] = float(cfg[key])
        if cfg[key] < 0:
            raise ValueError(f"{key} must be >= 0; got {cfg[key]}.")
    if cfg["alpha"] is not None and not 0.0 <= float(cfg["alpha"]) <= 1.0:
        raise ValueError(f"alpha must be None or in [0, 1]; got {cfg['alpha']}.")
    cfg["alpha"] = None if cfg["alpha"] is None else float(cfg["alpha"])
    cfg["include_background"] = bool(cfg["include_background"])
    cfg["batch_dice"] = bool(cfg["batch_dice"])
    return cfg


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's deep-supervision weights for the outputs it trains: 1/2^i, normalised to sum to 1."""
    weights = [0.5**i for i in range(levels)]
    total = sum(weights)
    return [w / total for w in weights]


class _NNUNetDeepSupervision(DeepSupervisionLoss):
    """MONAI's deep-supervision wrapper (nearest-neighbour target down-sampling) with nnU-Net's weights."""

    def get_weights(self, levels: int = 1) -> list[float]:
        return deep_supervision_weights(levels)


class FocalCE(nn.Module):
    """Softmax focal loss over all classes, summed over classes and averaged per voxel (gamma 0: cross-entropy)."""

    def __init__(self, gamma: float, alpha: float | None):
        super().__init__()
        self.focal = FocalLoss(to_onehot_y=True, gamma=gamma, alpha=alpha, use_softmax=True, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, target).sum(dim=1).mean()


class WeightedSum(nn.Module):
    """A weighted sum of loss terms, each called as ``term(logits, target)``."""

    def __init__(self, terms: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList(t for _, t in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms, strict=True))


class SegmentationLoss(nn.Module):
    """Checks and shapes integer label-map targets, then applies the (deeply supervised) loss."""

    def __init__(self, config: dict, base: nn.Module):
        super().__init__()
        self.config = config
        self.loss = _NNUNetDeepSupervision(base)

    def forward(self, output: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        main = output[0] if isinstance(output, (list, tuple)) else output
        return self.loss(output, _label_map(target, main))


def _label_map(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Target as a float (N, 1, *spatial) label map (float for nearest down-sampling), checked against logits."""
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[0] != logits.shape[0] or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"target must be an integer label map (N, 1, *spatial) or (N, *spatial) matching the logits "
            f"{tuple(logits.shape)}; got {tuple(target.shape)}."
        )
    if target.is_floating_point() and not torch.equal(target, target.round()):
        raise ValueError("target must hold integer labels, not probabilities or one-hot channels.")
    classes = logits.shape[1]
    if target.numel() and (target.min() < 0 or target.max() >= classes):
        raise ValueError(
            f"target labels must lie in [0, {classes - 1}] for {classes} output channels; "
            f"got [{int(target.min())}, {int(target.max())}]."
        )
    return target.float()


def build_loss(config: dict) -> nn.Module:
    """Build the loss a config describes (see the module docstring); ``loss.config`` is its normalised form."""
    cfg = normalize_loss_config(config)
    dice_args = {
        "include_background": cfg["include_background"],
        "to_onehot_y": True,
        "softmax": True,
        "smooth_nr": cfg["smooth"],
        "smooth_dr": cfg["smooth"],
        "batch": cfg["batch_dice"],
    }
    name = cfg["name"]
    if name == "dice":
        base: nn.Module = DiceLoss(**dice_args)
    elif name == "focal":
        base = FocalCE(cfg["gamma"], cfg["alpha"])
    elif name == "dice_focal":
        focal = FocalCE(cfg["gamma"], cfg["alpha"])
        base = WeightedSum([(cfg["dice_weight"], DiceLoss(**dice_args)), (cfg["focal_weight"], focal)])
    else:
        base = DiceCELoss(**dice_args, lambda_dice=cfg["dice_weight"], lambda_ce=cfg["ce_weight"])
    return SegmentationLoss(cfg, base)
