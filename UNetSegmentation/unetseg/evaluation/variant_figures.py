"""The measured figures of each network variant, from the variant comparison, for the catalog and tooltips.

`benchmarks/compare_variants.py` writes ``variants.json`` (per setting and variant: Dice ± std over the
held-out cases, parameters, budget) to ``docs/`` and ships a copy as ``Resources/variants.json``; this module
reads whichever is present and turns one variant's entries into a line for people. Synthetic (CI) results are
never shown: they measure the pipeline, not the variants. Torch-free: the Slicer panel imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

FORMAT = "unetseg-variants/2"  # written by benchmarks/variant_report.py
SHIPPED = Path(__file__).resolve().parents[2] / "Resources" / "variants.json"
IN_REPOSITORY = Path(__file__).resolve().parents[3] / "docs" / "variants.json"


def results_path() -> Path | None:
    """The shipped results file, else the repository's, else None."""
    return next((p for p in (SHIPPED, IN_REPOSITORY) if p.is_file()), None)


def load_results(path: str | Path | None = None) -> dict | None:
    """The comparison's results (None when there are none, or they are synthetic or of another format)."""
    path = Path(path) if path is not None else results_path()
    if path is None or not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT or doc.get("synthetic"):
        return None
    return doc


def variant_summary(variant: str, path: str | Path | None = None) -> str | None:
    """One line with `variant`'s measured Dice per setting (first reported region), or None if not measured."""
    doc = load_results(path)
    if doc is None:
        return None
    parts = []
    for section in doc["settings"].values():
        summary = section["summary"].get(variant)
        if summary is None:
            continue
        region = next(iter(section["regions"]))
        dice = summary["dice"][region]
        if dice["mean"] is not None:
            run = section["provenance"]
            parts.append(f"{section['title']}: {region} Dice {dice['mean']:.2f} ± {dice['std']:.2f} "
                         f"(n={dice['n']}, {summary['parameters'] / 1e6:.1f} M parameters; "
                         f"{run['options']['budget_min']:g} min of training on {run['hardware'].get('gpu') or 'CPU'}, "
                         f"{run['generated'][:10]})")
    if not parts:
        return None
    return f"{variant} measured: " + "; ".join(parts) + ". See docs/variants.md."


def figures_listing(variants: Iterable[str], path: str | Path | None = None) -> str:
    """The measured line of each distinct variant (for `unetseg models --details`); empty when none is measured."""
    lines = [line for v in dict.fromkeys(variants) if (line := variant_summary(v, path))]
    return "\n".join(["Measured variant figures (benchmarks/compare_variants.py):", *lines]) if lines else ""
