"""Stand-in for `python -m unetseg predict …` in the Slicer-logic tests (no network involved).

It speaks the real JSON-lines protocol and file contract: reads the `-i` NRRD files, writes `-o` on the first
input's grid. `FAKE_MODE` picks the behaviour: "echo" writes the label array saved in `FAKE_LABELS` (.npy),
"sleep" reports progress then waits to be cancelled, "fail" reports an error and exits 1, "wrong-grid"
writes a label map with another spacing. `FAKE_RECORD` (optional) receives the inputs' mean intensities;
`FAKE_WARNINGS` (optional, "|"-separated) become the result's messages.
`train` reports two epochs and writes a stand-in model folder.
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


def train(argv: list[str]) -> int:
    """`train DATASET … --out DIR`: two epochs of numbers, then a model folder (or an error in "fail" mode)."""
    dataset, out = argv[1], argv[argv.index("--out") + 1]
    if os.environ.get("FAKE_RECORD"):
        with open(os.environ["FAKE_RECORD"], "w") as f:
            json.dump({"argv": argv, "dataset": sorted(os.listdir(dataset))}, f)
    for epoch, (loss, dice) in enumerate([(1.2, 0.3), (0.7, 0.6)]):
        _emit(type="progress", stage="train", fraction=(epoch + 1) / 2, epoch=epoch, iteration=10 * epoch, loss=loss)
        _emit(type="progress", stage="validate", fraction=(epoch + 1) / 2, epoch=epoch, val_dice=dice)
    if os.environ.get("FAKE_MODE") == "fail":
        _emit(type="error", stage="train", message="fake failure: dataset has no labels")
        return 1
    os.makedirs(out)
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump({"name": argv[argv.index("--name") + 1]}, f)
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "train":
        return train(argv)
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
    warnings = os.environ.get("FAKE_WARNINGS")
    _emit(type="result", output=output, messages=warnings.split("|") if warnings else [])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
