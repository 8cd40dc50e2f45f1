"""U-Net++ (Zhou et al. 2018): MONAI's BasicUNetPlusPlus, one output tensor or its nested deep-supervision outputs.

At the paper widths (2D, 1 input, 2 classes) it has 36.5 M parameters, not the ≈42 M of the paper's design,
because MONAI's transposed convolutions halve the channels of the up-sampled path before each concatenation
(without halving: 44.0 M).
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNetPlusPlus
from torch import nn

from unetseg.networks.norms import norm_arg


class UNetPlusPlus(BasicUNetPlusPlus):
    """MONAI's U-Net++ returning one tensor, or in training with deep supervision its nested outputs deepest first.

    Without deep supervision the three shallower output heads are dropped: unused parameters would break
    distributed training and bloat the weights.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.deep_supervision:
            self.final_conv_0_1 = self.final_conv_0_2 = self.final_conv_0_3 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = super().forward(x)
        return outputs[::-1] if self.training and self.deep_supervision else outputs[-1]


def build_unetpp(cfg: dict, in_channels: int) -> nn.Module:
    """The U-Net++ backbone of a normalised config, taking ``in_channels`` (the config's plus any add-on's)."""
    features = (*cfg["features"], cfg["features"][0])
    return UNetPlusPlus(
        cfg["spatial_dims"], in_channels, cfg["num_classes"], features, cfg["deep_supervision"],
        norm=norm_arg(cfg["norm"]), dropout=cfg["dropout"],
    )  # fmt: skip
