"""Fake nnU-Net v2 trained models for the nnU-Net format tests: plans, dataset.json, checkpoints, zips.

A tiny ``PlainConvUNet`` / ``ResidualEncoderUNet`` of dynamic-network-architectures (the package nnU-Net builds its
networks with) and ``torch.save`` of a dict shaped like nnU-Net's ``checkpoint_final.pth`` (optimizer state, training
logs holding numpy scalars, ``init_args`` with the plans and a ``torch.device``, the trainer's name and the mirroring
axes), next to a ``dataset.json`` and ``plans.json`` as nnU-Net writes them. Importing it skips the importing test
module where dynamic-network-architectures is missing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "dynamic_network_architectures",
    reason="dynamic-network-architectures is not installed (pip install --no-deps dynamic-network-architectures)",
)

from unetseg.models.formats.nnunet_network import NetworkSpec
from unetseg.models.formats.nnunet_plans import parse_labels, resolve_configuration

CT_PROPS = {"0": {"max": 1200.0, "mean": 80.5, "median": 70.0, "min": -100.0, "percentile_00_5": -50.0,
                  "percentile_99_5": 900.0, "std": 120.25}}


def arch(cls: str = "PlainConvUNet", dims: int = 3, features=(4, 8, 16)) -> dict:
    """A plans.json ``architecture`` entry for a small dynamic-network-architectures U-Net."""
    n = len(features)
    kwargs = {
        "n_stages": n, "features_per_stage": list(features),
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [[3] * dims] * n, "strides": [[1] * dims] + [[2] * dims] * (n - 1),
        ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): [1] * n,
        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}", "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def configuration(dims: int = 3, cls: str = "PlainConvUNet", n_channels: int = 1, **over) -> dict:
    """A plans.json configuration (CT normalisation, 16-voxel patches), with `over` replacing its keys."""
    cfg = {
        "data_identifier": "nnUNetPlans_x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16] * dims, "median_image_size_in_voxels": [20.0] * dims,
        "spacing": [2.5, 0.8, 0.8][-dims:], "normalization_schemes": ["CTNormalization"] * n_channels,
        "use_mask_for_norm": [False] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch(cls, dims), "batch_dice": False,
    }
    cfg.update(over)
    return cfg


def plans_for(configs: dict, n_channels: int = 1) -> dict:
    """A plans.json holding `configs`, with CT intensity properties for each channel."""
    props = {str(c): CT_PROPS["0"] for c in range(n_channels)}
    return {"dataset_name": "Dataset042_Test", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [2.5, 0.8, 0.8], "original_median_shape_after_transp": [20, 20, 20],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [2, 0, 1], "transpose_backward": [1, 2, 0],
            "configurations": configs, "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": props}


def dataset_for(labels=None, channels=None, regions_class_order=None) -> dict:
    """A dataset.json (default: one CT channel, labels liver and tumor)."""
    d = {"channel_names": channels or {"0": "CT"}, "labels": labels or {"background": 0, "liver": 1, "tumor": 2},
         "numTraining": 10, "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        d["regions_class_order"] = regions_class_order
    return d


def network_for(plans: dict, dataset: dict, config_name: str, seed: int, arch_override: dict | None = None):
    """The network nnU-Net would build for these plans (deep supervision on, as during training)."""
    cfg = resolve_configuration(plans, config_name)
    a = arch_override or cfg["architecture"]
    labels = parse_labels(dataset)
    spec_kwargs = copy.deepcopy(a["arch_kwargs"])
    cls_name = a["network_class_name"].rsplit(".", 1)[1]
    spec = NetworkSpec(cls_name, {**spec_kwargs, "input_channels": len(dataset["channel_names"]),
                                  "num_classes": labels.heads, "deep_supervision": True})
    torch.manual_seed(seed)
    return spec.build()


def nnunet_checkpoint(net, plans: dict, dataset: dict, config_name: str, fold, trainer: str = "nnUNetTrainer",
                      mirror=(0, 1, 2)) -> dict:
    """The dict nnU-Net saves as a fold's checkpoint for `net` (numpy scalars and a torch.device included)."""
    params = list(net.parameters())
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params[:3])},
                            "param_groups": [{"lr": 0.001, "momentum": 0.99, "dampening": 0, "weight_decay": 3e-05,
                                              "nesterov": True, "params": list(range(len(params)))}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float32(0.51), np.float32(0.62)], "ema_fg_dice": [np.float64(0.5)] * 2,
                    "dice_per_class_or_region": [[np.float32(0.4), np.float32(0.6)]] * 2,
                    "train_losses": [np.float32(-0.3)] * 2, "val_losses": [np.float32(-0.2)] * 2,
                    "lrs": [0.01, 0.005], "epoch_start_timestamps": [1.0, 2.0], "epoch_end_timestamps": [1.5, 2.5]},
        "_best_ema": np.float64(0.55),
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": config_name, "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": None if mirror is None else tuple(mirror),
    }


def write_model(parent: Path, *, config_name: str = "3d_fullres", dims: int = 3, cls: str = "PlainConvUNet",
                folds=(0, 1), trainer: str = "nnUNetTrainer", dataset: dict | None = None, plans: dict | None = None,
                checkpoint: str = "checkpoint_final.pth", mirror=(0, 1, 2), folder_trainer: str | None = None,
                ) -> tuple[Path, dict]:
    """An nnU-Net results folder ``parent/<trainer>__nnUNetPlans__<config>/``; returns it and the fold networks."""
    dataset = dataset or dataset_for()
    n_channels = len(dataset["channel_names"])
    plans = plans or plans_for({config_name: configuration(dims, cls, n_channels)}, n_channels)
    folder = parent / f"{folder_trainer or trainer}__nnUNetPlans__{config_name}"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset_fingerprint.json").write_text("{}")
    nets = {}
    for i, fold in enumerate(folds):
        net = network_for(plans, dataset, config_name, seed=100 + i)
        (folder / f"fold_{fold}").mkdir()
        torch.save(nnunet_checkpoint(net, plans, dataset, config_name, fold, trainer, mirror),
                   folder / f"fold_{fold}" / checkpoint)
        (folder / f"fold_{fold}" / "debug.json").write_text("{}")
        nets[str(fold)] = net.eval()
    return folder, nets


def zip_folder(folder: Path, zip_path: Path, base: Path) -> Path:
    """Zip everything under `folder`, member names relative to `base`."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(base).as_posix())
    return zip_path


def snapshot(path: Path) -> dict:
    """Sizes and modification times (and a zip's hash) to check that reading left the source as it was."""
    if path.is_file():
        st = path.stat()
        return {path.name: (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def same_output(net_a, net_b, shape) -> None:
    """Assert both networks give identical output (the first deep-supervision head of `net_a`) on one input."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        a, b = net_a(x), net_b(x)
    a = a[0] if isinstance(a, (list, tuple)) else a
    assert torch.equal(a, b)
