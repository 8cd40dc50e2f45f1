"""Read a MONAI bundle (a folder or a zip of one) into a plain description this project can convert and run.

A bundle is ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) and ``models/model.pt`` (a state
dict) and/or ``models/model.ts`` (TorchScript). Nothing in a bundle is allowed to run code; each concern has its
module:

- `monai_files`: the files, from a folder or a zip checked against hostile archives (``large_files.yml``
  download links are never followed);
- `monai_config`: the inference config through MONAI's own ``ConfigParser``, every ``$`` expression checked before
  it is evaluated, import statements dropped, file macros refused;
- `monai_weights`: ``network_def`` against an allow-list of U-Net-family networks, ``model.pt`` through
  ``weights_only`` loading, ``model.ts`` never loaded, aliased tensors stored once;
- `monai_steps` / `monai_step_args` / `monai_inferer`: transforms and inferer read as plain steps, never
  instantiated;
- `monai_metadata`: channels, labels and modality from ``metadata.json``.

`read_bundle` returns a `MonaiBundle`: everything JSON-serialisable (``to_dict``, ``to_manifest_fields``) plus
the de-duplicated state dict.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetseg.io.terminology import label_entry, readable_name
from unetseg.models.archive import MAX_IMPORT_BYTES
from unetseg.models.formats.checkpoint import sha256_file
from unetseg.models.formats.monai_config import Resolver
from unetseg.models.formats.monai_files import (
    INFERENCE_CONFIGS,
    MAX_CONFIG_BYTES,
    METADATA_FILE,
    TORCHSCRIPT_FILE,
    BundleError,
    BundleFiles,
    load_config,
)
from unetseg.models.formats.monai_inferer import read_inferer
from unetseg.models.formats.monai_metadata import data_format, read_inputs, read_labels, read_modality, slug
from unetseg.models.formats.monai_step_args import check_output_steps
from unetseg.models.formats.monai_steps import POSTPROCESSING_STEPS, PREPROCESSING_STEPS, read_steps
from unetseg.models.formats.monai_weights import (
    bound_network_args,
    build_network,
    dedupe_state_dict,
    load_dict_keys,
    load_weights,
    read_network,
    restore_aliases,
    weights_file,
)
from unetseg.vocabulary import MONAI_VARIANT

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class MonaiBundle:
    """What a bundle declares, as plain data, plus its weights (each tensor once).

    ``preprocessing`` and ``postprocessing`` are ordered steps with MONAI's semantics (``{"op": ..., ...}``);
    ``inferer`` is ``{"kind": "sliding_window" | "whole_image" | "slices", ...}``; ``aliases`` maps each
    duplicate state-dict name to the stored one (`restore_aliases` rebuilds the network's full state dict).
    """

    name: str
    version: str
    description: str
    network_target: str
    network_args: dict
    spatial_dims: int
    in_channels: int
    out_channels: int
    modality: str | None
    inputs: list[dict]
    labels: list[dict]
    preprocessing: list[dict]
    inferer: dict
    postprocessing: list[dict]
    ignored: list[dict]
    provenance: dict
    state_dict: dict = field(repr=False, default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    input_shape: list[int] | None = None  # metadata's spatial_shape (MONAI axis order), when it gives one

    @property
    def activation(self) -> str | None:
        """ "softmax", "sigmoid" or None (the network's raw output)."""
        return next((s["function"] for s in self.postprocessing if s["op"] == "activation"), None)

    def to_dict(self) -> dict:
        """Everything but the tensors, JSON-serialisable."""
        fields = {k: copy.deepcopy(v) for k, v in vars(self).items() if k != "state_dict"}
        return json.loads(json.dumps(fields))

    def network_config(self) -> dict:
        """The manifest's ``network`` entry: `build_network` rebuilds the module from it."""
        num_classes = self.out_channels if self.activation != "sigmoid" else self.out_channels + 1
        return {
            "variant": MONAI_VARIANT,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": max(num_classes, 2),
            "target": self.network_target,
            "args": copy.deepcopy(self.network_args),
            "aliases": dict(self.aliases),
        }

    def to_manifest_fields(self) -> dict:
        """The fields of this project's ``model.json`` that the bundle determines (JSON-serialisable).

        ``preprocessing.kind`` is ``monai``: the predictor runs ``preprocessing.monai.steps``, then
        ``inference.monai.inferer`` and ``inference.monai.postprocessing`` with MONAI's semantics, for parity
        with ``python -m monai.bundle run``. The project's own keys say the same where they can: ``orientation``,
        ``target_spacing`` (when every axis is resampled), ``normalization`` (the project's scheme when the
        intensity steps are exactly one, else ``monai``), ``patch_size`` (the window in ``(z, y, x)`` order) and
        ``overlap``. Labels get readable names, distinct colours and Slicer terminology for known structures.
        ``name`` is a suggestion; ``modality`` is None when the metadata does not say (the importer must ask).
        """
        pre: dict[str, Any] = {"kind": MONAI_VARIANT, "monai": {"steps": copy.deepcopy(self.preprocessing)}}
        for step in self.preprocessing:
            if step["op"] == "orientation":
                pre["orientation"] = step["axcodes"] if len(step["axcodes"]) == 3 else None
            elif step["op"] == "spacing" and len(step["pixdim"]) == 3 and all(p > 0 for p in step["pixdim"]):
                pre["target_spacing"] = list(step["pixdim"])
        pre["slice_wise"] = self.inferer.get("kind") == "slices"  # a 2D network over the slices of a volume
        normalization = project_normalization(self.preprocessing) or {"scheme": MONAI_VARIANT}
        pre["normalization"] = [copy.deepcopy(normalization) for _ in self.inputs]
        inference: dict[str, Any] = {
            "patch_size": self._patch_size(),
            "tta": False,
            "mirror_axes": [],
            "postprocessing": {},
            "monai": {"inferer": copy.deepcopy(self.inferer), "postprocessing": copy.deepcopy(self.postprocessing)},
        }
        overlap = self.inferer.get("overlap")
        if isinstance(overlap, (int, float)):
            inference["overlap"] = float(overlap)
        return {
            "name": self.name,
            "version": self.version,
            "title": readable_name(self.provenance.get("bundle_name") or self.name),
            "description": self.description,
            "modality": self.modality,
            "variant": MONAI_VARIANT,
            "spatial_dims": self.spatial_dims,
            "network": self.network_config(),
            "inputs": copy.deepcopy(self.inputs),
            "labels": [label_entry(lab["value"], lab["name"], i) for i, lab in enumerate(self.labels, start=1)],
            "preprocessing": pre,
            "inference": inference,
            "provenance": copy.deepcopy(self.provenance),
        }

    def _patch_size(self) -> list[int]:
        """The window in the project's ``(z, y, x)`` order: the inferer's roi, its -1 axes (and a whole-image
        inferer) taken from the metadata's input shape."""
        roi = self.inferer.get("roi_size") or [-1] * self.spatial_dims
        shape = self.input_shape or []
        patch = [r if r > 0 else (shape[i] if i < len(shape) else -1) for i, r in enumerate(roi)]
        if not all(isinstance(p, int) and p > 0 for p in patch):
            raise BundleError(
                f"The bundle runs its network on whole images (roi {roi}) and metadata.json gives no input "
                "spatial_shape, so the network's input size is unknown."
            )
        return patch[::-1]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under every name the network uses (aliases point at the same tensors)."""
        return restore_aliases(self.state_dict, self.aliases)

    def build(self, device: str = "cpu") -> nn.Module:
        """The network with its weights loaded strictly, in eval mode."""
        network = build_network(self.network_target, self.network_args)
        network.load_state_dict(self.full_state_dict(), strict=True)
        return network.to(device).eval()


def project_normalization(steps: list[dict]) -> dict | None:
    """The project's normalisation entry (``ct``/``zscore``/``rescale01``/``none``) equal to the bundle's
    intensity steps, or None when they are not exactly one of them.

    ``ScaleIntensityRange`` with ``clip`` is ``ct`` with ``clip=[a_min, a_max]`` and the mean/std that give the
    same linear map; a whole-image ``NormalizeIntensity`` (after any number of linear rescalings, which a
    z-score cancels) is ``zscore``; ``ScaleIntensity`` to [0, 1] is ``rescale01``.
    """
    intensity = [s for s in steps if s["op"] in ("scale_intensity_range", "normalize_intensity", "scale_intensity")]
    if not intensity:
        return {"scheme": "none"}
    last = intensity[-1]
    if last["op"] == "normalize_intensity":
        plain = last["subtrahend"] is None and last["divisor"] is None and not last["nonzero"]
        linear_before = all(s["op"] == "scale_intensity" and s["factor"] is None for s in intensity[:-1])
        return {"scheme": "zscore"} if plain and linear_before else None
    if len(intensity) > 1:
        return None
    if last["op"] == "scale_intensity":
        exact = last["minv"] == 0 and last["maxv"] == 1 and last["factor"] is None and not last["channel_wise"]
        return {"scheme": "rescale01"} if exact else None
    a_min, a_max, b_min, b_max = (last[k] for k in ("a_min", "a_max", "b_min", "b_max"))
    if not last["clip"] or a_max <= a_min:
        return None
    if b_min is None or b_max is None:
        b_min, b_max = 0.0, 1.0
    if b_max <= b_min:
        return None
    std = (a_max - a_min) / (b_max - b_min)
    return {"scheme": "ct", "mean": a_min - b_min * std, "std": std, "clip": [a_min, a_max]}


def read_bundle(path: str | os.PathLike, max_bytes: int = MAX_IMPORT_BYTES) -> MonaiBundle:
    """Read the MONAI bundle at ``path`` (a folder, or a zip of one) into a `MonaiBundle`.

    Raises `BundleError` (a `FormatError`, hence a ValueError) naming what is refused and why.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"No MONAI bundle at {p}.")
    files = BundleFiles(p, max_bytes)
    try:
        return _read(files, p)
    finally:
        files.close()


def _read(files: BundleFiles, path: Path) -> MonaiBundle:
    metadata = load_config(files.read(METADATA_FILE, MAX_CONFIG_BYTES), METADATA_FILE)
    config_rel = next((c for c in INFERENCE_CONFIGS if files.exists(c)), None)
    if config_rel is None:
        raise BundleError(f"The bundle has no {' or '.join(INFERENCE_CONFIGS[:2])}: nothing says how to run it.")
    resolver = Resolver(load_config(files.read(config_rel, MAX_CONFIG_BYTES), config_rel))

    image_key, pred_key, in_format, out_format = data_format(metadata)
    target, cls, args = read_network(resolver)
    bound = bound_network_args(cls, args)
    spatial_dims, in_channels, out_channels = (int(bound[k]) for k in ("spatial_dims", "in_channels", "out_channels"))
    ignored: list[dict] = [{"what": d, "why": "import statement; never run"} for d in resolver.dropped]
    preprocessing = read_steps(resolver, "preprocessing", image_key, PREPROCESSING_STEPS, ignored, spatial_dims)
    postprocessing = read_steps(resolver, "postprocessing", pred_key, POSTPROCESSING_STEPS, ignored, spatial_dims)
    check_output_steps(postprocessing)
    inferer = read_inferer(resolver, spatial_dims)

    num_inputs = int(in_format.get("num_channels", in_channels))
    if num_inputs != in_channels:
        raise BundleError(
            f"The network takes {in_channels} input channel(s) but metadata.json's input {image_key!r} has "
            f"{num_inputs}; bundles that feed the network extra channels (guidance, clicks) are not supported."
        )
    activation = next((s["function"] for s in postprocessing if s["op"] == "activation"), None)
    inputs = read_inputs(in_format, in_channels)
    labels = read_labels(out_format, out_channels, multi_label=activation == "sigmoid")

    network = build_network(target, args)
    weights_rel = weights_file(files)
    state = load_weights(files.read(weights_rel), weights_rel, load_dict_keys(resolver))
    unique, aliases = dedupe_state_dict(network, state)
    try:
        network.load_state_dict(restore_aliases(unique, aliases), strict=True)
    except RuntimeError as e:
        raise BundleError(f"{weights_rel} does not fit the bundle's network_def ({target}): {e}") from e

    provenance = {
        "format": MONAI_VARIANT,
        "source": path.name,
        "bundle_name": str(metadata.get("name") or files.root_name),
        "bundle_version": str(metadata.get("version", "")),
        "inference_config": config_rel,
        "weights": weights_rel,
        "files_sha256": dict(sorted(files.hashes.items())),
        **{k: str(metadata[k]) for k in ("monai_version", "pytorch_version", "authors", "copyright") if k in metadata},
    }
    if path.is_file():
        provenance["archive_sha256"] = sha256_file(path)
    if files.exists(TORCHSCRIPT_FILE):
        provenance["not_loaded"] = {TORCHSCRIPT_FILE: files.sha256_of(TORCHSCRIPT_FILE)}
        ignored.append({"what": TORCHSCRIPT_FILE, "why": "TorchScript is code; the state dict in model.pt is used"})
    if isinstance(metadata.get("data_source"), str):
        provenance["training_data"] = metadata["data_source"]
    licence = next((metadata[k] for k in ("license", "licence") if isinstance(metadata.get(k), str)), None)
    if licence:
        provenance["licence"] = licence
    return MonaiBundle(
        name=slug(str(metadata.get("name") or files.root_name)),
        version=str(metadata.get("version", "1")) or "1",
        description=str(metadata.get("description", "")),
        network_target=target,
        network_args=args,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        modality=read_modality(in_format),
        inputs=inputs,
        labels=labels,
        preprocessing=preprocessing,
        inferer=inferer,
        postprocessing=postprocessing,
        ignored=ignored,
        provenance=provenance,
        state_dict=unique,
        aliases=aliases,
        input_shape=_input_shape(in_format.get("spatial_shape"), spatial_dims),
    )


def _input_shape(value: Any, spatial_dims: int) -> list[int] | None:
    """metadata.json's input ``spatial_shape`` when it is ``spatial_dims`` positive integers (often it holds
    strings such as "8*n")."""
    ok = isinstance(value, list) and len(value) == spatial_dims
    return list(value) if ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value) else None
