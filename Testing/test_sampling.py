"""sampling.patch_loader: worker processes are forked on Linux and give the same batches as the main process."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

import numpy as np
import pytest
import torch

from unetseg.training.cache import PreprocessedCase
from unetseg.training.sampling import SamplingConfig, patch_loader, worker_context


def _batches(num_workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three batches from a small two-class case (run in a child process by the test)."""
    rng = np.random.default_rng(0)
    label = np.zeros((1, 40, 36), dtype=np.uint8)
    label[0, 10:20, 8:30] = 1
    case = PreprocessedCase("c", rng.normal(size=(1, 1, 40, 36)).astype(np.float32), label, (1.0, 1.0, 1.0),
                            {1: np.argwhere(label == 1).astype(np.int32)}, {})
    torch.set_num_threads(1)
    batches = patch_loader([case], SamplingConfig((32, 32), 2, seed=3), num_workers=num_workers)
    return [tuple(t.numpy() for t in next(batches)) for _ in range(3)]


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_workers_are_forked_even_under_a_forkserver_parent():
    """A process started by forkserver (the variant benchmark's runs) would otherwise start its workers the same
    way: re-importing torch and MONAI in each, tens of seconds before the first batch."""
    assert worker_context().get_start_method() == "fork"
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        with_workers = pool.submit(_batches, 2).result(timeout=120)
    for (image, label), (ref_image, ref_label) in zip(with_workers, _batches(0), strict=True):
        np.testing.assert_array_equal(image, ref_image)  # batches depend on the index, not on the worker
        np.testing.assert_array_equal(label, ref_label)
