"""A model package whose real U-Net (built by `build_network`) echoes a label map encoded in the image.

The weights are set by hand: the full-resolution path of a small BatchNorm U-Net passes channel 0 through
unchanged (identity 3×3 kernels, eval-mode BatchNorm with its default statistics, deeper levels silenced),
and the 1×1 head scores class k as ``k·x − k²/2``, whose arg-max over k is ``round(x)``. An image whose
voxels hold label values therefore comes back as exactly those labels, through every geometry step of the
predictor. Used by the inference, ONNX and CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unetseg.image import Image, Label
from unetseg.models.package import ModelPackage, save_package
from unetseg.networks.factory import build_network

ECHO_LABELS = [Label(1, "one", (1.0, 0.0, 0.0)), Label(2, "two", (0.0, 1.0, 0.0)), Label(3, "three", (0.0, 0.0, 1.0))]


def echo_config(spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 4) -> dict:
    """A tiny U-Net config (BatchNorm, so eval mode is a fixed per-channel affine map)."""
    return {
        "variant": "unet", "spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": num_classes,
        "features": [2, 2, 2, 2, 2], "norm": "batch",
    }  # fmt: skip


def echo_state_dict(config: dict) -> dict[str, torch.Tensor]:
    """Hand-set weights under which the network's logits arg-max to round(channel 0)."""
    net = build_network(config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.modules.conv._ConvNd,)):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        unet = net.backbone
        top_encoder = unet.encoders[0].levels[0]
        top_decoder = unet.decoder.ups[-1].convs
        for two_conv in (top_encoder, top_decoder):
            for conv in (two_conv.conv_0.conv, two_conv.conv_1.conv):
                centre = tuple(k // 2 for k in conv.weight.shape[2:])
                conv.weight[(0, 0, *centre)] = 1.0  # channel 0 in, channel 0 out (the skip comes first)
        head = unet.decoder.head
        for k in range(head.weight.shape[0]):
            head.weight[(k, 0, *([0] * (head.weight.ndim - 2)))] = float(k)
            head.bias[k] = -(k**2) / 2.0
    return net.state_dict()


def echo_manifest(name: str = "echo", spatial_dims: int = 3, inputs: int = 1, **preprocessing) -> dict:
    """A manifest for the echo network: label values 1..3, no normalisation, the given preprocessing.

    Its inputs are label values (small, non-negative), so it is declared an MR model: a CT model would rightly
    warn that such an input is no CT. A single-input echo model crops as a CT model would by default (the body),
    as it always has.
    """
    patch = [16, 16, 16] if spatial_dims == 3 else [32, 32]
    if inputs == 1:
        preprocessing = {"crop": "body", **preprocessing}
    return {
        "name": name,
        "version": "1",
        "modality": "MR",
        "variant": "unet",
        "spatial_dims": spatial_dims,
        "network": echo_config(spatial_dims, inputs),
        "inputs": [{"name": f"input{i}"} for i in range(inputs)],
        "labels": [label.to_dict() for label in ECHO_LABELS],
        "preprocessing": {"normalization": [{"scheme": "none"}] * inputs, **preprocessing},
        "inference": {"patch_size": patch, "overlap": 0.5, "mirror_axes": list(range(spatial_dims))},
    }


def echo_package(
    folder: Path, name: str = "echo", spatial_dims: int = 3, inputs: int = 1, **preprocessing
) -> ModelPackage:
    """Write and open an echo model package in `folder`."""
    manifest = echo_manifest(name, spatial_dims, inputs, **preprocessing)
    return save_package(folder, manifest, echo_state_dict(manifest["network"]))


def echo_image(labels: Image, background: float = 0.0) -> Image:
    """The image an echo model segments into `labels`: voxel values are the label values (as float)."""
    return labels.with_array(labels.array.astype(np.float32) + background)
