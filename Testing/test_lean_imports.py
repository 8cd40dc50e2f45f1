"""`unetseg predict` loads MONAI without matplotlib; other code still gets matplotlib when it asks for it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "UNetSegmentation"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          encoding="utf-8", cwd=REPO, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_segmenting_a_bundled_sample_through_the_cli_never_imports_matplotlib(tmp_path):
    out = _run(f"""
        import sys
        from unetseg import cli
        from unetseg.samples import sample_path
        code = cli.main(["predict", "-i", str(sample_path("spleen2_ct.nii.gz")), "-m", "ct-spleen",
                         "-o", {str(tmp_path / "spleen.nii.gz")!r}, "--device", "cpu", "--backend", "torch"])
        assert code == 0, code
        print("monai" in sys.modules, "matplotlib" in sys.modules)
    """)
    assert out.split()[-2:] == ["True", "False"]  # MONAI ran (the torch backend), matplotlib never loaded
    assert (tmp_path / "spleen.nii.gz").is_file()


def test_matplotlib_is_refused_to_monai_only():
    out = _run("""
        import sys
        from unetseg.lean_imports import keep_matplotlib_out_of_monai
        keep_matplotlib_out_of_monai()
        keep_matplotlib_out_of_monai()  # once per process
        import monai.utils.jupyter_utils as jupyter
        print(jupyter.has_matplotlib, "matplotlib" in sys.modules)
        import matplotlib.pyplot  # the user's own import still works
        print("matplotlib" in sys.modules, sum(type(f).__name__ == "_MatplotlibHiddenFromMonai" for f in sys.meta_path))
    """)
    assert out.split() == ["False", "False", "True", "1"]
