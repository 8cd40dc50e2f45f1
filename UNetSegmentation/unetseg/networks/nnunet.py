"""nnU-Net's auto-configured network: MONAI's DynUNet with the planner's kernels, strides and filters.

Without a plan it is nnU-Net's generic network (see `unetseg.networks.config`); the 3D one has 31.2 M
parameters at the default widths (32→320, 1 input, 2 classes).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet
from torch import nn

from unetseg.networks.norms import norm_arg


class NestedDynUNet(DynUNet):
    """MONAI's DynUNet returning deep-supervision logits at their own resolution, as nnU-Net does, instead of
    up-sampling them to full resolution and stacking them (cheaper, and the loss down-samples the target)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.output_block(self.skip_layers(x))
        return [out, *self.heads] if self.training and self.deep_supervision else out


def build_nnunet(cfg: dict, in_channels: int) -> nn.Module:
    """The nnU-Net backbone of a normalised config, taking ``in_channels`` (the config's plus any add-on's)."""
    return NestedDynUNet(
        cfg["spatial_dims"], in_channels, cfg["num_classes"], cfg["kernel_size"], cfg["strides"], cfg["strides"][1:],
        filters=cfg["filters"], dropout=cfg["dropout"] or None, norm_name=norm_arg(cfg["norm"]),
        deep_supervision=cfg["deep_supervision"], deep_supr_num=cfg["deep_supr_num"], res_block=cfg["res_block"],
    )  # fmt: skip
