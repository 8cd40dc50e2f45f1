"""Opening foreign PyTorch checkpoints without running code from them, and cleaning up their state dicts.

A checkpoint is a pickle. ``torch.load(weights_only=True)`` only rebuilds tensors, plain containers and the globals
that are allow-listed; everything else is refused. nnU-Net's ``checkpoint_final.pth`` also carries training logs
holding numpy scalars, so plain ``weights_only=True`` refuses it. :func:`load_checkpoint` allows exactly what those
need and nothing else:

- the numpy scalar reconstructor, under its numpy 2 name ``numpy._core.multiarray.scalar`` and its numpy 1 name
  ``numpy.core.multiarray.scalar`` (a file saved under either loads under either);
- ``numpy.dtype``, and the dtype classes of numpy's boolean, integer and float scalar types (numpy >= 1.25 rebuilds
  a dtype by calling ``__setstate__`` on an instance of e.g. ``numpy.dtypes.Float32DType``).

These build inert values (a number, a dtype); none imports a module or calls a function with file-supplied
callables. ``torch.device`` (nnU-Net stores the training device) is in torch's own default allow-list.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from unetseg.models.formats import FormatError

if TYPE_CHECKING:
    import torch

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
"""Prefixes a whole state dict may carry when it was saved from a wrapped model."""

_SCALAR_NAMES = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
_DTYPE_CHARS = "?bBhHiIlLqQefd"  # bool, (u)int8..64, float16/32/64


def _numpy_scalar_reconstructor():
    import numpy  # noqa: F401  (makes sure numpy itself is importable first)

    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module).scalar
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy's scalar reconstructor was not found")  # pragma: no cover - every numpy has one


def numpy_safe_globals() -> list:
    """The allow-list :func:`load_checkpoint` passes to ``torch.serialization.safe_globals`` (see the module doc)."""
    import numpy as np

    scalar = _numpy_scalar_reconstructor()
    allowed: list = [(scalar, name) for name in _SCALAR_NAMES]
    allowed.append(np.dtype)
    allowed.extend(sorted({type(np.dtype(c)) for c in _DTYPE_CHARS}, key=lambda t: t.__name__))
    return allowed


def allowed_global_names() -> set[str]:
    """The dotted names of every global :func:`load_checkpoint` accepts beyond torch's defaults."""
    names = set(_SCALAR_NAMES) | {"numpy.dtype"}
    for entry in numpy_safe_globals():
        if isinstance(entry, type):
            names.add(f"{entry.__module__}.{entry.__name__}")
    return names


def load_checkpoint(source: str | os.PathLike | BinaryIO, what: str | None = None) -> Any:
    """Load a checkpoint with ``weights_only=True`` plus the numpy allow-list; refuse anything else.

    ``what`` names the file in error messages (default: the path). Raises :class:`FormatError` when the pickle
    needs a global outside the allow-lists (the message names it) or the file is not a PyTorch checkpoint.
    """
    import torch

    what = what or str(source)
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = _unsafe_globals(source)
        reason = _weights_only_reason(str(e))
        if not needed and not any(w in reason for w in ("GLOBAL", "global", "Can only build", "allowlist")):
            raise FormatError(f"{what} is not a readable PyTorch checkpoint ({reason}).") from e
        detail = ("it needs " + ", ".join(needed[:5]) + (" …" if len(needed) > 5 else "")) if needed else reason
        raise FormatError(
            f"Refusing {what}: loading it would run code stored in the file ({detail}). Only tensors, plain "
            "containers and numpy scalars are accepted; re-save the weights from a trusted environment "
            "(torch.save(model.state_dict(), ...)) if you trust this file."
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError) as e:
        raise FormatError(f"{what} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from e


def _weights_only_reason(message: str) -> str:
    """The line of torch's weights-only error that says what was refused."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
        if "GLOBAL" in ln or ln.startswith(("Can only build", "Unsupported")):
            return ln
    return lines[-1] if lines else "unsupported content"


def _unsafe_globals(source: Any) -> list[str]:
    """Globals in a zip-format checkpoint that neither torch nor our allow-list accepts (best effort)."""
    import torch

    try:
        if hasattr(source, "seek"):
            source.seek(0)
            data = source.read()
            source.seek(0)
            source = io.BytesIO(data)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # legacy (non-zip) format or unreadable: the caller falls back to torch's message
        return []
    allowed = allowed_global_names()
    return [g for g in found if g not in allowed]


# ------------------------------------------------------------------------------------------ state dicts


def tensor_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """``obj`` as a ``{name: tensor}`` dict, or a :class:`FormatError` saying what it holds instead."""
    import torch

    if not isinstance(obj, dict) or not obj:
        raise FormatError(f"{what} holds no state dict (got {type(obj).__name__}).")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise FormatError(f"{what} is not a dict of tensors (e.g. entry {bad[0]!r}).")
    return dict(obj)


def unwrap_prefixes(state: dict) -> dict:
    """Drop a wrapper prefix that every key carries (a state dict saved from a DDP or torch.compile model)."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return unwrap_prefixes({k[len(prefix):]: v for k, v in state.items()})
    return state


def drop_aliases(state: dict, alias: str = "decoder.encoder.", target: str = "encoder.") -> tuple[dict, list[str]]:
    """Remove keys ``alias + rest`` that repeat ``target + rest`` (the same tensor under two names).

    dynamic-network-architectures' U-Net decoders keep a reference to the encoder, so their state dicts list every
    encoder tensor twice. Returns the reduced dict and the dropped keys; a key whose "copy" differs from its target
    is corrupt and refused.
    """
    import torch

    out, dropped = {}, []
    for key, value in state.items():
        if key.startswith(alias):
            twin = target + key[len(alias):]
            if twin in state:
                other = state[twin]
                if other.shape != value.shape or other.dtype != value.dtype or not torch.equal(other, value):
                    raise FormatError(
                        f"The checkpoint holds different tensors under {key} and {twin}, which the network shares; "
                        "the file is corrupt or was edited."
                    )
                dropped.append(key)
                continue
        out[key] = value
    return out, dropped


def restore_aliases(state: dict, expected_keys: Iterable[str], alias: str = "decoder.encoder.",
                    target: str = "encoder.") -> dict:
    """Fill the alias keys ``expected_keys`` asks for from their targets (the inverse of :func:`drop_aliases`)."""
    out = dict(state)
    for key in expected_keys:
        if key not in out and key.startswith(alias) and target + key[len(alias):] in out:
            out[key] = out[target + key[len(alias):]]
    return out


def fit_problems(expected: dict, given: dict, shown: int = 5) -> list[str]:
    """Differences between two ``{name: tensor-or-shape}`` dicts (missing, unexpected, shape), for messages."""
    def shape(v):
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k}: {shape(given[k])} in the checkpoint, {shape(expected[k])} in the network"
             for k in expected if k in given and shape(expected[k]) != shape(given[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing from the checkpoint (e.g. {', '.join(missing[:shown])})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the network does not have (e.g. {', '.join(unexpected[:shown])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:shown])})")
    return problems


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
