"""Several trained copies of one network (the folds of a cross-validation) run as one module.

nnU-Net ensembles its folds by averaging their logits (``nnUNetPredictor.predict_logits_from_preprocessed_data``);
`FoldEnsemble` does the same per window, so the predictor, TTA and the ONNX export see one ordinary network.
Its state dict prefixes each member's keys with ``fold_<name>.``.
"""

from __future__ import annotations

import torch
from torch import nn


class FoldEnsemble(nn.ModuleDict):
    """``forward(x)`` is the mean of the members' outputs (logits ``(N, heads, *spatial)``)."""

    def __init__(self, members: dict[str, nn.Module]) -> None:
        if not members:
            raise ValueError("A fold ensemble needs at least one network.")
        super().__init__({f"fold_{name}": member for name, member in members.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.values():
            out = member(x)
            total = out if total is None else total + out
        return total / len(self) if len(self) > 1 else total
