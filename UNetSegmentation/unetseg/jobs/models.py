"""The model jobs: `unetseg models` (list, import) and `unetseg export-onnx`."""

from __future__ import annotations

import sys

from unetseg.evaluation.variant_figures import figures_listing
from unetseg.models.catalog import Catalog
from unetseg.models.package import PackageError


def run_list(modality: str | None, variant: str | None, details: bool) -> int:
    """`unetseg models`: print the catalog (with the variants' measured figures when ``details``)."""
    catalog = Catalog()
    print(catalog.listing(modality, variant, details))
    if details and (figures := figures_listing(p.variant for p in catalog.models(modality, variant))):
        print(figures)
    return 0


def run_import(path: str, replace: bool) -> int:
    """`unetseg models import`: validate a model and copy it to the user models; exit code 2 when refused."""
    catalog = Catalog()
    try:
        name = catalog.import_model(path, replace=replace)
    except PackageError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"Imported model {name} into {catalog.user_dir / name}")
    return 0


def run_export_onnx(model: str) -> int:
    """`unetseg export-onnx`: write ``model.onnx`` next to the model's weights."""
    from unetseg.inference.onnx_backend import export_onnx  # lazy: torch

    try:
        path = export_onnx(model)
    except (PackageError, ValueError, OSError) as err:
        print(f"unetseg export-onnx: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0
