"""Stand-in for `python -m UNetSegmentationLib predict …` in the Slicer-logic tests (no network involved).

It speaks the real JSON-lines protocol and file contract: reads the `-i` NRRD files, writes `-o` on the first
input's grid. `FAKE_MODE` picks the behaviour: "echo" writes the label array saved in `FAKE_LABELS` (.npy),
"sleep" reports progress then waits to be cancelled, "fail" reports an error and exits 1, "wrong-grid"
writes a label map with another spacing. `FAKE_RECORD` (optional) receives the inputs' mean intensities.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import SimpleITK as sitk


def _emit(**event) -> None:
    print(json.dumps(event), flush=True)


def main(argv: list[str]) -> int:
    inputs = [argv[i + 1] for i, a in enumerate(argv) if a == "-i"]
    output = argv[argv.index("-o") + 1]
    images = [sitk.ReadImage(path) for path in inputs]
    if os.environ.get("FAKE_RECORD"):
        means = [float(sitk.GetArrayViewFromImage(img).mean()) for img in images]
        with open(os.environ["FAKE_RECORD"], "w") as f:
            json.dump({"means": means, "argv": argv}, f)
    mode = os.environ.get("FAKE_MODE", "echo")
    _emit(type="progress", stage="inference", fraction=0.5, message=f"fake {mode}")
    if mode == "fail":
        _emit(type="error", stage="inference", message="fake failure: weights do not fit the network")
        return 1
    if mode == "sleep":
        time.sleep(600)
        return 0
    labels = sitk.GetImageFromArray(np.load(os.environ["FAKE_LABELS"]))
    labels.CopyInformation(images[0])
    if mode == "wrong-grid":
        labels.SetSpacing([s * 2 for s in labels.GetSpacing()])
    sitk.WriteImage(labels, output)
    _emit(type="progress", stage="inference", fraction=1.0, message="done")
    _emit(type="result", output=output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
