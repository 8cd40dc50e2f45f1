"""Write tiny MONAI bundles (and a CT phantom) shaped like the model zoo's ``spleen_ct_segmentation``.

The bundles are what `unetseg.models.formats.monai_bundle` imports and what ``python -m monai.bundle run`` runs as
the parity reference: ``configs/metadata.json`` (2 labels, CT), ``configs/inference.json`` (the spleen bundle's
config with a tiny network: imports, ``$`` expressions, Orientationd/Spacingd/ScaleIntensityRanged,
SlidingWindowInferer, softmax → Invertd → argmax → SaveImaged) and ``models/model.pt`` (seeded random weights).

    python benchmarks/make_monai_bundle_fixture.py OUT [--network unet|dynunet|basicunet|attentionunet] [--run]

writes ``OUT/bundle/`` and ``OUT/data/imagesTs/case_0000.nii.gz``; with ``--run`` it also runs the reference
(`reference_command`) and lists what it wrote under ``OUT/reference/``. The tests import `write_bundle`.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

NETWORK_DEFS: dict[str, dict[str, Any]] = {
    "unet": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    },
    "dynunet": {
        "_target_": "DynUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "filters": [4, 8, 16],
        "norm_name": "instance",
        "res_block": True,
    },
    "basicunet": {
        "_target_": "BasicUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "features": [4, 4, 8, 8, 16, 4],
    },
    "attentionunet": {
        "_target_": "AttentionUnet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8, 16],
        "strides": [2, 2],
    },
}

LABELS = {"0": "background", "1": "liver", "2": "spleen"}

INFERENCE: dict[str, Any] = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "output_ext": ".nii.gz",
    "output_dtype": "$numpy.float32",
    "output_postfix": "trans",
    "separate_folder": True,
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": NETWORK_DEFS["unet"],
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0,
                "b_max": 1,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": [32, 32, 32],
        "sw_batch_size": 4,
        "overlap": 0.5,
        "mode": "gaussian",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_ext": "@output_ext",
                "output_dtype": "@output_dtype",
                "output_postfix": "@output_postfix",
                "separate_folder": "@separate_folder",
            },
        ],
    },
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": False,
    },
    "checkpointloader": {
        "_target_": "CheckpointLoader",
        "load_path": "$@bundle_root + '/models/model.pt'",
        "load_dict": {"model": "@network"},
    },
    "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}


def metadata(num_labels: int = 2) -> dict:
    """The spleen bundle's metadata.json, for a CT input and background + ``num_labels`` outputs."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "task": "Tiny abdominal CT segmentation (test fixture)",
        "description": "A tiny randomly initialised U-Net in a MONAI bundle, for import and parity tests",
        "authors": "UNetSegmentation tests",
        "copyright": "Copyright (c) UNetSegmentation developers",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [32, 32, 32],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": num_labels + 1,
                    "spatial_shape": [32, 32, 32],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {k: v for k, v in LABELS.items() if int(k) <= num_labels},
                }
            },
        },
    }


def inference_config(network: str = "unet") -> dict:
    config = copy.deepcopy(INFERENCE)
    config["network_def"] = copy.deepcopy(NETWORK_DEFS[network])
    return config


def write_bundle(
    folder: Path,
    network: str = "unet",
    seed: int = 0,
    config: dict | None = None,
    meta: dict | None = None,
    weights: bool = True,
    weights_for: dict | None = None,
) -> Path:
    """Write a bundle into ``folder``: metadata, inference config and (unless ``weights=False``) a seeded
    state dict of the network in ``models/model.pt``, saved as ``torch.save(net.state_dict())``.

    ``weights_for`` is the plain network_def the weights are made for, when the config's uses references."""
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    config = inference_config(network) if config is None else config
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    meta = metadata() if meta is None else meta
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")
    if weights:
        import torch
        from monai.networks import nets

        torch.manual_seed(seed)
        network_def = weights_for or config["network_def"]
        args = {k: v for k, v in network_def.items() if not k.startswith("_")}
        net = getattr(nets, network_def["_target_"])(**args)
        with torch.no_grad():  # non-trivial norm statistics, so that eval mode matters
            for name, buffer in net.named_buffers():
                if name.endswith("running_var"):
                    buffer.uniform_(0.5, 2.0)
                elif name.endswith("running_mean"):
                    buffer.uniform_(-0.2, 0.2)
        (folder / "models").mkdir(exist_ok=True)
        torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def ct_phantom(shape_xyz=(48, 40, 24), seed: int = 0, jitter: float = 0.0):
    """HU (z, y, x, float32) and labels (1 liver-like at 120 HU, 2 spleen-like at 90 HU) of a small CT-like phantom:
    air, a 40 HU body and two brighter organs, noise of 10 HU. ``jitter`` moves and resizes the body and organs
    (relative units; 0 gives the fixed phantom)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    move = np.random.default_rng(seed + 10_000).uniform(-jitter, jitter, 7)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_xyz[::-1]), indexing="ij")
    hu = np.full(x.shape, -1000.0)
    labels = np.zeros(x.shape, dtype=np.uint8)
    hu[(x**2 + y**2) < 0.8 * (1 + move[0])] = 40.0
    liver = ((x - 0.3 - move[1]) ** 2 + (y - move[2]) ** 2 + z**2) < 0.12 * (1 + move[3])
    spleen = ((x + 0.35 - move[4]) ** 2 + (y - 0.2 - move[5]) ** 2 + z**2) < 0.08 * (1 + move[6])
    hu[liver], labels[liver] = 120.0, 1
    hu[spleen], labels[spleen] = 90.0, 2
    hu += rng.normal(0, 10, hu.shape)
    return hu.astype(np.float32), labels


def write_ct_phantom(
    path: Path, shape_xyz=(48, 40, 24), spacing=(0.9, 0.9, 2.5), seed: int = 0, direction=None, jitter: float = 0.0
) -> Path:
    """`ct_phantom` as a NIfTI file (identity direction unless ``direction``, 9 values, is given)."""
    import SimpleITK as sitk

    hu, _ = ct_phantom(shape_xyz, seed, jitter)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(tuple(float(s) for s in spacing))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def reference_command(bundle: Path, dataset_dir: Path, output_dir: Path) -> list[str]:
    """MONAI's own run of the bundle: every ``imagesTs/*.nii.gz`` of ``dataset_dir`` to
    ``output_dir/<case>/<case>_trans.nii.gz`` (the label map on the input's grid, float32)."""
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--meta_file",
        str(bundle / "configs" / "metadata.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--network", choices=sorted(NETWORK_DEFS), default="unet")
    parser.add_argument("--run", action="store_true", help="also run the reference `python -m monai.bundle run`")
    args = parser.parse_args(argv)
    bundle = write_bundle(args.out / "bundle", args.network)
    image = write_ct_phantom(args.out / "data" / "imagesTs" / "case_0000.nii.gz")
    print(f"bundle: {bundle}\nimage: {image}")
    command = reference_command(bundle, args.out / "data", args.out / "reference")
    print("reference: " + " ".join(command))
    if args.run:
        subprocess.run(command, check=True)
        for path in sorted((args.out / "reference").rglob("*")):
            if path.is_file():
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
