"""A stock Slicer's first run, simulated: everything Slicer's Python does not ship is blocked, ONNX Runtime (which
the extension installs by itself) is not. The catalog lists the bundled models, the panel allows Apply with the
ONNX backend, and a bundled model segments its sample in the logic's child process, which is blocked the same way.

The blocking is a `sitecustomize` module on PYTHONPATH (``sys.modules[name] = None``, so importing fails as if
the package were absent); the logic's child process inherits PYTHONPATH and so runs under the same conditions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a stock Slicer's Python lacks among the packages this project may import (Slicer ships numpy, scipy,
# SimpleITK, requests, pydicom and little else); onnxruntime stays, as the extension installs it itself.
NOT_IN_SLICER = ("torch", "monai", "jsonschema", "safetensors", "slicerio", "onnx", "onnxscript", "highdicom",
                 "nibabel", "matplotlib")  # fmt: skip
BUNDLED = sorted(p.parent.name for p in (REPO / "UNetSegmentation" / "Resources" / "Models").glob("*/model.json"))

SITECUSTOMIZE = f"""
import json, os, sys
for _name in {NOT_IN_SLICER!r}:
    sys.modules[_name] = None  # importing it now fails, as in a Slicer that never installed it
with open(os.environ["STOCK_SLICER_LOG"], "a", encoding="utf-8") as _log:
    _log.write(json.dumps(sys.argv) + "\\n")
"""

SCRIPT = """
import sys
import numpy as np
import slicer
from conftest import _register_module_logic
from slicer_scene import add_volume, segment_mask

from unetseg.io import read_image, read_label_image
from unetseg.models import card
from unetseg.samples import load_samples, sample_path
from UNetSegmentationLib.apply_state import applyState
from UNetSegmentationLib.logic import UNetSegmentationLogic

scene = slicer.vtkMRMLScene()
app_logic = slicer.vtkSlicerApplicationLogic()
app_logic.SetMRMLScene(scene)
slicer.modules = _register_module_logic(slicer, app_logic, scene)
slicer.mrmlScene, slicer.app_logic = scene, app_logic

logic = UNetSegmentationLogic()
names = logic.availableModels()
plans = {name: logic.segmentationBackend(name) for name in names}
sample = next(s for s in load_samples() if s.get("model") == "ct-spleen")
package = logic.modelInfo("ct-spleen")
backend, missing = plans["ct-spleen"]
state = applyState(False, True, True, backend, missing)
volume = add_volume(read_image(sample_path(sample["images"][0])), sample["name"])
segmentation = logic.segment(volume, "ct-spleen", device="cpu", backend=backend)
reference = read_label_image(sample_path(sample["reference"])).image.array == 1
mask = segment_mask(segmentation, "spleen", volume)
dice = 2 * np.count_nonzero(mask & reference) / (mask.sum() + reference.sum())
print(json.dumps({
    "names": names, "plans": plans, "apply_enabled": state.enabled, "status": state.status,
    "heading": card.heading(package), "dice": dice, "card_dice": package.provenance["metrics"]["sample"]["mean_dice"],
    "blocked": [name for name in NOT_IN_SLICER if sys.modules.get(name, "absent") is not None],
}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED, reason="no bundled model")
def test_stock_slicer_lists_bundled_models_and_segments_with_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime", reason="the extension installs ONNX Runtime; the test needs it installed")
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    blocker = tmp_path / "stock"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    log = tmp_path / "processes.jsonl"
    paths = [str(blocker), str(REPO / "Testing"), str(REPO / "UNetSegmentation")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "STOCK_SLICER_LOG": str(log),
        "UNETSEG_MODELS_DIR": str(tmp_path / "no-user-models"),
        "TMPDIR": str(tmp_path),
    }
    script = f"NOT_IN_SLICER = {NOT_IN_SLICER!r}\nimport json\n" + textwrap.dedent(SCRIPT)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["blocked"] == [], "sitecustomize did not block the packages Slicer lacks"
    assert result["names"] == BUNDLED  # listing and validating the catalog needs nothing beyond Slicer
    assert all(plan == ["onnx", []] for plan in result["plans"].values()), result["plans"]
    assert result["apply_enabled"] and "ONNX Runtime" in result["status"]
    assert result["heading"] == "Spleen — CT, abdomen, U-Net"
    assert result["dice"] >= result["card_dice"] - 0.02
    runs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert any("predict" in argv and "onnx" in argv for argv in runs), "the child process was not blocked too"
