"""Distributed training: torchrun with two CPU processes (gloo) gives the single-process model package."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch_threads import one_thread  # noqa: F401  (autouse: torch on one thread)

from unetseg.models.package import load_package
from unetseg.models.weights import load_state_dict
from unetseg.phantoms import MRI_LABELS, mri_phantom
from unetseg.training.datasets import write_nnunet_dataset
from unetseg.training.sampling import rank_share
from unetseg.training.trainer import train

ARGS = {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 2, "width": 0.25, "val_fraction": 0.0, "seed": 5}


@pytest.fixture(scope="module")
def mri_dataset(tmp_path_factory):
    """Three tiny 3D MRI phantoms (one sequence) at 2 mm."""
    folder = tmp_path_factory.mktemp("mri") / "dataset"
    cases = []
    for seed in range(3):
        images, label = mri_phantom(shape=(16, 32, 32), spacing=(2.0, 2.0, 2.0), sequences=("T1",), seed=seed)
        cases.append((images, label))
    write_nnunet_dataset(folder, cases, ["T1"], {lab.value: lab.name for lab in MRI_LABELS}, modality="MR")
    return folder


def _layout(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _cli_args(options: dict) -> list[str]:
    flags = {"epochs": "--epochs", "iterations_per_epoch": "--iterations-per-epoch", "batch_size": "--batch-size",
             "width": "--width", "val_fraction": "--val-fraction", "seed": "--seed"}
    return [item for key, value in options.items() for item in (flags[key], str(value))]


@pytest.mark.slow
def test_two_gloo_processes_produce_the_single_process_package(mri_dataset, tmp_path):
    single = train(mri_dataset, tmp_path / "single", device="cpu", cache_dir=tmp_path / "cache", **ARGS)

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "unetseg", "train", str(mri_dataset), "--out", str(out), "--device", "cpu",
               "--cache-dir", str(tmp_path / "cache"), "--progress", "json", *_cli_args(ARGS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Rank 0 alone logs: one result event, epoch events once.
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["type"] for e in events].count("result") == 1
    assert [e.get("epoch") for e in events if e.get("stage") == "epoch"] == [1]

    ddp = load_package(out)
    assert _layout(out) == _layout(single.path)
    assert ddp.network_config == single.network_config and ddp.labels == single.labels
    assert ddp.provenance["iterations"] == single.provenance["iterations"] == 2
    # Each rank computes its half of the same global batches, and DDP averages the gradients: the weights
    # match the single-process run up to floating-point summation order.
    a, b = load_state_dict(single), load_state_dict(ddp)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_rank_share_splits_every_global_batch():
    assert [list(rank_share(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(rank_share(4, r, 4)) for r in range(4)] == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="batch size"):
        rank_share(1, 0, 2)
