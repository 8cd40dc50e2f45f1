"""Ronneberger's U-Net from MONAI BasicUNet blocks, with deep supervision and late fusion of MRI sequences.

At the paper widths (64…1024; 2D, 1 input, 2 classes) it has 31.1 M parameters (paper: 31.0 M).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from unetseg.networks.norms import norm_arg

_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})


class UNetEncoder(nn.Module):
    """The U-Net contracting path (MONAI BasicUNet blocks): two 3×3 convs per level, 4 max-poolings."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], norm: str, dropout: float):
        super().__init__()
        norm_layer = norm_arg(norm)
        self.levels = nn.ModuleList([TwoConv(spatial_dims, in_channels, features[0], _ACT, norm_layer, True, dropout)])
        for c_in, c_out in itertools.pairwise(features):
            self.levels.append(Down(spatial_dims, c_in, c_out, _ACT, norm_layer, True, dropout))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """The U-Net expanding path: transposed-conv up-sampling, skip concatenation, two convs; optional DS heads."""

    def __init__(
        self, spatial_dims: int, features: Sequence[int], num_classes: int, norm: str, dropout: float, heads: int
    ):
        super().__init__()
        norm_layer = norm_arg(norm)
        deep = list(reversed(features))
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, c_in, c_skip, c_skip, _ACT, norm_layer, True, dropout, halves=c_skip != features[0])
            for c_in, c_skip in itertools.pairwise(deep)
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.head = conv(features[0], num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList(conv(features[1 + i], num_classes, kernel_size=1) for i in range(heads))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x, decoded = features[-1], []
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
            decoded.append(x)
        out = self.head(x)
        if not (self.training and len(self.ds_heads)):
            return out
        finest_first = decoded[::-1]
        return [out, *(head(finest_first[1 + i]) for i, head in enumerate(self.ds_heads))]


class ClassicUNet(nn.Module):
    """Ronneberger's U-Net, with one encoder (early fusion) or one encoder per sequence (late fusion).

    Late fusion: the per-level features of the sequence encoders are concatenated and fused by a 1×1
    convolution before the shared decoder.
    """

    def __init__(self, cfg: dict, in_channels: int):
        super().__init__()
        dims, features, norm, dropout = cfg["spatial_dims"], cfg["features"], cfg["norm"], cfg["dropout"]
        late = cfg["fusion"] == "late"
        n_encoders, enc_in = (in_channels, 1) if late else (1, in_channels)
        self.encoders = nn.ModuleList(UNetEncoder(dims, enc_in, features, norm, dropout) for _ in range(n_encoders))
        conv = Conv[Conv.CONV, dims]
        self.fusion = nn.ModuleList(conv(n_encoders * f, f, kernel_size=1) for f in features) if late else None
        heads = cfg["deep_supr_num"] if cfg["deep_supervision"] else 0
        self.decoder = UNetDecoder(dims, features, cfg["num_classes"], norm, dropout, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.fusion is None:
            return self.decoder(self.encoders[0](x))
        per_sequence = [enc(x[:, i : i + 1]) for i, enc in enumerate(self.encoders)]
        levels = zip(*per_sequence, strict=True)
        fused = [fuse(torch.cat(level, dim=1)) for fuse, level in zip(self.fusion, levels, strict=True)]
        return self.decoder(fused)


def build_unet(cfg: dict, in_channels: int) -> nn.Module:
    """The U-Net backbone of a normalised config, taking ``in_channels`` (the config's plus any add-on's)."""
    return ClassicUNet(cfg, in_channels)
