"""The install route that works today: Slicer given the module folder as an *Additional module path*.

Slicer then puts that folder on ``sys.path`` and nothing else: every file the module loads must be inside it.
The test copies the module folder alone to a temporary place and, in a fresh interpreter whose path starts
there, imports every module of the core and the Slicer side (the panel's, which need Qt, excepted), lists the catalog,
reads the samples, the UI, icon and requirements files, and segments a bundled sample from the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "UNetSegmentation"
# The panel's modules need the Slicer application (Qt, slicer.i18n), which slicer-core does not provide.
NEEDS_APP = {f"UNetSegmentationLib.{name}" for name in ("widget", "model_list", "run_monitor", "panel_state")}


@pytest.mark.slow
def test_the_module_folder_alone_holds_everything_the_module_loads(tmp_path):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    copy = tmp_path / "Extensions" / "UNetSegmentation"
    shutil.copytree(MODULE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        from pathlib import Path
        copy = Path({str(copy)!r})
        sys.path.insert(0, str(copy))
        import unetseg, UNetSegmentationLib
        for package in (unetseg, UNetSegmentationLib):
            assert Path(package.__file__).is_relative_to(copy), package.__file__
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if info.name not in {sorted(NEEDS_APP)!r} and not info.name.endswith("__main__"):
                    module = importlib.import_module(info.name)
                    assert Path(module.__file__).is_relative_to(copy), module.__file__
        from unetseg.models.catalog import Catalog
        from unetseg.samples import SAMPLE_DIR, load_samples
        from UNetSegmentationLib.dependencies import REQUIREMENTS_FILE
        from unetseg.evaluation.variant_figures import SHIPPED
        names = Catalog(user_dir=copy / "no-user-models").names()
        assert len(names) >= 5, names
        for sample in load_samples():
            for name in sample["images"]:
                assert (SAMPLE_DIR / name).is_file(), name
        for path in (REQUIREMENTS_FILE, SHIPPED, copy / "Resources" / "UI" / "UNetSegmentation.ui",
                     copy / "Resources" / "Icons" / "UNetSegmentation.png"):
            assert path.is_file() and path.is_relative_to(copy), path
        from unetseg.io import read_image
        from unetseg.inference.predictor import segment
        result = segment(read_image(SAMPLE_DIR / "spleen2_ct.nii.gz"), "ct-spleen", device="cpu", backend="onnx")
        assert result.image.array.any()
        print("ok", len(names))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
