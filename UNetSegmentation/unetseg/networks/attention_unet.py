"""Attention U-Net (Oktay et al. 2018): MONAI's AttentionUnet, its hard-coded BatchNorm swapped when asked.

At the paper widths (2D, 1 input, 2 classes) it has 31.7 M parameters, not ≈35 M, because MONAI merges each
decoder level with one convolution instead of two (the missing second convolutions are the 3.1 M difference).
"""

from __future__ import annotations

from monai.networks.nets import AttentionUnet
from torch import nn

from unetseg.networks.config import LEVELS
from unetseg.networks.norms import use_instance_norm


def build_attention_unet(cfg: dict, in_channels: int) -> nn.Module:
    """The Attention U-Net backbone of a normalised config, taking ``in_channels`` (the config's plus add-ons')."""
    strides = (2,) * (LEVELS - 1)
    net = AttentionUnet(
        cfg["spatial_dims"], in_channels, cfg["num_classes"], cfg["features"], strides, dropout=cfg["dropout"]
    )
    if cfg["norm"] == "instance":
        use_instance_norm(net)
    return net
