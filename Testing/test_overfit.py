"""Proof that the pieces train together: tiny 2D and 3D networks overfit one synthetic phantom on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_threads import one_thread  # noqa: F401  (autouse: torch on one thread)

from unetseg import phantoms
from unetseg.evaluation import metrics
from unetseg.networks import factory as networks
from unetseg.training import losses


def overfit(config: dict, image: np.ndarray, labels: np.ndarray, max_steps: int = 300) -> dict[int, float]:
    """Train on one (C, *spatial) image until every label's Dice exceeds 0.95; return the last Dices."""
    torch.manual_seed(0)
    model = networks.build_network(config)
    loss = losses.build_loss({"name": "dice_ce"})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(image).float()[None]
    y = torch.from_numpy(labels.astype(np.int64))[None]
    for step in range(1, max_steps + 1):
        model.train()
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
        if step % 25 == 0:
            with torch.no_grad():
                predicted = model.eval()(x).argmax(1)[0].numpy()
            dices = {k: metrics.dice(predicted == k, labels == k) for k in range(1, config["num_classes"])}
            if min(dices.values()) > 0.95:
                break
    return dices


def test_tiny_2d_unet_overfits_an_xray_phantom():
    image, labels = phantoms.xray_phantom(shape=(64, 56))
    config = {"variant": "unet", "spatial_dims": 2, "in_channels": 1, "num_classes": 3, "width": 1 / 16}
    dices = overfit(config, image.array, labels.array[0])  # the one-slice (1, y, x) image is (C=1, y, x)
    assert min(dices.values()) > 0.95, dices


@pytest.mark.slow
def test_tiny_3d_nnunet_overfits_a_ct_phantom():
    image, labels = phantoms.ct_phantom(shape=(12, 24, 24), spacing=(4.0, 4.0, 8.0))
    config = {
        "variant": "nnunet",
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 5,
        "filters": [8, 16, 32, 64],
        "strides": [1, 2, 2, 2],
        "kernel_size": [3, 3, 3, 3],
    }
    normalised = np.clip(image.array, -1000, 1000) / 500.0
    dices = overfit(config, normalised[None], labels.array)
    assert min(dices.values()) > 0.95, dices
