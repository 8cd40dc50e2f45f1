"""Imported nnU-Net v2 models segment as ``nnUNetv2_predict`` does: per-label Dice >= 0.99 on unseen images.

The fixtures under ``fixtures/nnunet`` were made by ``benchmarks/make_nnunet_fixtures.py`` with the real nnunetv2
2.8.1 (tiny networks trained for a few iterations on synthetic data; ``manifest.json`` has the commands): a 3d_fullres
CT model with two folds (anisotropic, transposed), a 2d CT model (as ``nnUNetv2_export_model_to_zip`` zipped it), a
two-channel masked z-score MR model with a residual encoder, and a region-based model trained on ``fold_all``; the
references are ``nnUNetv2_predict``'s segmentations of three unseen images each, with and without TTA. Every model
is imported, run with torch and with its ONNX export, with and without TTA, and compared case by case.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fed_windows import FedWindows

from unetseg import cli
from unetseg.image import Image
from unetseg.inference.onnx_backend import export_onnx
from unetseg.inference.predictor import segment
from unetseg.models.catalog import Catalog
from unetseg.models.importers import import_any
from unetseg.models.precision_check import check_precisions

OPENVINO = pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                            reason="needs openvino (a test extra)"))

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nnunet"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
# model key -> what is imported (a trained-model folder, or the zip nnU-Net exported)
SOURCES = {
    "ct3d": "models/Dataset901_TinyCT/nnUNetTrainer__nnUNetPlans__3d_fullres",
    "ct2d": "exports/Dataset901_TinyCT__nnUNetTrainer__nnUNetPlans__2d.zip",
    "mr": "models/Dataset902_TinyMR/nnUNetTrainer__nnUNetPlans__3d_fullres",
    "regions": "models/Dataset903_TinyRegions/nnUNetTrainer__nnUNetPlans__3d_fullres",
}
MIN_DICE = 0.99


def cases(key: str) -> dict[str, list[Path]]:
    """The unseen images of a model's dataset: ``{case: [channel files in order]}``."""
    folder = FIXTURES / "cases" / MANIFEST["models"][key]["dataset"] / "imagesTs"
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.nii.gz")):
        found.setdefault(path.name[: -len("_0000.nii.gz")], []).append(path)
    return found


