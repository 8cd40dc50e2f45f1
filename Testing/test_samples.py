"""Which bundled sample the demo and the self-test show first, and which labels a sample's reference scores."""

from __future__ import annotations

import json

import pytest

from unetseg import samples


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A samples.json of three CT samples: A's model never saw C; B's model has no unseen case."""
    doc = {"samples": [
        {"name": "B", "modality": "CT", "model": "m-b"},
        {"name": "A", "modality": "CT", "model": "m-a", "reference_labels": ["spleen"]},
        {"name": "C", "modality": "CT", "model": "m-b", "heldout_for": ["m-a"]},
        {"name": "M", "modality": "MR", "model": "m-mr"},
    ]}
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setattr(samples, "SAMPLES_FILE", path)
    return doc


def test_showcase_prefers_a_model_with_a_case_it_never_saw(index):
    assert samples.showcase(["m-a", "m-b"], modality="CT")["name"] == "A"
    assert [s["name"] for s in samples.unseen_by("m-a")] == ["C"]


def test_showcase_falls_back_to_the_first_sample_with_an_available_model(index):
    assert samples.showcase(["m-b"], modality="CT")["name"] == "B"
    assert samples.showcase(["m-mr", "m-b"], modality="MR")["name"] == "M"
    assert samples.showcase(["other"]) is None


def test_reference_labels_score_only_what_the_reference_holds(index):
    a, b = index["samples"][1], index["samples"][0]
    assert samples.reference_labels(a, ["spleen", "liver", "left kidney"]) == ["spleen"]
    assert samples.reference_labels(b, ["spleen", "liver"]) == ["spleen", "liver"]
