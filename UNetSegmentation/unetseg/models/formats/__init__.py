"""Readers for model formats made by other tools, turned into plain descriptions this project converts to packages.

- ``nnunet``: nnU-Net v2 trained-model folders and zips (``<trainer>__<plans>__<configuration>/``), read from
  ``dataset.json`` + ``plans.json`` + ``fold_*/checkpoint_*.pth`` without importing ``nnunetv2``.
- ``nnunet_plans``: what the plans and ``dataset.json`` say (network, labels, preprocessing), as dataclasses.
- ``checkpoint``: loading foreign PyTorch checkpoints with ``torch.load(weights_only=True)`` and an explicit,
  minimal allow-list of globals; state-dict clean-up (wrapper prefixes, aliased tensors).
- ``monai_*``: MONAI bundles.

Hostile zips (absolute paths, ``..``, symbolic links, zip bombs) are refused by `unetseg.models.archive` before
anything is read. Nothing here executes code from the files it reads: no full unpickling, no ``pydoc.locate`` of
names taken from a plans file (classes are looked up in fixed allow-lists).
"""

from __future__ import annotations

from unetseg.models.manifest import PackageError


class FormatError(PackageError):
    """A model (foreign, or a zip of any kind) that cannot be imported; the message says what is wrong and what
    to do."""


__all__ = ["FormatError"]
