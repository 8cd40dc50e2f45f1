"""Tiny, valid model packages for tests: a manifest builder and a package with real (random) network weights."""

from __future__ import annotations

import copy
from pathlib import Path

TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^78961009^Spleen~^^~Anatomic codes - DICOM master list~^^~^^"
)
TINY_NETWORK = {"variant": "unet", "spatial_dims": 2, "in_channels": 1, "num_classes": 3, "features": [4, 4, 8, 8, 16]}


def tiny_manifest(name: str = "tiny-ct", **overrides) -> dict:
    """A valid 2D CT manifest for `TINY_NETWORK`; top-level keys can be overridden."""
    manifest = {
        "format": "unetseg-model/1",
        "name": name,
        "version": "1.0.0",
        "description": "A tiny test model.",
        "modality": "CT",
        "variant": "unet",
        "spatial_dims": 2,
        "network": copy.deepcopy(TINY_NETWORK),
        "inputs": [{"name": "CT"}],
        "labels": [
            {"value": 1, "name": "spleen", "color": [0.6, 0.2, 0.2], "terminology": TERMINOLOGY},
            {"value": 2, "name": "liver", "color": [0.8, 0.5, 0.3]},
        ],
        "preprocessing": {
            "orientation": "RAS",
            "target_spacing": [1.0, 1.0, 1.0],
            "normalization": [{"scheme": "ct", "mean": 40.0, "std": 80.0}],
            "hu_clip": [-200.0, 300.0],
            "crop": "body",
            "slice_wise": True,
        },
        "inference": {"patch_size": [32, 32], "overlap": 0.5, "mirror_axes": [0, 1]},
        "provenance": {"training_data": "phantoms", "licence": "CC0", "cases": 2, "metrics": {"dice": 0.9}},
    }
    manifest.update(copy.deepcopy(overrides))
    return manifest


def tiny_state_dict(network: dict | None = None, seed: int = 0) -> dict:
    """The state dict of a freshly built network (real factory), deterministic by seed."""
    import torch

    from unetseg.networks.factory import build_network

    torch.manual_seed(seed)
    return build_network(network or TINY_NETWORK).state_dict()


def write_tiny_package(folder: Path, name: str = "tiny-ct", seed: int = 0, **overrides):
    """Save a tiny package with real weights into ``folder``; returns the ModelPackage."""
    from unetseg.models.package import save_package

    manifest = tiny_manifest(name, **overrides)
    return save_package(folder, manifest, tiny_state_dict(manifest["network"], seed))
