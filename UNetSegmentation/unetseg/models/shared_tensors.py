"""Tensors a state dict holds under several names, found by their shared storage: stored once, rebuilt on load.

MONAI's DynUNet (the ``nnunet`` variant) reaches every encoder and decoder block a second time through
``skip_layers``, so its ``state_dict()`` lists each tensor twice; written as is, ``weights.safetensors`` would be
twice the size of the parameters. `split_aliases` keeps the first name of each group of names that view the very
same memory (same storage, offset, shape, strides and dtype: the same values by construction) and records the
others in the file's metadata under `ALIASES_KEY`; `aliases_from_metadata` reads them back, and the loader binds
each alias to its stored tensor. A file without the entry (older packages) has nothing to rebuild.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The safetensors metadata entry (a JSON object: alias name -> stored name).
ALIASES_KEY = "unetseg.aliases"


def _view_key(tensor: torch.Tensor) -> tuple:
    """What makes two tensors one and the same view of memory."""
    return (tensor.device, tensor.dtype, tensor.data_ptr(), tuple(tensor.shape), tensor.stride())


def split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(unique, aliases)``: each tensor once under its first name, and ``aliases[name] = stored name``.

    Only names viewing identical memory are merged: two tensors that merely hold equal values stay separate, and
    an empty tensor (no storage to share) is always kept under its own name.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = _view_key(tensor) if tensor.numel() else None
        if key is not None and key in first:
            aliases[name] = first[key]
            continue
        if key is not None:
            first[key] = name
        unique[name] = tensor
    return unique, aliases


def aliases_metadata(aliases: dict[str, str]) -> dict[str, str]:
    """The safetensors metadata entries recording ``aliases`` (none when there are none)."""
    return {ALIASES_KEY: json.dumps(aliases, sort_keys=True)} if aliases else {}


def aliases_from_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """The aliases a file's metadata records (empty for files written before aliases were stored once)."""
    text = (metadata or {}).get(ALIASES_KEY)
    if not text:
        return {}
    aliases = json.loads(text)
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(f"The weights' metadata entry {ALIASES_KEY} is not a mapping of names to names.")
    return aliases
