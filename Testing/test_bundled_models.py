"""The bundled models: each loads, validates and segments its bundled sample on the CPU at the Dice its card
states (minus 0.02); the cards carry provenance; the weights fit the size limit; the demo runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unetseg.image import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "Models"
SAMPLE_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "SampleData"
TOLERANCE = 0.02
SIZE_LIMIT_BYTES = 40_000_000
MODEL_FOLDERS = sorted(f for f in MODELS_DIR.glob("*") if (f / "model.json").is_file()) if MODELS_DIR.is_dir() else []
needs_models = pytest.mark.skipif(not MODEL_FOLDERS, reason="no bundled model yet (benchmarks/bundled_models.py)")


def _samples() -> dict[str, dict]:
    return {s["name"]: s for s in json.loads((SAMPLE_DIR / "samples.json").read_text(encoding="utf-8"))["samples"]}


@pytest.mark.slow
@pytest.mark.parametrize("folder", MODEL_FOLDERS, ids=lambda f: f.name)
def test_bundled_model_segments_its_sample_at_its_card_dice(folder: Path):
    from unetseg.evaluation.metrics import dice
    from unetseg.inference.predictor import segment
    from unetseg.io import read_image, read_label_image
    from unetseg.models.package import load_package

    package = load_package(folder)  # validates the manifest against the schema
    entry = package.provenance["metrics"]["sample"]
    sample = _samples()[entry["sample"]]
    images = [read_image(SAMPLE_DIR / name) for name in sample["images"]]
    result = segment(images, package, device="cpu")
    assert isinstance(result.image, Image) and result.image.same_grid(images[0])
    reference = read_label_image(SAMPLE_DIR / sample["reference"]).image.array
    values = {label.name: label.value for label in package.labels}
    for name, stated in entry["dice"].items():
        got = dice(result.image.array == values[name], reference == values[name])
        assert got >= stated - TOLERANCE, f"{package.name} on {sample['name']}: Dice {name} {got:.3f} < card {stated}"


@needs_models
def test_cards_state_provenance_and_honest_metrics():
    from unetseg.models.package import load_package

    for folder in MODEL_FOLDERS:
        prov = load_package(folder).provenance
        for key in ("training_data", "licence", "cases", "command", "cpu_time_s", "data_folder"):
            assert prov.get(key) not in (None, ""), f"{folder.name}: provenance lacks {key}"
        assert "unetseg train" in prov["command"]
        metrics = prov["metrics"]
        assert "training-set Dice only; not a measure of generalisation" in metrics["training"]["description"]
        assert "sample" in metrics, f"{folder.name}: no Dice on a bundled sample"
        for entry in metrics.values():
            assert all(0.0 <= v <= 1.0 for v in entry["dice"].values())


@needs_models
def test_samples_name_existing_models_of_their_modality():
    from unetseg.models.package import load_package

    packages = {f.name: load_package(f) for f in MODEL_FOLDERS}
    for sample in _samples().values():
        assert all((SAMPLE_DIR / name).is_file() for name in [*sample["images"], sample["reference"]])
        if sample.get("model"):
            assert sample["model"] in packages, f"sample {sample['name']} names a missing model {sample['model']}"
            assert packages[sample["model"]].modality == sample["modality"]


@needs_models
def test_bundled_weights_fit_the_size_limit():
    total = sum(f.stat().st_size for folder in MODEL_FOLDERS for f in folder.iterdir() if f.is_file())
    assert total < SIZE_LIMIT_BYTES


@needs_models
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from unetseg.demo import run_demo
    from unetseg.models.catalog import Catalog
    from unetseg.samples import showcase, unseen_by

    sample = showcase(Catalog().names(modality="CT"), modality="CT")
    case = sample["name"]
    assert run_demo(tmp_path / "demo-output") == 0
    out = capsys.readouterr().out
    assert (tmp_path / "demo-output" / f"{case}.seg.nrrd").stat().st_size > 0
    assert (tmp_path / "demo-output" / f"{case}.png").stat().st_size > 0
    assert "Dice" in out
    unseen = [s["name"] for s in unseen_by(sample["model"])]
    assert unseen, "no shipped case that the demo's model never saw"
    for name in unseen:  # reported next to the training case, on a patient the model never saw
        assert (tmp_path / "demo-output" / f"{name}.seg.nrrd").stat().st_size > 0
    assert "on a case the model was trained on" in out and "on a case the model never saw" in out
    assert "Held-out mean Dice" in out and "Demonstration model trained on one subject" in out


@needs_models
def test_demo_says_plainly_when_no_unseen_case_is_shipped(tmp_path, capsys, monkeypatch):
    from unetseg import demo, samples

    shipped = samples.load_samples()
    without_unseen = [{k: v for k, v in s.items() if k != "heldout_for"} for s in shipped]
    monkeypatch.setattr(samples, "load_samples", lambda modality=None: [
        s for s in without_unseen if modality in (None, s["modality"])
    ])
    segmented = []
    monkeypatch.setattr(demo, "_segment_sample", lambda model, sample, out, role: segmented.append(sample["name"]))
    assert demo.run_demo(tmp_path / "demo-output") == 0
    assert segmented == ["spleen2"]
    assert "No case this model never saw is shipped with the extension" in capsys.readouterr().out


@needs_models
@pytest.mark.slow
def test_shipped_unseen_cases_reproduce_their_cards_held_out_figures():
    """The case the demo and the self-test show as never seen is the one the card's held-out figure measured."""
    from unetseg.evaluation.metrics import dice
    from unetseg.inference.predictor import segment
    from unetseg.io import read_image, read_label_image
    from unetseg.models.card import heldout_figure_on
    from unetseg.models.package import load_package
    from unetseg.samples import reference_labels, unseen_by

    checked = 0
    for folder in MODEL_FOLDERS:
        package = load_package(folder)
        for sample in unseen_by(package.name):
            entry = heldout_figure_on(package, sample["name"])
            assert entry is not None, f"{package.name}'s card has no held-out figure on {sample['name']}"
            result = segment([read_image(SAMPLE_DIR / name) for name in sample["images"]], package, device="cpu")
            reference = read_label_image(SAMPLE_DIR / sample["reference"]).image.array
            values = {label.name: label.value for label in package.labels}
            for name in reference_labels(sample, values):
                got = dice(result.image.array == values[name], reference == values[name])
                assert abs(got - entry["dice"][name]) <= TOLERANCE, (package.name, sample["name"], name, got)
                checked += 1
    assert checked, "no shipped sample is marked as unseen by a bundled model"
