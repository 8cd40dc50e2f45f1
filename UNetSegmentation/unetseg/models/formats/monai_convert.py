"""A MONAI bundle turned into this project's package: ``model.json`` + ``weights.safetensors``, no pickles.

The manifest's ``variant`` and ``preprocessing.kind`` are ``monai``, so the predictor runs the bundle's own
pipeline (`unetseg.inference.monai_pipeline`), which is checked here first: a bundle whose steps it cannot
reproduce is refused at import, not at a user's first run. The ``network`` is the allow-listed MONAI class and
its arguments; each tensor is stored once (``network.aliases`` names the others). Labels get readable names,
distinct colours and Slicer terminology where the name is a common structure; inputs and the modality come from
``metadata.json`` (a bundle whose metadata names no modality needs one given); provenance keeps the source, the
bundle's name, version and licence, and the original files' hashes.
"""

from __future__ import annotations

import os
import re

from unetseg.inference.monai_pipeline import check_pipeline
from unetseg.models.catalog import normalize_modality
from unetseg.models.formats.monai_bundle import MonaiBundle, read_bundle
from unetseg.models.formats.monai_files import BundleError
from unetseg.models.package import ModelPackage, save_package
from unetseg.vocabulary import MODALITY_TITLES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def convert_bundle(
    path: str | os.PathLike,
    target: str | os.PathLike,
    name: str | None = None,
    modality: str | None = None,
    **nnunet_options: object,
) -> ModelPackage:
    """Read the bundle at ``path`` (folder or zip) and write it as a package into the folder ``target``.

    ``nnunet_options`` (folds, checkpoint, configuration) are refused when given: a bundle has none of them."""
    given = sorted(k for k, v in nnunet_options.items() if v)
    if given:
        raise BundleError(f"{', '.join(given)}: options of nnU-Net models; a MONAI bundle has one network.")
    bundle = read_bundle(path)
    return save_package(target, bundle_manifest(bundle, name, modality), bundle.state_dict)


def bundle_manifest(bundle: MonaiBundle, name: str | None = None, modality: str | None = None) -> dict:
    """The package manifest of a read bundle, its pipeline checked (see the module doc)."""
    manifest = bundle.to_manifest_fields()
    try:
        check_pipeline(
            {"preprocessing": manifest["preprocessing"]["monai"]["steps"], **manifest["inference"]["monai"]},
            bundle.spatial_dims,
        )
    except ValueError as e:
        raise BundleError(f"Refusing the bundle: {e}") from e
    if name is not None and not _NAME.match(name):
        raise BundleError(f"{name!r} cannot name a model: use letters, digits, '.', '_' and '-' (up to 100).")
    manifest["name"] = name or manifest["name"]
    manifest["modality"] = _modality(modality, bundle.modality)
    source = bundle.provenance.get("source", "")
    said = f"{bundle.description.strip().rstrip('.')}. " if bundle.description.strip() else ""
    manifest["description"] = (
        f"{said}MONAI bundle {bundle.provenance.get('bundle_name')} {bundle.version}, imported from {source}."
    )
    return manifest


def _modality(given: str | None, from_metadata: str | None) -> str:
    if given is not None:
        try:
            return normalize_modality(given)
        except ValueError as e:
            raise BundleError(str(e)) from e
    if from_metadata is None:
        choices = ", ".join(f"{code} ({title})" for code, title in MODALITY_TITLES.items())
        raise BundleError(
            "The bundle's metadata.json does not say which modality its network reads (network_data_format.inputs"
            f"…modality). Say it: `unetseg models import BUNDLE --modality CODE`, one of {choices}."
        )
    return from_metadata
