"""Normalisation as a config names it: MONAI's ``norm`` argument, and the swap of MONAI's hard-coded BatchNorm."""

from __future__ import annotations

from monai.networks.layers.factories import Norm
from torch import nn


def norm_arg(norm: str) -> tuple:
    """MONAI's ``norm`` argument for a config's ``norm`` ("instance" is affine, as in nnU-Net)."""
    return ("instance", {"affine": True}) if norm == "instance" else ("batch", {})


def use_instance_norm(module: nn.Module) -> None:
    """Swap hard-coded BatchNorm layers (MONAI's V-Net, Attention U-Net) for affine InstanceNorm, in place."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d)):
            dims = 3 if isinstance(child, nn.BatchNorm3d) else 2
            setattr(module, name, Norm[Norm.INSTANCE, dims](child.num_features, affine=True))
        else:
            use_instance_norm(child)
