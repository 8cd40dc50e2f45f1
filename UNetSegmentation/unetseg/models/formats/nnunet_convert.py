"""An nnU-Net v2 model turned into this project's package: ``model.json`` + ``weights.safetensors``, no pickles.

The manifest's ``variant`` and ``preprocessing.kind`` are ``nnunetv2``, so the predictor runs nnU-Net's own
pipeline (`unetseg.inference.nnunet_pipeline`); its ``network`` is the plans' build spec with the folds, whose
weights are stored once each under ``fold_<name>.`` (the ``decoder.encoder.*`` aliases dropped). Labels get
readable names, distinct colours and Slicer terminology where the name is a common structure; inputs and the
modality come from ``channel_names``; provenance keeps the source, folds, checkpoint and the original files' hashes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from unetseg.inference.expectations import expected_from
from unetseg.io.terminology import default_color, default_terminology
from unetseg.models.formats import FormatError
from unetseg.models.formats.nnunet import NnUNetModel, read_nnunet_model
from unetseg.models.formats.nnunet_network import fold_prefix
from unetseg.models.package import ModelPackage, save_package
from unetseg.vocabulary import DEFAULT_OVERLAP, NNUNET_VARIANT

_SCHEMES = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "RescaleTo01Normalization": "rescale01",
            "RGBTo01Normalization": "rgb01", "NoNormalization": "none"}
# Channel names that say MR (case-folded words), besides "mr"/"mri"; "ct" says CT.
_MR_WORDS = {"mr", "mri", "t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "flair", "adc", "dwi", "pd", "pdw",
             "swi", "hbv", "dce", "bold", "cine", "lge", "t2star", "gre", "mprage"}
_XR_WORDS = {"xr", "xray", "x-ray", "cr", "dx", "radiograph"}
# Readers whose array order is the file's voxel grid, as this project's images are; the reorienting ones are not.
_SAME_GRID_READERS = ("SimpleITKIO", "NibabelIO", "Tiff3DIO", "NaturalImage2DIO")
_VERSION = "1"


def convert_nnunet(path: str | os.PathLike, target: str | os.PathLike, name: str | None = None,
                   folds: list[str | int] | None = None, checkpoint: str | None = None,
                   configuration: str | None = None) -> ModelPackage:
    """Read the nnU-Net model at ``path`` (folder or zip) and write it as a package into the folder ``target``."""
    model = read_nnunet_model(path, folds=folds, checkpoint=checkpoint, configuration=configuration)
    manifest = nnunet_manifest(model, name)
    state = {fold_prefix(fold) + key: tensor for fold, weights in model.state_dicts.items()
             for key, tensor in weights.items()}
    return save_package(target, manifest, state)


def default_name(model: NnUNetModel) -> str:
    """``Dataset###_Name-<configuration>`` with characters a catalog name cannot hold replaced."""
    raw = f"{model.dataset_name}-{model.configuration}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip("._-")[:100] or "nnunet-model"


def modality(channels: list[str], schemes: list[str]) -> str:
    """CT, MR or XR from the channel names (CT; T1, T2, FLAIR, ADC…); else CT for CT-normalised models, MR."""
    words = {w for c in channels for w in re.split(r"[\s_\-/()]+", c.casefold()) if w}
    if "ct" in words:
        return "CT"
    if words & _MR_WORDS:
        return "MR"
    if words & _XR_WORDS:
        return "XR"
    return "CT" if "CTNormalization" in schemes else "MR"


