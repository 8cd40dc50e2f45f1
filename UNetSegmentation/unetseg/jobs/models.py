"""The model jobs: `unetseg models` (list, import, validate-precision) and `unetseg export-onnx`."""

from __future__ import annotations

from typing import Any

from unetseg.evaluation.variant_figures import figures_listing
from unetseg.inference.onnx_backend import export_onnx
from unetseg.inference.precision import MIRRORED
from unetseg.io import read_images
from unetseg.jobs.runner import Job
from unetseg.models.catalog import Catalog
from unetseg.models.importers import import_any
from unetseg.models.package import ModelPackage
from unetseg.models.precision_check import check_precisions
from unetseg.vocabulary import IMPORTED_VARIANTS


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
    package = catalog.get(name)
    if package.variant in IMPORTED_VARIANTS:
        # An nnU-Net or MONAI model runs as its reference tool runs it (fp32 on the CPU), so that its labels are the
        # reference's; a faster precision is the user's explicit choice after checking it.
        job.log(f"{name} keeps its reference tool's fp32 arithmetic on the CPU; `unetseg models validate-precision "
                f"{name}` checks bf16/fp16/int8 on a sample and allows them where the labels hold.")
    else:
        _validate_imported(job, package)
    job.result(f"Imported model {name} into {catalog.user_dir / name}", name=name, output=str(catalog.user_dir / name))


def _validate_imported(job: Job, package: ModelPackage) -> None:
    """Record which lower precisions keep the new model's labels; a check that cannot run (no PyTorch, an unusual
    pipeline) leaves it unvalidated (fp32 on the CPU) and is only reported."""
    try:
        check_precisions(package, report=job.log)
    except Exception as error:  # an unvalidated model is still imported
        job.log(f"Precision check skipped ({error}); run `unetseg models validate-precision {package.name}` later.")


def run_export_onnx(job: Job, options: dict[str, Any]) -> None:
    """`unetseg export-onnx`: write ``model.onnx`` next to the model's weights."""
    path = export_onnx(options["model"])
    job.result(f"Wrote {path}", output=str(path))


def run_validate_precision(job: Job, options: dict[str, Any]) -> None:
    """`unetseg models validate-precision`: lower precisions against fp32 on the model's sample, into its manifest."""
    package = Catalog().get(options["model"])
    images = options.get("images")
    record = check_precisions(package, options["windows"], report=job.log,
                              images=read_images(images) if images else None)
    mirrored = record.get(MIRRORED, {})
    allowed = [f"{p}{where}{tta}" for section, tta in ((record, ""), (mirrored, " with TTA"))
               for key, where in (("checked", ""), ("openvino", " on OpenVINO"))
               for p, r in section.get(key, {}).items() if r.get("validated")]  # fmt: skip
    job.result(f"Model {package.name}: validated for fp32{''.join(', ' + p for p in allowed)} "
               f"(recorded in {package.path / 'model.json'})", validated=["fp32", *allowed], record=record)
