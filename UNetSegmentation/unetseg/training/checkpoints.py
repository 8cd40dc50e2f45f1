"""Training checkpoints: everything a resumed run needs, written atomically, readable with ``weights_only``.

A checkpoint holds only tensors, numbers, strings, lists and dicts (no pickled objects): the network and
optimizer state dicts, the learning-rate schedule's position, the AMP scaler, torch's RNG states, the epoch
and iteration counters, the time spent and the history. ``torch.load(..., weights_only=True)`` reads it, so
a checkpoint from elsewhere cannot execute code. Written through `io.atomic_write`: a crash or a cancel
during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetseg.io import atomic_write

CHECKPOINT_FORMAT = "unetseg-checkpoint/1"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


@dataclass
class RunState:
    """Counters that a checkpoint carries across a resume."""

    epoch: int = 0
    iteration: int = 0
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    best_dice: float = -1.0
    history: list[dict] = field(default_factory=list)


def plain(value: Any) -> Any:
    """A JSON round trip of ``value`` (tuples become lists, numpy scalars numbers): safe for weights_only."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def rng_state() -> dict:
    """Torch's CPU (and CUDA, when present) random generator states as uint8 tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Set torch's generators back to a state saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` (see the module docstring) to ``path`` atomically; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by `save_checkpoint` onto the CPU, without executing code from the file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}: --resume continues a run in the same --out folder; "
            "start without --resume to train from scratch."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal or a damaged file: say which file and why
        raise ValueError(f"Cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a UNetSegmentation training checkpoint ({CHECKPOINT_FORMAT}).")
    return state
