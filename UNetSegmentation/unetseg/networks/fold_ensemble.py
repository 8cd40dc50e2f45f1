"""Several trained copies of one network (the folds of a cross-validation) run as one module.

`FoldEnsemble` runs every member on each window and stacks their logits along the channels, fold after fold, so
the predictor, TTA and the ONNX export see one ordinary network while the caller still averages the folds as the
tool that trained them does (nnU-Net stitches each fold's windows in fp16, then averages the folds' logits).
Its state dict prefixes each member's keys with ``fold_<name>.``.
"""

from __future__ import annotations

import torch
from torch import nn


class FoldEnsemble(nn.ModuleDict):
    """``forward(x)`` is ``(N, folds * heads, *spatial)``: member ``f``'s logits in channels ``f*heads … ``."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        if not members:
            raise ValueError("A fold ensemble needs at least one network.")
        super().__init__({f"fold_{name}": member for name, member in members.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [member(x) for member in self.values()]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
