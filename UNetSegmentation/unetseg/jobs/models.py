"""The model jobs: `unetseg models` (list, import) and `unetseg export-onnx`."""

from __future__ import annotations

from typing import Any

from unetseg.evaluation.variant_figures import figures_listing
from unetseg.inference.onnx_backend import export_onnx
from unetseg.jobs.runner import Job
from unetseg.models.catalog import Catalog
from unetseg.models.importers import import_any


def run_list(job: Job, options: dict[str, Any]) -> None:
    """`unetseg models`: the catalog (with the variants' measured figures when ``details``)."""
    catalog = Catalog()
    modality, variant, details = options["modality"], options["variant"], options["details"]
    text = catalog.listing(modality, variant, details)
    if details and (figures := figures_listing(p.variant for p in catalog.models(modality, variant))):
        text = f"{text}\n{figures}"
    job.result(text, models=catalog.names(modality, variant))


def run_import(job: Job, options: dict[str, Any]) -> None:
    """`unetseg models import`: a package, nnU-Net v2 model or MONAI bundle, validated (converted) into the user
    models."""
    catalog = Catalog()
    name = import_any(options["path"], catalog, name=options["name"], folds=options["folds"],
                      checkpoint=options["checkpoint"], configuration=options["configuration"],
                      replace=options["replace"], modality=options.get("modality"))
    job.result(f"Imported model {name} into {catalog.user_dir / name}", name=name, output=str(catalog.user_dir / name))


def run_export_onnx(job: Job, options: dict[str, Any]) -> None:
    """`unetseg export-onnx`: write ``model.onnx`` next to the model's weights."""
    path = export_onnx(options["model"])
    job.result(f"Wrote {path}", output=str(path))
