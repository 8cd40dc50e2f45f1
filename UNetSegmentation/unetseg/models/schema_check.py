"""The part of JSON Schema (draft-07) that ``model.schema.json`` uses, checked without the jsonschema package.

Slicer's Python has no jsonschema, and listing models must work there before anything is installed, so this
small checker is the project's one manifest validator; the shipped schema stays the one statement of the format.
A schema that uses a keyword outside `KEYWORDS` is refused, so the schema cannot outgrow the checker unnoticed.
Messages follow jsonschema's wording, each prefixed with the JSON path of the value ("$.labels[1].color[1]").
"""

from __future__ import annotations

import json
import re
from typing import Any

# What the checker understands: the annotations it ignores and the assertions it checks.
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description"})
KEYWORDS = ANNOTATIONS | {
    "type", "const", "enum", "pattern", "minLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minItems", "maxItems", "uniqueItems", "items", "required", "properties", "if", "then",
}  # fmt: skip
_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "number": (int, float), "boolean": bool, "null": type(None),
}  # fmt: skip


def schema_problems(value: Any, schema: dict, path: str = "$") -> list[str]:
    """Every way `value` breaks `schema`, as "<JSON path>: <message>" (empty when it conforms)."""
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"The schema at {path} uses {sorted(unknown)}, which this checker does not implement.")
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, name) for name in names):
            return [f"{path}: {value!r} is not of type {', '.join(map(repr, names))}"]
    problems = [f"{path}: {message}" for message in _value_problems(value, schema)]
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        missing = [key for key in schema.get("required", []) if key not in value]
        problems += [f"{path}: {key!r} is a required property" for key in missing]
        for key, subschema in schema.get("properties", {}).items():
            if key in value:
                problems += schema_problems(value[key], subschema, f"{path}.{key}")
    if "if" in schema and "then" in schema and not schema_problems(value, schema["if"], path):
        problems += schema_problems(value, schema["then"], path)
    return problems


def _value_problems(value: Any, schema: dict) -> list[str]:
    """The checks on the value itself: const, enum, string, number and array bounds."""
    problems = []
    if "const" in schema and not _equal(value, schema["const"]):
        problems.append(f"{schema['const']!r} was expected")
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        problems.append(f"{value!r} is not one of {schema['enum']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{value!r} is too short")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{value!r} does not match {schema['pattern']!r}")
    if _is_type(value, "number"):
        bounds = (
            ("minimum", lambda v, b: v < b, "is less than the minimum of"),
            ("maximum", lambda v, b: v > b, "is greater than the maximum of"),
            ("exclusiveMinimum", lambda v, b: v <= b, "is less than or equal to the minimum of"),
            ("exclusiveMaximum", lambda v, b: v >= b, "is greater than or equal to the maximum of"),
        )
        problems += [f"{value!r} {words} {schema[key]!r}" for key, broken, words in bounds
                     if key in schema and broken(value, schema[key])]
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{value!r} is too short")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{value!r} is too long")
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
            problems.append(f"{value!r} has non-unique elements")
    return problems


def _is_type(value: Any, name: str) -> bool:
    """JSON's types: booleans are not numbers, and 2.0 is an integer."""
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, _TYPES[name])


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but true is not 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b