def reference(key: str, tta: bool, case: str) -> np.ndarray:
    path = FIXTURES / "reference" / key / ("tta" if tta else "notta") / f"{case}.nii.gz"
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def dice_per_label(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    """Dice of every label present in either map (1.0 when both lack it)."""
    out = {}
    for value in sorted((set(np.unique(ref)) | set(np.unique(pred))) - {0}):
        a, b = pred == value, ref == value
        out[int(value)] = 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
    return out


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    """The four fixture models imported into a fresh user folder, each with its ONNX export."""
    catalog = Catalog(bundled_dir=tmp_path_factory.mktemp("none"), user_dir=tmp_path_factory.mktemp("models"))
    for key, source in SOURCES.items():
        assert import_any(FIXTURES / source, catalog, name=key) == key
        export_onnx(catalog.get(key))
    return catalog


def test_the_imported_models_are_packages_that_say_what_they_are(catalog):
    ct3d, mr, regions = catalog.get("ct3d"), catalog.get("mr"), catalog.get("regions")
    assert (ct3d.modality, mr.modality, regions.variant) == ("CT", "MR", "nnunetv2")
    assert ct3d.network_config["folds"] == ["0", "1"] and regions.network_config["folds"] == ["all"]
    assert mr.input_names == ["T1", "T2"] and [label.name for label in ct3d.labels] == ["organ", "bone"]
    assert ct3d.inference["tta"] and ct3d.inference["mirror_axes"] == [0, 1, 2]
    assert catalog.get("ct2d").manifest["spatial_dims"] == 2
    assert regions.inference["regions"] == {"regions": [[1, 2], [2]], "class_order": [1, 2]}
    provenance = ct3d.provenance
    assert provenance["format"] == "nnunetv2" and provenance["checkpoint"] == "checkpoint_final.pth"
    assert provenance["files_sha256"]["fold_0/checkpoint_final.pth"] == MANIFEST["models"]["ct3d"][
        "checkpoint_sha256"]["0"]
    assert not list(ct3d.path.glob("**/*.pth")), "no pickles are kept"
    assert sorted(catalog.names()) == ["ct2d", "ct3d", "mr", "regions"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx", OPENVINO])
@pytest.mark.parametrize("tta", [True, False], ids=["tta", "notta"])
@pytest.mark.parametrize("key", list(SOURCES))
def test_labels_match_nnunetv2_predict(catalog, key, tta, backend, monkeypatch):
    package = catalog.get(key)
    worst = {}
    windows = FedWindows(monkeypatch)
    for case, files in cases(key).items():
        images = [Image.from_sitk(sitk.ReadImage(str(f))) for f in files]
        labels = segment(images, package, device="cpu", tta=tta, backend=backend).image.array
        if backend == "onnx":  # the session was opened for the tiles it ran on: channels and patch, one a call
            assert windows.check() == (1, len(files), *package.inference["patch_size"])
        dice = dice_per_label(labels, reference(key, tta, case))
        worst[case] = min(dice.values())
        assert worst[case] >= MIN_DICE, f"{key} {case} ({'tta' if tta else 'notta'}, {backend}): Dice {dice}"


@pytest.mark.slow
def test_an_imported_model_is_checked_for_int8_and_runs_its_int8_export(tmp_path):
    """The precision check quantises an imported model's export (a 2d one too) and records how its labels agree;
    int8 asked for runs that export inside nnU-Net's pipeline, and auto keeps fp32 where int8 was not validated."""
    catalog = Catalog(bundled_dir=tmp_path / "none", user_dir=tmp_path / "models")
    for key in ("ct2d", "mr"):
        import_any(FIXTURES / SOURCES[key], catalog, name=key)
        export_onnx(catalog.get(key))
        record = check_precisions(catalog.get(key))["checked"]["int8"]
        assert 0.5 < record["foreground_agreement"] <= 1.0 and "not_checked" not in record, record
    package = catalog.get("mr")
    assert not package.inference["precision"]["checked"]["int8"]["validated"]  # a barely trained fixture
    case, files = next(iter(cases("mr").items()))
    images = [Image.from_sitk(sitk.ReadImage(str(f))) for f in files]
    runs = {}
    for precision in ("int8", "fp32", "auto"):
        lines: list[str] = []
        runs[precision] = segment(images, package, device="cpu", tta=False, backend="onnx", precision=precision,
                                  progress=lambda _f, stage, lines=lines: lines.append(stage)).image.array
        assert any(line.startswith("engine: onnxruntime") and "precision " + ("fp32" if precision == "auto"
                   else precision) in line for line in lines), lines  # fmt: skip
    assert np.array_equal(runs["auto"], runs["fp32"])
    assert not np.array_equal(runs["int8"], runs["fp32"])  # the quantised export ran, not the fp32 one
    assert min(dice_per_label(runs["int8"], reference("mr", False, case)).values()) >= 0.8  # its pipeline, rounded


@pytest.mark.slow
def test_the_command_line_imports_lists_and_runs_an_nnunet_zip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNETSEG_MODELS_DIR", str(tmp_path / "models"))
    source = FIXTURES / SOURCES["ct2d"]
    assert cli.main(["models", "import", str(source), "--name", "ct-tiny-2d", "--folds", "0"]) == 0
    assert cli.main(["models", "--variant", "nnunetv2"]) == 0
    assert "ct-tiny-2d" in capsys.readouterr().out
    case, files = next(iter(cases("ct2d").items()))
    out = tmp_path / "out.nii.gz"
    assert cli.main(["predict", "-m", "ct-tiny-2d", "-i", str(files[0]), "-o", str(out), "--no-tta",
                     "--device", "cpu"]) == 0
    dice = dice_per_label(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), reference("ct2d", False, case))
    assert min(dice.values()) >= MIN_DICE, dice


@pytest.mark.slow
def test_the_onnx_path_runs_without_torch(catalog, tmp_path):
    package = catalog.get("mr")
    case, files = next(iter(cases("mr").items()))
    out = tmp_path / "mr.nii.gz"
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed: importing them fails
        from unetseg import cli
        code = cli.main(["predict", "-m", {str(package.path)!r}, "-i", {str(files[0])!r}, "-i", {str(files[1])!r},
                         "-o", {str(out)!r}, "--backend", "onnx", "--device", "cpu"])
        assert code == 0 and sys.modules["torch"] is None
        assert "dynamic_network_architectures" not in sys.modules
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8",
                          cwd=FIXTURES.parents[2], timeout=300)
    assert done.returncode == 0, done.stderr
    dice = dice_per_label(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), reference("mr", True, case))
    assert min(dice.values()) >= MIN_DICE, dice


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None, reason="needs nnunetv2 (the Makefile installs it)")
def test_a_model_regenerated_end_to_end_by_nnunet_matches(tmp_path):
    """Plan, preprocess, train (two folds, a few iterations) and predict with the real nnunetv2, then import."""
    out = tmp_path / "fixtures"
    done = subprocess.run([sys.executable, str(FIXTURES.parents[2] / "benchmarks" / "make_nnunet_fixtures.py"),
                           "--out", str(out), "--models", "ct3d", "--epochs", "1", "--iterations", "5",
                           "--no-probabilities", "--export"], capture_output=True, text=True, encoding="utf-8",
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    catalog = Catalog(bundled_dir=tmp_path / "none", user_dir=tmp_path / "models")
    import_any(out / SOURCES["ct3d"], catalog, name="fresh")
    package = catalog.get("fresh")
    for tta in (True, False):
        for path in sorted((out / "reference" / "ct3d" / ("tta" if tta else "notta")).glob("*.nii.gz")):
            image = out / "cases" / "Dataset901_TinyCT" / "imagesTs" / path.name.replace(".nii.gz", "_0000.nii.gz")
            labels = segment([Image.from_sitk(sitk.ReadImage(str(image)))], package, device="cpu", tta=tta)
            dice = dice_per_label(labels.image.array, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
            assert min(dice.values()) >= MIN_DICE, (path.name, tta, dice)


def test_what_an_imported_model_expects_is_in_the_inputs_axis_order(catalog):
    """ct3d's coarse axis is the file's x (transpose_forward [2, 0, 1]): its window spans x at 3.6 mm."""
    expects = catalog.get("ct3d").manifest["expects"]
    assert expects["modality"] == "CT" and "intensity_range" not in expects
    fov = expects["min_field_of_view_mm"]
    assert fov[0] > fov[1] and fov[0] == pytest.approx(0.5 * 16 * 3.62, rel=0.01)


@pytest.mark.slow
def test_onnx_runtimes_openvino_build_matches_nnunetv2_predict(catalog):
    """ONNX Runtime's OpenVINO build (set aside by the Makefile; torch blocked) runs every model, with and without
    TTA, on OpenVINO's fp32 kernels through ONNX Runtime: nnU-Net's labels at the same Dice bar."""
    from test_onnx_openvino_provider import ORT_OPENVINO, run_in_ort_openvino

    if not (ORT_OPENVINO / "onnxruntime").is_dir():
        pytest.skip(f"no ONNX Runtime OpenVINO build in {ORT_OPENVINO} (make test)")
    runs = [{"package": str(catalog.get(key).path), "tta": tta, "files": [str(f) for f in files],
             "reference": str(FIXTURES / "reference" / key / ("tta" if tta else "notta") / f"{case}.nii.gz"),
             "name": f"{key} {case} {'tta' if tta else 'notta'}"}
            for key in SOURCES for tta in (True, False) for case, files in cases(key).items()]  # fmt: skip
    out = run_in_ort_openvino(f"""
        import json, sys
        sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import SimpleITK as sitk
        from test_nnunet_parity import dice_per_label
        from unetseg.image import Image
        from unetseg.inference.predictor import segment
        from unetseg.models.package import load_package
        for run in json.loads({json.dumps(runs)!r}):
            lines = []
            images = [Image.from_sitk(sitk.ReadImage(f)) for f in run["files"]]
            labels = segment(images, load_package(run["package"]), device="cpu", tta=run["tta"], backend="onnx",
                             progress=lambda _f, stage: lines.append(stage)).image.array
            dice = dice_per_label(labels, sitk.GetArrayFromImage(sitk.ReadImage(run["reference"])))
            engine = [line for line in lines if line.startswith("engine:")][0]
            print(json.dumps([run["name"], min(dice.values(), default=1.0), engine]))
    """)
    results = [json.loads(line) for line in out.strip().splitlines()]
    assert len(results) == len(runs)
    for name, dice, engine in results:
        assert engine.startswith("engine: onnxruntime-openvino"), (name, engine)
        assert dice >= MIN_DICE, f"{name} (ONNX Runtime's OpenVINO build): Dice {dice}"
