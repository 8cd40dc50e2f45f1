"""The project's own manifest validator (`models.schema_check`): it implements every keyword the shipped schema
uses, agrees with jsonschema where jsonschema is installed, and needs no jsonschema (a stock Slicer has none)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_manifest

from unetseg.models.manifest import ManifestError, manifest_schema, validate_manifest
from unetseg.models.schema_check import KEYWORDS, schema_problems

MODELS_DIR = Path(__file__).resolve().parents[1] / "UNetSegmentation" / "Resources" / "Models"
BUNDLED = sorted(MODELS_DIR.glob("*/model.json"))

# One mutation per keyword the schema uses (and a few that combine), applied to a valid manifest.
MUTATIONS = {
    "required": lambda m: m.pop("version"),
    "const": lambda m: m.update(format="unetseg-model/2"),
    "enum": lambda m: m.update(modality="US"),
    "enum of numbers vs boolean": lambda m: m.update(spatial_dims=True),
    "type": lambda m: m.update(version=1),
    "type of nested integer": lambda m: m["network"].update(in_channels="one"),
    "minimum": lambda m: m["network"].update(num_classes=1),
    "maximum in items": lambda m: m["labels"][0].update(color=[0.5, 1.5, 0.0]),
    "exclusiveMinimum": lambda m: m["preprocessing"].update(target_spacing=[1.0, 0.0, 1.0]),
    "exclusiveMaximum": lambda m: m["inference"].update(overlap=1.0),
    "minItems": lambda m: m.update(labels=[]),
    "maxItems": lambda m: m["preprocessing"].update(hu_clip=[1, 2, 3]),
    "uniqueItems": lambda m: m["inference"].update(mirror_axes=[0, 0]),
    "pattern": lambda m: m.update(name="../evil"),
    "pattern of nullable string": lambda m: m["preprocessing"].update(orientation="XYZ"),
    "minLength": lambda m: m["inputs"][0].update(name=""),
    "if/then": lambda m: m["preprocessing"]["normalization"][0].pop("std"),
    "type list with null": lambda m: m["preprocessing"].update(target_spacing="1 mm"),
    "integer as float": lambda m: m["network"].update(in_channels=1.5),
    "several at once": lambda m: (m.update(modality="PET", format=None), m["labels"][1].pop("name")),
}


def _keywords(schema: dict) -> set[str]:
    """Every keyword of a schema and its subschemas (property names are not keywords)."""
    found = set(schema)
    for key, value in schema.items():
        if key == "properties":
            for subschema in value.values():
                found |= _keywords(subschema)
        elif key in ("items", "if", "then") and isinstance(value, dict):
            found |= _keywords(value)
    return found


def _paths(problems: list[str]) -> set[str]:
    return {p.split(":", 1)[0] for p in problems}


def test_the_checker_implements_every_keyword_of_the_shipped_schema():
    assert _keywords(manifest_schema()) <= KEYWORDS


def test_unknown_keywords_are_refused_not_ignored():
    with pytest.raises(ValueError, match="does not implement"):
        schema_problems({"a": 1}, {"type": "object", "additionalProperties": False})


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_checker_finds_what_jsonschema_finds(name):
    jsonschema = pytest.importorskip("jsonschema", reason="the cross-check needs jsonschema (a test dependency)")
    manifest = tiny_manifest()
    MUTATIONS[name](manifest)
    ours = schema_problems(manifest, manifest_schema())
    errors = jsonschema.Draft7Validator(manifest_schema()).iter_errors(manifest)
    theirs = [f"{e.json_path}: {e.message}" for e in errors]
    assert ours, f"{name}: the mutation must break the schema"
    assert _paths(ours) == _paths(theirs), f"{name}: ours {ours} vs jsonschema {theirs}"


def test_valid_manifests_pass_both(monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    for manifest in [tiny_manifest(), *(json.loads(p.read_text(encoding="utf-8")) for p in BUNDLED)]:
        assert schema_problems(manifest, manifest_schema()) == []
        assert list(jsonschema.Draft7Validator(manifest_schema()).iter_errors(manifest)) == []


def test_validation_needs_no_jsonschema(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # as in a stock Slicer: importing it fails
    for path in BUNDLED:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        assert validate_manifest(manifest) is manifest
    manifest = tiny_manifest(modality="US")
    del manifest["name"]
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest)
    assert "$: 'name' is a required property" in info.value.problems
    assert any(p.startswith("$.modality: 'US' is not one of") for p in info.value.problems)