def readable(name: str) -> str:
    """A label or channel name for people: underscores become spaces (``kidney_left`` → ``kidney left``)."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip() or name


def _labels(model: NnUNetModel) -> list[dict]:
    entries = []
    for index, (value, name) in enumerate(sorted((v, n) for v, n in model.labels.label_names.items() if v), 1):
        entry = {"value": value, "name": readable(name), "color": list(default_color(index))}
        terminology = default_terminology(name)
        if terminology:
            entry["terminology"] = terminology
        entries.append(entry)
    return entries


def _inputs(model: NnUNetModel) -> list[dict]:
    seen: set[str] = set()
    inputs = []
    for index, (channel, scheme) in enumerate(zip(model.channel_names, model.preprocessing.normalization_schemes,
                                                  strict=True)):
        name = readable(channel)
        if name in seen:
            name = f"{name} ({index})"
        seen.add(name)
        inputs.append({"name": name, "description": f"nnU-Net channel {index} ({channel}; {scheme})"})
    return inputs


def _normalization(model: NnUNetModel) -> list[dict]:
    pre = model.preprocessing
    out = []
    for scheme, use_mask, props in zip(pre.normalization_schemes, pre.use_mask_for_norm, pre.intensity_properties,
                                       strict=True):
        entry = {"scheme": _SCHEMES[scheme]}
        if scheme == "CTNormalization":
            entry.update({k: props[k] for k in ("percentile_00_5", "percentile_99_5", "mean")})
            entry["std"] = max(props["std"], 1e-8)
        if scheme == "ZScoreNormalization":
            entry["use_mask"] = bool(use_mask)
        out.append(entry)
    return out


def _target_spacing_xyz(model: NnUNetModel) -> list[float] | None:
    """The configuration's spacing in the input's (x, y, z) order, for people; None for 2-D configurations."""
    pre = model.preprocessing
    if len(pre.spacing) != 3:
        return None
    zyx = [0.0, 0.0, 0.0]
    for i, axis in enumerate(pre.transpose_forward):
        zyx[axis] = pre.spacing[i]
    return list(reversed(zyx))


def _expects(model: NnUNetModel, modality_code: str) -> dict:
    """What the model was trained on (`expectations`), with the patch put back in the input's axis order. No
    intensity range: nnU-Net's percentiles are those of the labelled structures, not of whole images."""
    pre = model.preprocessing
    patch_zyx = [0, 0, 0]
    for i, axis in enumerate(pre.transpose_forward):
        patch_zyx[axis] = pre.patch_size[i] if len(pre.patch_size) == 3 else 0
    return expected_from(modality_code, [], _target_spacing_xyz(model), patch_zyx if pre.spatial_dims == 3 else None)


def nnunet_manifest(model: NnUNetModel, name: str | None = None) -> dict:
    """The package manifest of a read nnU-Net model (see the module doc)."""
    pre, labels = model.preprocessing, model.labels
    if pre.image_reader_writer not in _SAME_GRID_READERS:
        raise FormatError(f"{model.folder_name} reads its images with {pre.image_reader_writer}, which reorients them "
                          "first; that reader is not reproduced, so the model is not imported.")
    for kind in ("resampling_data", "resampling_probabilities"):
        fn = getattr(pre, kind)["fn"]
        if fn not in ("resample_data_or_seg_to_shape", "no_resampling_hack"):
            raise FormatError(f"{model.folder_name} resamples with {fn}, which is not reproduced; the model is not "
                              "imported.")
    dims = pre.spatial_dims
    network = {"variant": NNUNET_VARIANT, "spatial_dims": dims, "in_channels": len(model.channel_names),
               "num_classes": len(labels.label_names), **model.network.to_dict(), "folds": list(model.folds)}
    inference = {"patch_size": list(pre.patch_size), "overlap": DEFAULT_OVERLAP,
                 "mirror_axes": list(model.mirror_axes or []), "tta": bool(model.mirror_axes), "postprocessing": {}}
    if labels.has_regions:
        network["heads"] = labels.heads
        inference["regions"] = {"regions": labels.regions, "class_order": labels.regions_class_order}
    title = re.sub(r"^Dataset\d+_", "", model.dataset_name) or model.dataset_name
    provenance = {k: v for k, v in model.provenance.items() if v is not None}
    provenance.update(training_data=model.dataset_name, folds=[str(f) for f in model.folds])
    licence = model.dataset_json.get("licence") or model.dataset_json.get("license")
    if isinstance(licence, str):
        provenance["licence"] = licence
    if isinstance(model.dataset_json.get("numTraining"), int):
        provenance["cases"] = model.dataset_json["numTraining"]
    source = Path(str(model.provenance["source"])).name
    code = modality(model.channel_names, pre.normalization_schemes)
    return {
        "name": name or default_name(model),
        "version": _VERSION,
        "title": f"{readable(title)} (nnU-Net {model.configuration})",
        "description": f"nnU-Net v2 model {model.folder_name} of {model.dataset_name}, folds "
                       f"{', '.join(model.folds)} ({model.checkpoint}), imported from {source}.",
        "modality": code,
        "variant": NNUNET_VARIANT,
        "spatial_dims": dims,
        "network": network,
        "inputs": _inputs(model),
        "labels": _labels(model),
        "preprocessing": {
            "kind": NNUNET_VARIANT, "orientation": None, "target_spacing": _target_spacing_xyz(model),
            "normalization": _normalization(model), "crop": "nonzero", "slice_wise": dims == 2,
            "nnunetv2": {"transpose_forward": pre.transpose_forward, "transpose_backward": pre.transpose_backward,
                         "spacing": pre.spacing, "resampling_data": pre.resampling_data,
                         "resampling_probabilities": pre.resampling_probabilities,
                         "image_reader_writer": pre.image_reader_writer},
        },
        "inference": inference,
        "provenance": provenance,
        "expects": _expects(model, code),
    }
