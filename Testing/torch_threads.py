"""An autouse fixture for torch-heavy test modules: run torch on one thread while each test runs.

Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP threads spin against other
processes (measured: a tiny 2D U-Net step took 0.5 s on two threads under load, 0.03 s on one).
Import it into a test module (``from torch_threads import one_thread``) to apply it to that module.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Set torch to one thread for the test, restoring the previous count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
