"""Parity with MONAI: an imported bundle segments an unseen image as `python -m monai.bundle run` does.

The bundle is Testing/fixtures/monai/tiny_trained_bundle (benchmarks/train_monai_bundle_fixture.py: the spleen
bundle's config with a 4-8-16 UNet trained on CT phantoms). The unseen image is a phantom of another size,
spacing, organ layout and a rotated direction (so Orientation, Spacing and Invertd all act). MONAI's own run is the
reference; `unetseg models import`, `unetseg predict` (torch), `unetseg export-onnx` and `unetseg predict --backend
onnx` (also with torch and MONAI blocked) and `--backend openvino` must give per-label Dice >= 0.99 against it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from unetseg import cli
from unetseg.jobs.runner import EXIT_OK

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "Testing" / "fixtures" / "monai" / "tiny_trained_bundle"
sys.path.insert(0, str(REPO / "benchmarks"))
from make_monai_bundle_fixture import reference_command, write_ct_phantom  # noqa: E402

NAME = "tiny-trained-bundle"
OPENVINO = pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                            reason="needs openvino (a test extra)"))
LABELS = (1, 2)
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about the z axis


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """MONAI's reference on an unseen phantom, and the bundle imported into a fresh user model folder."""
    for module in ("fire", "ignite", "nibabel"):
        pytest.importorskip(module, reason="`python -m monai.bundle run` needs fire, pytorch-ignite and nibabel")
    import nibabel as nib

    root = tmp_path_factory.mktemp("monai_parity")
    bundle = shutil.copytree(FIXTURE, root / NAME)
    image = write_ct_phantom(
        root / "data" / "imagesTs" / "case_0000.nii.gz", (52, 44, 28), (0.8, 0.85, 2.2), 11, ROTATED, 0.1
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(reference_command(bundle, root / "data", root / "reference"), check=True, env=env,
                   capture_output=True, timeout=300)  # fmt: skip
    reference = nib.load(root / "reference" / "case_0000" / "case_0000_trans.nii.gz").get_fdata()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNETSEG_MODELS_DIR", str(root / "models"))
        assert cli.main(["models", "import", str(bundle)]) == EXIT_OK
        yield {"root": root, "image": image, "reference": reference, "models": root / "models"}


def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return nib.load(path).get_fdata()


@pytest.mark.slow
def test_the_reference_finds_both_organs(run):
    counts = {v: int((run["reference"] == v).sum()) for v in LABELS}
    assert all(n > 50 for n in counts.values()), counts  # a trained network, not an empty or lopsided map


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx", OPENVINO])
def test_unetseg_predict_matches_monai_bundle_run(run, backend):
    out = run["root"] / f"ours_{backend}.nii.gz"
    if backend != "torch" and not (run["models"] / NAME / "model.onnx").is_file():
        assert cli.main(["export-onnx", NAME]) == EXIT_OK
    args = ["predict", "-i", str(run["image"]), "-m", NAME, "-o", str(out), "--device", "cpu", "--backend", backend]
    assert cli.main(args) == EXIT_OK
    ours = _labels(out)
    assert ours.shape == run["reference"].shape
    scores = {v: dice(ours, run["reference"], v) for v in LABELS}
    print(f"Dice per label, {backend} vs monai.bundle run: {scores}")
    assert all(s >= 0.99 for s in scores.values()), scores


@pytest.mark.slow
def test_the_onnx_path_matches_without_torch(run):
    """After the export, torch and MONAI blocked: the imported bundle still runs, with the same labels."""
    if not (run["models"] / NAME / "model.onnx").is_file():
        assert cli.main(["export-onnx", NAME]) == EXIT_OK
    out = run["root"] / "ours_no_torch.nii.gz"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed: importing them fails
        from unetseg import cli
        code = cli.main(["predict", "-i", {str(run["image"])!r}, "-m", {NAME!r}, "-o", {str(out)!r},
                         "--device", "cpu"])
        assert code == 0 and sys.modules["torch"] is None
        """
    )
    env = {**os.environ, "UNETSEG_MODELS_DIR": str(run["models"])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", cwd=REPO,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    scores = {v: dice(_labels(out), run["reference"], v) for v in LABELS}
    assert all(s >= 0.99 for s in scores.values()), scores
