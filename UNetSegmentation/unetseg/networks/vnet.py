"""V-Net (Milletari et al. 2016): MONAI's VNet with a width, configurable dropout and a choice of normalisation.

At the paper widths (16…256; 3D, 1 input, 2 classes) it has 45.6 M parameters (≈48 M quoted).
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets import VNet
from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition
from torch import nn

from unetseg.networks.norms import use_instance_norm


class WidthVNet(VNet):
    """MONAI's V-Net with a width (its 16 base channels scaled), configurable dropout, 2D-correct dropout, and a
    1×1 input adapter when ``in_channels`` does not divide the base width (MONAI requires it: 3 MRI sequences)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, base: int, dropout: float):
        nn.Module.__init__(self)  # VNet.__init__ hard-codes the widths; build the same layers with ours
        d, b, act = spatial_dims, base, ("elu", {"inplace": True})
        drop_down, drop_up = dropout or None, (dropout or None, dropout)
        fits = b % in_channels == 0
        self.adapter = nn.Identity() if fits else Conv[Conv.CONV, d](in_channels, b, kernel_size=1)
        self.in_tr = InputTransition(d, in_channels if fits else b, b, act)
        self.down_tr32 = DownTransition(d, b, 1, act, dropout_dim=d)
        self.down_tr64 = DownTransition(d, 2 * b, 2, act, dropout_dim=d)
        self.down_tr128 = DownTransition(d, 4 * b, 3, act, dropout_prob=drop_down, dropout_dim=d)
        self.down_tr256 = DownTransition(d, 8 * b, 2, act, dropout_prob=drop_down, dropout_dim=d)
        self.up_tr256 = UpTransition(d, 16 * b, 16 * b, 2, act, dropout_prob=drop_up, dropout_dim=d)
        self.up_tr128 = UpTransition(d, 16 * b, 8 * b, 2, act, dropout_prob=drop_up, dropout_dim=d)
        self.up_tr64 = UpTransition(d, 8 * b, 4 * b, 1, act, dropout_prob=(None, dropout), dropout_dim=d)
        self.up_tr32 = UpTransition(d, 4 * b, 2 * b, 1, act, dropout_prob=(None, dropout), dropout_dim=d)
        self.out_tr = OutputTransition(d, 2 * b, num_classes, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.adapter(x))


def build_vnet(cfg: dict, in_channels: int) -> nn.Module:
    """The V-Net backbone of a normalised config, taking ``in_channels`` (the config's plus any add-on's)."""
    net = WidthVNet(cfg["spatial_dims"], in_channels, cfg["num_classes"], cfg["features"][0], cfg["dropout"])
    if cfg["norm"] == "instance":
        use_instance_norm(net)
    return net
