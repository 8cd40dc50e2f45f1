"""The seed's add-ons around a backbone: HU-prior channels (CT), a multi-scale stem, and the X-ray prior gate.

Late fusion of MRI sequences (one encoder per sequence) lives with the encoder it repeats, in `unet.py`.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import BasicUNet
from torch import nn
from torch.nn import functional

from unetseg.networks.config import LEVELS
from unetseg.networks.norms import norm_arg
from unetseg.vocabulary import HU_PRIOR_WINDOWS

_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class HUPriorChannels(nn.Module):
    """CT add-on: lung, soft-tissue and bone masks recomputed from the HU image, appended as 3 channels.

    The network receives normalised CT; HU = x·std + mean is recovered from channel 0. The masks are soft
    (products of sigmoids ``softness`` HU wide at each window edge), so they are smooth and differentiable.
    The windows are `unetseg.vocabulary.HU_PRIOR_WINDOWS`.
    """

    ADDED_CHANNELS = len(HU_PRIOR_WINDOWS)

    def __init__(self, mean: float, std: float, softness: float = 10.0):
        super().__init__()
        self.mean, self.std, self.softness = mean, std, softness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x[:, :1].float() * self.std + self.mean
        masks = [self._window(hu, low, high).to(x.dtype) for _, low, high in HU_PRIOR_WINDOWS]
        return torch.cat([x, *masks], dim=1)

    def _window(self, hu: torch.Tensor, low: float, high: float) -> torch.Tensor:
        mask = torch.sigmoid((hu - low) / self.softness)
        return mask if math.isinf(high) else mask * torch.sigmoid((high - hu) / self.softness)


class MultiScaleStem(nn.Module):
    """Parallel 3/5/7 convolutions fused by a 1×1 convolution: one stem for lesions of very different sizes."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.branches = nn.ModuleList(
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=k, norm=norm_arg(norm), act=_ACT)
            for k in (3, 5, 7)
        )
        self.fuse = Convolution(
            spatial_dims, 3 * out_channels, out_channels, kernel_size=1, norm=norm_arg(norm), act=_ACT
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class PriorGate(nn.Module):
    """X-ray add-on: a small prior U-Net whose sigmoid map gates the foreground logits.

    Gating is in probability space: foreground logits get ``+ log σ(prior)``, so after the softmax each
    foreground probability is multiplied by the prior map (and renormalised); background is untouched.
    """

    def __init__(self, in_channels: int, first_features: int, norm: str):
        super().__init__()
        features = [max(2, first_features * 2**i // 8) for i in range(LEVELS)]
        self.net = BasicUNet(2, in_channels, 1, features=(*features, features[0]), norm=norm_arg(norm))

    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        log_prior = functional.logsigmoid(self.net(x).float()).to(logits.dtype)
        return torch.cat([logits[:, :1], logits[:, 1:] + log_prior], dim=1)
