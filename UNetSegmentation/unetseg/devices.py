"""The one place a device name ("auto", "cuda", "mps", "cpu") becomes a torch device."""

from __future__ import annotations

import torch

from unetseg.vocabulary import DEVICES, check_choice


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; asking for an absent device is an error.

    ``local_rank`` picks the GPU of a distributed training process (torchrun's LOCAL_RANK).
    """
    check_choice("device", name, DEVICES)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was asked for but no CUDA GPU is available; use device 'auto' or 'cpu'.")
    if name == "mps" and not mps_available():
        raise ValueError("Device 'mps' was asked for but Apple MPS is not available; use device 'auto' or 'cpu'.")
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)


def mps_available() -> bool:
    """Whether this torch build has Apple's Metal backend and the machine can use it."""
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
