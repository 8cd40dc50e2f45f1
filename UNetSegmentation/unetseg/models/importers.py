"""`unetseg models import PATH`: recognise what PATH holds and bring it into the user's model folder.

Three kinds are recognised: this project's own package (a folder holding ``model.json``, or a zip of one), an
nnU-Net v2 trained-model folder or zip, and a MONAI bundle folder or zip. A foreign model is converted into a
package in a staging folder first; the catalog then validates and installs it, so a refused model leaves the user's
model folder as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from unetseg.models.archive import is_package_zip, member_name
from unetseg.models.catalog import Catalog
from unetseg.models.formats.monai_convert import convert_bundle
from unetseg.models.formats.nnunet_convert import convert_nnunet
from unetseg.models.formats.nnunet_layout import looks_like_nnunet
from unetseg.models.manifest import MANIFEST_FILE, PackageError
from unetseg.vocabulary import IMPORTED_VARIANT_TITLES, MONAI_VARIANT, NNUNET_VARIANT

PACKAGE = "unetseg"
BUNDLE_METADATA = "configs/metadata.json"
# Converters of foreign formats: (path, staging folder, name, folds, checkpoint, configuration[, modality]) -> package.
CONVERTERS: dict[str, Callable] = {NNUNET_VARIANT: convert_nnunet, MONAI_VARIANT: convert_bundle}


def detect_format(path: str | os.PathLike) -> str:
    """``"unetseg"`` (a package), ``"nnunetv2"`` or ``"monai"``; a `PackageError` when it is none of them."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PackageError(f"Cannot import {p}: no such file or folder.")
    if p.name == MANIFEST_FILE or (p.is_dir() and (p / MANIFEST_FILE).is_file()):
        return PACKAGE
    if p.is_file() and zipfile.is_zipfile(p) and is_package_zip(p):
        return PACKAGE
    if looks_like_nnunet(p):
        return NNUNET_VARIANT
    if _looks_like_bundle(p):
        return MONAI_VARIANT
    raise PackageError(
        f"Cannot import {p}: it is neither a model package (a folder holding {MANIFEST_FILE}, or a zip of one), nor "
        "an nnU-Net v2 trained-model folder (<trainer>__<plans>__<configuration>/ with dataset.json, plans.json and "
        f"fold_*/checkpoint_final.pth) or zip, nor a MONAI bundle ({BUNDLE_METADATA} and models/model.pt)."
    )


def _looks_like_bundle(p: Path) -> bool:
    if p.is_dir():
        return (p / BUNDLE_METADATA).is_file() or any((c / BUNDLE_METADATA).is_file() for c in p.iterdir()
                                                      if c.is_dir())
    try:
        with zipfile.ZipFile(p) as zf:
            return any(member_name(i).endswith(BUNDLE_METADATA) and member_name(i).count("/") <= 2
                       for i in zf.infolist())
    except (OSError, zipfile.BadZipFile):
        return False


def import_any(path: str | os.PathLike, catalog: Catalog | None = None, name: str | None = None,
               folds: list[str] | None = None, checkpoint: str | None = None, configuration: str | None = None,
               replace: bool = False, modality: str | None = None) -> str:
    """Import a package, nnU-Net model or MONAI bundle into the catalog's user folder; return the model's name.

    ``name`` names a converted model (default: from the source); ``folds``, ``checkpoint`` and ``configuration``
    choose what of an nnU-Net model is imported (default: every fold with ``checkpoint_final.pth``); ``modality``
    is a MONAI bundle's when its metadata.json does not say.
    """
    catalog = catalog or Catalog()
    kind = detect_format(path)
    if kind == PACKAGE:
        if name or folds or checkpoint or configuration or modality:
            raise PackageError("--name, --folds, --checkpoint, --configuration and --modality are for nnU-Net models "
                               "and MONAI bundles; a package keeps its name and modality in its model.json.")
        return catalog.import_model(path, replace=replace)
    converter = CONVERTERS.get(kind)
    if converter is None:
        raise PackageError(f"{path} is a {IMPORTED_VARIANT_TITLES[kind]}; importing that format is not available in "
                           "this version.")
    if modality and kind != MONAI_VARIANT:
        raise PackageError("--modality is for MONAI bundles whose metadata.json does not name one.")
    options = {"modality": modality} if modality else {}
    catalog.user_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=catalog.user_dir))
    try:
        package = converter(path, staging / "package", name=name, folds=folds, checkpoint=checkpoint,
                            configuration=configuration, **options)
        return catalog.import_model(package.path, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
