"""Tests for the losses: exact values on hand-computable examples, deep supervision, target handling."""

from __future__ import annotations

import math

import pytest
import torch

from unetseg.training import losses


def one_hot_logits(labels: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    """Confident logits (N, C, *spatial) that put each voxel on its label."""
    return torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).float() * scale


def binary_logits(p_foreground: list[float]) -> torch.Tensor:
    """Two-class logits (1, 2, n) whose softmax gives the foreground probabilities p."""
    p = torch.tensor(p_foreground)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).unsqueeze(0)


P = [0.8, 0.6, 0.3, 0.1]
TARGET = torch.tensor([[1, 1, 0, 0]])  # (N, n): a 1D "image" of four pixels
DICE = 1 - 2 * (0.8 + 0.6) / (sum(P) + 2)
CE = -sum(math.log(q) for q in (0.8, 0.6, 0.7, 0.9)) / 4


@pytest.mark.parametrize("name", losses.LOSSES)
@pytest.mark.parametrize("dims", [2, 3])
def test_perfect_prediction_gives_zero(name, dims):
    labels = torch.randint(0, 3, (2, *(6,) * dims))
    loss = losses.build_loss({"name": name})
    assert float(loss(one_hot_logits(labels, 3), labels)) == pytest.approx(0.0, abs=1e-4)


def test_dice_known_value_excludes_background():
    loss = losses.build_loss({"name": "dice", "smooth": 0.0})
    assert float(loss(binary_logits(P), TARGET)) == pytest.approx(DICE, rel=1e-5)
    with_background = losses.build_loss({"name": "dice", "smooth": 0.0, "include_background": True})
    background = 1 - 2 * (0.7 + 0.9) / (sum(1 - p for p in P) + 2)
    assert float(with_background(binary_logits(P), TARGET)) == pytest.approx((DICE + background) / 2, rel=1e-5)


def test_dice_ce_known_value_and_weights():
    loss = losses.build_loss({"name": "dice_ce", "smooth": 0.0, "dice_weight": 0.5, "ce_weight": 2.0})
    assert float(loss(binary_logits(P), TARGET)) == pytest.approx(0.5 * DICE + 2.0 * CE, rel=1e-5)


def test_focal_known_value_and_gamma_zero_is_cross_entropy():
    focal = losses.build_loss({"name": "focal", "gamma": 2.0})
    expected = -sum((1 - q) ** 2 * math.log(q) for q in (0.8, 0.6, 0.7, 0.9)) / 4
    assert float(focal(binary_logits(P), TARGET)) == pytest.approx(expected, rel=1e-5)
    ce_like = losses.build_loss({"name": "focal", "gamma": 0.0})
    assert float(ce_like(binary_logits(P), TARGET)) == pytest.approx(CE, rel=1e-5)


def test_dice_focal_is_the_weighted_sum():
    config = {"name": "dice_focal", "smooth": 0.0, "gamma": 0.0, "dice_weight": 2.0, "focal_weight": 3.0}
    assert float(losses.build_loss(config)(binary_logits(P), TARGET)) == pytest.approx(2 * DICE + 3 * CE, rel=1e-5)


def test_focal_is_below_cross_entropy_for_confident_correct_pixels():
    confident = binary_logits([0.97, 0.95, 0.04, 0.02])
    focal = float(losses.build_loss({"name": "focal", "gamma": 2.0})(confident, TARGET))
    ce = float(losses.build_loss({"name": "focal", "gamma": 0.0})(confident, TARGET))
    assert 0 < focal < 0.01 * ce


@pytest.mark.parametrize("name", losses.LOSSES)
def test_gradients_are_finite_with_empty_classes(name):
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 2:4, 2:4] = 1  # classes 2 and 3 absent everywhere, class 1 absent in the second image
    loss = losses.build_loss({"name": name})(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_target_with_or_without_channel_axis():
    logits, labels = torch.randn(2, 3, 5, 6, 7), torch.randint(0, 3, (2, 5, 6, 7))
    loss = losses.build_loss({"name": "dice_ce"})
    assert float(loss(logits, labels)) == pytest.approx(float(loss(logits, labels.unsqueeze(1))))


def test_deep_supervision_weights_follow_nnunet():
    assert losses.deep_supervision_weights(1) == [1.0]
    assert losses.deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    weights = losses.deep_supervision_weights(5)
    assert sum(weights) == pytest.approx(1.0) and weights[0] == 2 * weights[1] == 16 * weights[4]


def test_deep_supervision_downsamples_the_target():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 8, 12))
    outputs = [torch.randn(2, 3, 8, 12), torch.randn(2, 3, 4, 6), torch.randn(2, 3, 2, 3)]
    loss = losses.build_loss({"name": "dice_ce"})
    half, quarter = (
        torch.nn.functional.interpolate(labels.float(), size=size, mode="nearest-exact") for size in ((4, 6), (2, 3))
    )
    expected = (
        4 / 7 * float(loss(outputs[0], labels))
        + 2 / 7 * float(loss(outputs[1], half))
        + 1 / 7 * float(loss(outputs[2], quarter))
    )
    assert float(loss(outputs, labels)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("config", "match"),
    [({"name": "tversky"}, r"allowed: \['dice', 'focal', 'dice_focal', 'dice_ce'\]"), ({"lr": 1}, "Unknown loss")],
)
def test_bad_loss_config(config, match):
    with pytest.raises(ValueError, match=match):
        losses.build_loss(config)


def test_bad_targets_are_reported():
    loss = losses.build_loss({"name": "dice"})
    logits = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        loss(logits, torch.full((1, 4, 4), 2))
    with pytest.raises(ValueError, match="integer label map"):
        loss(logits, torch.zeros(1, 2, 4, 4))
