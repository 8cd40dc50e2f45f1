"""Tests for the network factory: every variant in 2D and 3D, the add-ons, padding, and bad configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch_threads import one_thread  # noqa: F401  (autouse: torch on one thread)

from unetseg.networks import factory as networks
from unetseg.networks.addons import HUPriorChannels
from unetseg.vocabulary import VARIANTS

TINY = 1 / 16  # paper widths ÷ 16: the variant × dims matrix runs in seconds on a 2-core CPU
# Odd sizes on purpose: the network pads to its total stride and crops back.
SIZES = {2: (37, 45), 3: (17, 9, 10)}
# nnunet as the planner gives it: anisotropic in 3D (the first axis pooled once).
NNUNET_LAYOUT = {
    2: {"kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2]},
    3: {"kernel_size": [[1, 3, 3], 3, 3, 3], "strides": [1, [1, 2, 2], 2, 2]},
}


def tiny_config(variant: str, dims: int, **extra) -> dict:
    """A width-1/16 config with three input channels (three MRI sequences) and three classes."""
    config = {"variant": variant, "spatial_dims": dims, "in_channels": 3, "num_classes": 3, "width": TINY}
    if variant == "nnunet":
        config.update(NNUNET_LAYOUT[dims])
    return {**config, **extra}


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


MATRIX = [(v, d) for v in VARIANTS for d in (2, 3)]


@pytest.mark.parametrize(("variant", "dims"), MATRIX)
def test_forward_backward_autocast_and_rebuild(variant, dims):
    torch.manual_seed(0)
    config = tiny_config(variant, dims)
    model = networks.build_network(config)
    x = torch.randn(1, 3, *SIZES[dims])

    model.train()
    out = model(x)
    assert out.shape == (1, 3, *SIZES[dims])
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == expected.shape and torch.isfinite(low.float()).all()

    rebuilt = networks.build_network(json.loads(json.dumps(model.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected)


@pytest.mark.parametrize(
    ("variant", "levels", "full_res_only"), [("unet", 3, False), ("nnunet", 2, False), ("unetpp", 4, True)]
)
def test_deep_supervision_outputs(variant, levels, full_res_only):
    model = networks.build_network(tiny_config(variant, 3, deep_supervision=True))
    x = torch.randn(1, 3, 16, 20, 36)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == levels
    assert outputs[0].shape == (1, 3, 16, 20, 36)
    for out in outputs[1:]:
        expected = x.shape[2:] if full_res_only else None
        assert out.shape[:2] == (1, 3)
        if expected is not None:
            assert out.shape[2:] == expected
        else:
            assert all(o < i for o, i in zip(out.shape[3:], x.shape[3:], strict=True))
    assert model.eval()(x).shape == (1, 3, 16, 20, 36)


def test_unet_deep_supervision_halves_each_level():
    model = networks.build_network(tiny_config("unet", 2, deep_supervision=True, deep_supr_num=2))
    shapes = [tuple(o.shape[2:]) for o in model.train()(torch.randn(1, 3, 32, 48))]
    assert shapes == [(32, 48), (16, 24), (8, 12)]


def test_paper_widths_are_the_defaults():
    config = networks.normalize_config({"variant": "unet", "spatial_dims": 2, "in_channels": 1, "num_classes": 2})
    assert config["features"] == [64, 128, 256, 512, 1024]
    vnet = networks.normalize_config({"variant": "vnet", "spatial_dims": 3, "in_channels": 1, "num_classes": 2})
    assert vnet["features"] == [16, 32, 64, 128, 256]


# The seed's table (paper widths, 1 input channel, 2 classes) and how MONAI's designs land against it.
SEED_PARAMS = {
    ("unet", 2): 31e6,  # Ronneberger et al. 2015: 31.0 M
    ("vnet", 3): 48e6,  # Milletari et al. 2016; MONAI's VNet has 45.6 M
    ("unetpp", 2): 42e6,  # MONAI's up-convolutions halve the up-sampled channels: 36.5 M (unetpp.py docstring)
    ("attention_unet", 2): 35e6,  # MONAI merges each decoder level with one conv, not two: 31.7 M
}


@pytest.mark.parametrize(("variant", "dims"), list(SEED_PARAMS))
def test_parameter_counts_at_paper_width_match_the_seed_table(variant, dims):
    model = networks.build_network({"variant": variant, "spatial_dims": dims, "in_channels": 1, "num_classes": 2})
    assert param_count(model) == pytest.approx(SEED_PARAMS[variant, dims], rel=0.15)


def test_width_scales_features_and_parameters():
    base = {"variant": "attention_unet", "spatial_dims": 2, "in_channels": 1, "num_classes": 2}
    quarter = networks.normalize_config({**base, "width": 0.25})
    assert quarter["features"] == [16, 32, 64, 128, 256]
    vnet = networks.normalize_config({**base, "variant": "vnet", "width": 0.5})
    assert vnet["features"] == [8, 16, 32, 64, 128]
    small = param_count(networks.build_network({**base, "width": 0.125}))
    smaller = param_count(networks.build_network({**base, "width": 0.0625}))
    assert 3 < small / smaller < 5  # parameters grow ~ width²


def test_normalize_config_is_complete_idempotent_and_json():
    config = networks.normalize_config({"variant": "nnunet", "spatial_dims": 3, "in_channels": 2, "num_classes": 4})
    assert json.loads(json.dumps(config)) == config
    assert networks.normalize_config(config) == config
    assert config["filters"] == [32, 64, 128, 256, 320, 320]
    assert config["strides"][0] == [1, 1, 1] and config["deep_supr_num"] == 3  # nnU-Net's non-zero-weight heads
    assert config["norm"] == "instance" and config["fusion"] == "early" and config["sequences"] == 2


def test_norm_name_synonym_from_the_planner():
    config = networks.normalize_config({**tiny_config("nnunet", 2), "norm_name": "batch"})
    assert config["norm"] == "batch" and "norm_name" not in config
    with pytest.raises(ValueError, match="norm_name"):
        networks.normalize_config({**tiny_config("nnunet", 2), "norm_name": "batch", "norm": "instance"})


@pytest.mark.parametrize("variant", ["vnet", "attention_unet"])
def test_batchnorm_of_monai_is_swapped_for_instance_norm(variant):
    def norms(model):
        return {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}

    assert "BatchNorm3d" not in norms(networks.build_network(tiny_config(variant, 3)))
    assert "BatchNorm3d" in norms(networks.build_network(tiny_config(variant, 3, norm="batch")))


def test_total_stride_and_patch_check():
    config = tiny_config("nnunet", 3)
    assert networks.total_stride(config) == (4, 8, 8)
    assert networks.total_stride(tiny_config("unet", 2)) == (16, 16)
    networks.check_patch_size(config, (8, 16, 24))
    with pytest.raises(ValueError, match=r"patch_size .* multiple .* \[4, 8, 8\]"):
        networks.check_patch_size(config, (8, 20, 24))
    with pytest.raises(ValueError, match="patch_size"):
        networks.check_patch_size(config, (8, 16))
    with pytest.raises(ValueError, match="bottleneck"):
        networks.check_patch_size(tiny_config("unet", 2), (16, 16))


def test_pad_to_multiple_round_trip():
    x = torch.randn(1, 2, 5, 17, 32)
    padded, crop = networks.pad_to_multiple(x, (4, 16, 16))
    assert padded.shape == (1, 2, 8, 32, 32)
    assert torch.equal(padded[crop], x)
    assert padded[..., 5:, :, :].abs().sum() == 0
    same, crop = networks.pad_to_multiple(x, 1)
    assert same is x and torch.equal(same[crop], x)


def test_hu_prior_channels_mark_lung_soft_tissue_and_bone():
    mean, std = -200.0, 400.0
    hu = torch.tensor([-800.0, 0.0, 1000.0, -250.0])
    x = ((hu - mean) / std).view(1, 1, 4, 1)
    masks = HUPriorChannels(mean, std)(x)[0, 1:, :, 0]
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    torch.testing.assert_close(masks, expected, atol=1e-3, rtol=0)
    model = networks.build_network(tiny_config("unet", 2, in_channels=1, hu_priors={"mean": mean, "std": std}))
    assert model.backbone.encoders[0].levels[0].conv_0.conv.in_channels == 4
    assert model(torch.randn(1, 1, 16, 32)).shape == (1, 3, 16, 32)


def test_hu_priors_reject_a_clip_that_hides_a_window():
    with pytest.raises(ValueError, match=r"hu_priors\.clip"):
        networks.build_network(
            tiny_config("unet", 3, in_channels=1, hu_priors={"mean": 0, "std": 1, "clip": [-200, 300]})
        )


def test_late_fusion_has_one_encoder_per_sequence():
    early = networks.build_network(tiny_config("unet", 3))
    late = networks.build_network(tiny_config("unet", 3, fusion="late", sequences=3))
    assert len(late.backbone.encoders) == 3 and len(early.backbone.encoders) == 1
    assert late(torch.randn(1, 3, 16, 16, 32)).shape == (1, 3, 16, 16, 32)
    assert param_count(late) > param_count(early)


def test_multiscale_stem_runs_3_5_7_kernels():
    model = networks.build_network(tiny_config("nnunet", 3, multiscale_stem=True))
    kernels = [b.conv.kernel_size for b in model.stem[0].branches]
    assert kernels == [(3, 3, 3), (5, 5, 5), (7, 7, 7)]
    assert model(torch.randn(1, 3, 8, 16, 16)).shape == (1, 3, 8, 16, 16)


def test_prior_gate_suppresses_foreground_outside_the_prior():
    model = networks.build_network(tiny_config("unet", 2, prior_gate=True)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.prior_gate.net.final_conv.bias.fill_(-40.0)  # prior ≈ 0 everywhere
        probs = model(x).softmax(1)
    assert probs[:, 1:].max() < 1e-6
    assert torch.allclose(probs[:, 0], torch.ones(1, 32, 32))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"variant": "transunet"}, r"variant .*'unet', 'vnet', 'unetpp', 'attention_unet', 'nnunet'"),
        ({"spatial_dims": 4}, r"spatial_dims must be one of \[2, 3\]"),
        ({"prior_gate": True}, "prior_gate is 2D-only"),
        ({"fusion": "late", "sequences": 2}, r"in_channels \(3\) must equal sequences \(2\)"),
        ({"fusion": "middle"}, r"fusion must be one of \['early', 'late'\]"),
        ({"norm": "group"}, r"norm must be one of \['instance', 'batch'\]"),
        ({"deep_supervision": True, "variant": "vnet"}, "deep_supervision is available for variants"),
        ({"features": [8, 16, 32]}, "features must list 5"),
        ({"widht": 0.5}, "Unknown key"),
        ({"num_classes": 1}, "num_classes counts the background"),
    ],
)
def test_bad_configs_name_the_parameter(extra, match):
    with pytest.raises(ValueError, match=match):
        networks.build_network({**tiny_config("unet", 3), **extra})


def test_late_fusion_needs_matching_channels_and_variant():
    with pytest.raises(ValueError, match="fusion='late' is available for variants"):
        networks.build_network(tiny_config("vnet", 3, fusion="late"))
    with pytest.raises(ValueError, match="sequences >= 2"):
        networks.build_network(tiny_config("unet", 3, in_channels=1, fusion="late"))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_input_that_leaves_a_one_voxel_bottleneck_is_named(mode):
    # nnunet without a plan: the generic 6-stage network, total stride 32 per axis.
    config = {"variant": "nnunet", "spatial_dims": 3, "in_channels": 1, "num_classes": 2, "width": TINY}
    model = getattr(networks.build_network(config), mode)()
    with pytest.raises(ValueError, match=r"single voxel at the network's bottleneck \(total stride \[32, 32, 32\]\)"):
        model(torch.randn(1, 1, 8, 8, 8))
    batch_norm = networks.build_network({**config, "norm": "batch"}).eval()  # running statistics: no error
    assert batch_norm(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_wrong_input_channels_are_reported():
    model = networks.build_network(tiny_config("unet", 2))
    with pytest.raises(ValueError, match=r"Expected input \(N, 3"):
        model(torch.randn(1, 1, 16, 16))
