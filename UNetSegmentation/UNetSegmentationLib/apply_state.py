"""What the Apply button and the line beside it say: whether a run can start, how it runs, and what is missing.

Plain Python, no Qt: the widget shows it, and headless tests check it. Missing packages never disable Apply:
pressing it installs exactly what the chosen model needs (after one confirmation), so a stock Slicer can run a
bundled model at once through ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from UNetSegmentationLib.dependencies import ONNX

_HOW = {ONNX: "ONNX Runtime on the CPU, without PyTorch"}


@dataclass(frozen=True)
class ApplyState:
    """The Apply button's text, enabled state and tooltip; the status line; whether Install is shown."""

    enabled: bool
    text: str
    toolTip: str
    status: str
    installVisible: bool


def applyState(
    segmenting: bool, modelChosen: bool, inputsChosen: bool, backend: str, missing: Sequence[str]
) -> ApplyState:
    """The Apply row for the panel's situation; `backend` and `missing` say how the chosen model would run."""
    if segmenting:
        return ApplyState(True, "Cancel", "Stop the running segmentation", "", False)
    how = _HOW.get(backend, "PyTorch")
    if missing:
        names = ", ".join(missing)
        status = (
            f"Missing to run this model: {names}. Apply installs it first (asks once), or press Install packages. "
            f"The model then runs with {how}."
        )
    else:
        status = f"Runs with {how}." if modelChosen else ""
    if not (modelChosen and inputsChosen):
        return ApplyState(False, "Apply", "Select the input volume(s) and a model", status, bool(missing))
    toolTip = (
        f"Install {', '.join(missing)} (asks once), then segment the input in the background"
        if missing else "Segment the input in the background; press again to cancel"
    )
    return ApplyState(True, "Apply", toolTip, status, bool(missing))
