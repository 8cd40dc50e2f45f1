"""`build_network(config)`: any variant of the U-Net family with its add-ons, from a plain JSON-serialisable dict.

The config's keys and defaults are documented in `unetseg.networks.config` (`normalize_config`); each variant
lives in its own module (`unet`, `vnet`, `unetpp`, `attention_unet`, `nnunet`), the seed's add-ons in `addons`.
Parameter counts at the paper widths are in each variant's docstring (`benchmarks/param_counts.py` prints them).

In eval mode ``model(x)`` returns logits ``(N, num_classes, *spatial)`` of the input's spatial size for any
input size: the input is padded (at the end of each axis) to the network's `total_stride` and the output
cropped back, by `pad_to_multiple`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional

from unetseg.networks.addons import HUPriorChannels, MultiScaleStem, PriorGate
from unetseg.networks.attention_unet import build_attention_unet
from unetseg.networks.config import bottleneck_voxels, check_patch_size, normalize_config, total_stride
from unetseg.networks.nnunet import build_nnunet
from unetseg.networks.unet import build_unet
from unetseg.networks.unetpp import build_unetpp
from unetseg.networks.vnet import build_vnet

# The public face of the networks package; the config functions are re-exported for callers' convenience.
__all__ = ["SegmentationNetwork", "build_network", "check_patch_size", "normalize_config", "pad_to_multiple",
           "total_stride"]  # fmt: skip

# One backbone builder per variant of `unetseg.vocabulary.VARIANTS`: (normalised config, in_channels) -> module.
_BACKBONES: dict[str, Callable[[dict, int], nn.Module]] = {
    "unet": build_unet,
    "vnet": build_vnet,
    "unetpp": build_unetpp,
    "attention_unet": build_attention_unet,
    "nnunet": build_nnunet,
}


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the end of each spatial axis of (N, C, *spatial) up to a multiple; return the crop back.

    ``padded[crop_slices]`` is ``x``; apply the same slices to a full-resolution output to crop it.
    """
    spatial = tuple(x.shape[2:])
    multiple = (multiple,) * len(spatial) if isinstance(multiple, int) else tuple(multiple)
    if len(multiple) != len(spatial):
        raise ValueError(f"multiple must have one entry per spatial axis ({len(spatial)}); got {multiple}.")
    extra = [-n % m for n, m in zip(spatial, multiple, strict=True)]
    crop = (slice(None), slice(None), *(slice(0, n) for n in spatial))
    if not any(extra):
        return x, crop
    pad = [v for e in reversed(extra) for v in (0, e)]  # pad lists the last axis first
    return functional.pad(x, pad), crop


def _crop_outputs(out: torch.Tensor | list[torch.Tensor], spatial: Sequence[int], padded: Sequence[int]):
    """Crop full-resolution logits (and lower-resolution deep-supervision logits) back to the input's extent."""
    if isinstance(out, torch.Tensor):
        return _crop(out, spatial, padded)
    return [_crop(o, spatial, padded) for o in out]


def _crop(t: torch.Tensor, spatial: Sequence[int], padded: Sequence[int]) -> torch.Tensor:
    keep = [math.ceil(n * s / p) for n, s, p in zip(spatial, t.shape[2:], padded, strict=True)]
    return t[(slice(None), slice(None), *(slice(0, k) for k in keep))]


class SegmentationNetwork(nn.Module):
    """A backbone with its optional input add-ons and prior gate, padding inputs to the total stride."""

    def __init__(self, cfg: dict, stem: nn.Module, backbone: nn.Module, prior_gate: PriorGate | None):
        super().__init__()
        self.config = cfg
        self.stride = total_stride(cfg)
        self.stem, self.backbone, self.prior_gate = stem, backbone, prior_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        dims, channels = self.config["spatial_dims"], self.config["in_channels"]
        if x.ndim != dims + 2 or x.shape[1] != channels:
            raise ValueError(f"Expected input (N, {channels}, *{dims} spatial axes); got shape {tuple(x.shape)}.")
        padded, _ = pad_to_multiple(x, self.stride)
        self._check_bottleneck(x, padded)
        out = self.backbone(self.stem(padded))
        if self.prior_gate is not None:
            out = [self.prior_gate(padded, out[0]), *out[1:]] if isinstance(out, list) else self.prior_gate(padded, out)
        return _crop_outputs(out, x.shape[2:], padded.shape[2:])

    def _check_bottleneck(self, x: torch.Tensor, padded: torch.Tensor) -> None:
        """Name the problem where normalisation would fail on a one-voxel bottleneck (torch's error does not):
        instance norm always, batch norm when training on a single input."""
        if bottleneck_voxels(padded.shape[2:], self.stride) > 1:
            return
        norm = self.config["norm"]
        if norm == "instance" or (self.training and x.shape[0] == 1):
            raise ValueError(
                f"Input of spatial size {list(x.shape[2:])} leaves a single voxel at the network's bottleneck "
                f"(total stride {list(self.stride)}), which {norm} normalisation cannot handle; give an input of "
                f"at least twice the stride along one axis, or a network with fewer down-samplings."
            )


def _first_features(cfg: dict) -> int:
    return (cfg["filters"] if cfg["variant"] == "nnunet" else cfg["features"])[0]


def build_network(config: dict) -> nn.Module:
    """Build the network a config describes (see `unetseg.networks.config`); ``model.config`` is its normalised form."""
    cfg = normalize_config(config)
    channels, stem = cfg["in_channels"], []
    if cfg["hu_priors"]:
        stem.append(HUPriorChannels(cfg["hu_priors"]["mean"], cfg["hu_priors"]["std"]))
        channels += HUPriorChannels.ADDED_CHANNELS
    if cfg["multiscale_stem"]:
        stem.append(MultiScaleStem(cfg["spatial_dims"], channels, _first_features(cfg), cfg["norm"]))
        channels = _first_features(cfg)
    gate = PriorGate(cfg["in_channels"], _first_features(cfg), cfg["norm"]) if cfg["prior_gate"] else None
    return SegmentationNetwork(cfg, nn.Sequential(*stem), _BACKBONES[cfg["variant"]](cfg, channels), gate)
