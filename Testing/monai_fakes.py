"""Tiny MONAI bundles for the MONAI bundle format tests, and the helpers those tests share.

The bundles are tiny versions of the model zoo's spleen_ct_segmentation written by
benchmarks/make_monai_bundle_fixture.py (its writers are re-exported here, so each test module needs no path
set-up): inference.json with imports, ``$`` expressions, Orientationd/Spacingd/ScaleIntensityRanged, a
SlidingWindowInferer and softmax → Invertd → argmax → SaveImaged.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from make_monai_bundle_fixture import (
    NETWORK_DEFS,
    inference_config,
    metadata,
    reference_command,
    write_bundle,
    write_ct_phantom,
)

__all__ = [
    "NETWORK_DEFS",
    "config_with",
    "metadata",
    "reference_command",
    "sha256",
    "write_bundle",
    "write_ct_phantom",
]

torch.set_num_threads(1)  # tiny networks: threads only spin against the other test processes


def sha256(path: Path) -> str:
    """The file's SHA-256, as the provenance records it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_with(network: str = "unet", **changes) -> dict:
    """The fixture bundle's inference.json for `network`, with top-level keys replaced by `changes`."""
    config = inference_config(network)
    config.update(copy.deepcopy(changes))
    return config
