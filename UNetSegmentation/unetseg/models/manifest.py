"""The model manifest (``model.json``): its format, defaults, errors, and validation against schema and rules.

The manifest (``"format": "unetseg-model/1"``) is checked against ``schemas/model.schema.json`` (by the
project's own `schema_check`, so no jsonschema is needed: Slicer's Python lacks it) and a few rules a schema
cannot state (label values fit the network, one normalisation per input…); every problem is reported with its
JSON path.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from unetseg.models.schema_check import schema_problems
from unetseg.vocabulary import DEFAULT_OVERLAP, IMPORTED_VARIANTS, VARIANTS

FORMAT = "unetseg-model/1"
MANIFEST_FILE = "model.json"
DEFAULT_WEIGHTS = "weights.safetensors"
DEFAULT_ONNX = "model.onnx"
SCHEMA_PATH = Path(__file__).resolve().with_name("schemas") / "model.schema.json"
SHOWN = 5
"""How many problems (unsafe zip members, mismatched weights) a message lists before "…"."""

DEFAULT_PREPROCESSING = {
    "orientation": None,
    "target_spacing": None,
    "hu_clip": None,
    "crop": None,
    "slice_wise": False,
}
DEFAULT_INFERENCE = {"overlap": DEFAULT_OVERLAP, "mirror_axes": [], "tta": False, "postprocessing": {}}

class PackageError(ValueError):
    """A model package that cannot be used; the message says what is wrong and how to fix it."""


class ManifestError(PackageError):
    """A manifest that breaks the schema or its rules; ``problems`` lists each with its JSON path."""

    def __init__(self, problems: list[str], source: str = MANIFEST_FILE) -> None:
        self.problems = problems
        super().__init__(f"Invalid model manifest {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class WeightsError(PackageError):
    """Weights that are missing, unreadable, unsafe to load, or do not fit the network."""


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    """The JSON Schema (draft-07) of ``model.json`` shipped with the package."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_manifest(manifest: dict, source: str = MANIFEST_FILE) -> dict:
    """Return ``manifest`` if valid; otherwise raise `ManifestError` listing every problem with its JSON path."""
    data = json.loads(json.dumps(manifest, default=jsonable))  # tuples and numpy values, as a file has them
    problems = schema_problems(data, manifest_schema()) or _rule_problems(data)
    if problems:
        raise ManifestError(problems, source)
    return manifest


def _rule_problems(m: dict) -> list[str]:
    """Consistency rules across fields, checked once the schema holds."""
    net, inputs, labels = m["network"], m["inputs"], m["labels"]
    pre, dims = m["preprocessing"], m["spatial_dims"]
    values = [label["value"] for label in labels]
    names = [i["name"] for i in inputs]
    regions = m["inference"].get("regions")
    known = (*VARIANTS, *IMPORTED_VARIANTS)
    checks = [
        (
            net["variant"] in known,
            "$.network.variant",
            f"is {net['variant']!r}, not a network this version can build ({', '.join(known)})",
        ),
        (
            net["variant"] == m["variant"],
            "$.network.variant",
            f"is {net['variant']!r} but $.variant is {m['variant']!r}",
        ),
        (
            net["spatial_dims"] == dims,
            "$.network.spatial_dims",
            f"is {net['spatial_dims']} but $.spatial_dims is {dims}",
        ),
        (
            net["in_channels"] == len(inputs),
            "$.network.in_channels",
            f"is {net['in_channels']} but $.inputs lists {len(inputs)} input(s)",
        ),
        (len(set(names)) == len(names), "$.inputs", f"input names repeat: {names}"),
        (len(set(values)) == len(values), "$.labels", f"label values repeat: {values}"),
        (
            regions is not None or all(v < net["num_classes"] for v in values),
            "$.labels",
            f"values {values} must be below $.network.num_classes ({net['num_classes']})",
        ),
        (
            len(labels) == net["num_classes"] - 1,
            "$.labels",
            f"names {len(labels)} classes but the network has {net['num_classes'] - 1} besides background",
        ),
        (
            len(pre["normalization"]) == len(inputs),
            "$.preprocessing.normalization",
            f"has {len(pre['normalization'])} entries for {len(inputs)} input(s); give one per input",
        ),
        (
            len(m["inference"]["patch_size"]) == dims,
            "$.inference.patch_size",
            f"has {len(m['inference']['patch_size'])} values for a {dims}D network",
        ),
        (
            all(a < dims for a in m["inference"].get("mirror_axes", [])),
            "$.inference.mirror_axes",
            f"axes must be below spatial_dims ({dims})",
        ),
        (not pre.get("slice_wise") or dims == 2, "$.preprocessing.slice_wise", "is only for 2D networks"),
        *(
            (
                bool(pre.get("hu_clip")) or "clip" in n or {"percentile_00_5", "percentile_99_5"} <= n.keys(),
                f"$.preprocessing.normalization[{i}]",
                "the ct scheme needs a clip range: 'clip', both 'percentile_00_5' and 'percentile_99_5', "
                "or $.preprocessing.hu_clip",
            )
            for i, n in enumerate(pre["normalization"])
            if n["scheme"] == "ct"
        ),
        (
            not pre.get("hu_clip") or pre["hu_clip"][0] < pre["hu_clip"][1],
            "$.preprocessing.hu_clip",
            "needs [low, high] with low < high",
        ),
        *_region_checks(regions, net, values),
    ]
    return [f"{path}: {message}" for ok, path, message in checks if not ok]


def _region_checks(regions: dict | None, net: dict, values: list[int]) -> list[tuple[bool, str, str]]:
    """A region-based model: one head per region, each painted with a listed label value."""
    if regions is None:
        return []
    heads = net.get("heads", net["num_classes"])
    return [
        (
            len(regions["regions"]) == len(regions["class_order"]) == heads,
            "$.inference.regions",
            f"needs one region and one class_order entry per network head ({heads})",
        ),
        (
            set(regions["class_order"]) == set(values),
            "$.inference.regions.class_order",
            f"paints {sorted(set(regions['class_order']))} but $.labels lists {sorted(values)}",
        ),
    ]


def jsonable(value: Any) -> Any:
    """JSON form of numpy scalars/arrays and paths (what a training script naturally puts in a manifest)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def read_manifest(folder: Path) -> dict:
    """The validated manifest of a package folder."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise PackageError(
            f"No {MANIFEST_FILE} in {folder}: a model package is a folder holding {MANIFEST_FILE} "
            "and its weights (or a zip of such a folder)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError([f"$: not valid JSON ({e})"], str(path)) from e
    if not isinstance(manifest, dict):
        raise ManifestError(["$: must be a JSON object"], str(path))
    return validate_manifest(manifest, str(path))
