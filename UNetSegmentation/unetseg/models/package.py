"""The model package: a folder (or a zip of one) holding ``model.json`` and the network's weights.

`ModelPackage` is the validated package (read-only views of its manifest); `load_package` opens a folder, its
manifest or a zip (`archive`), and `save_package` writes one. The manifest's rules are in `manifest`, the
weights' loading in `weights`.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from unetseg.image import Label
from unetseg.io.atomic import atomic_write
from unetseg.models import card
from unetseg.models.archive import extract_cached
from unetseg.models.manifest import (
    DEFAULT_INFERENCE,
    DEFAULT_ONNX,
    DEFAULT_PREPROCESSING,
    DEFAULT_WEIGHTS,
    FORMAT,
    MANIFEST_FILE,
    SHOWN,
    PackageError,
    jsonable,
    read_manifest,
    validate_manifest,
)
from unetseg.models.shared_tensors import aliases_metadata, split_aliases


@dataclass(frozen=True)
class ModelPackage:
    """A validated model package: its folder and its manifest (read-only views through the properties)."""

    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def description(self) -> str:
        return self.manifest.get("description", "")

    @property
    def modality(self) -> str:
        """ "CT", "MR" or "XR"."""
        return self.manifest["modality"]

    @property
    def variant(self) -> str:
        return self.manifest["variant"]

    @property
    def spatial_dims(self) -> int:
        return self.manifest["spatial_dims"]

    @property
    def labels(self) -> list[Label]:
        """The output classes without background, by value."""
        return sorted((Label.from_dict(d) for d in self.manifest["labels"]), key=lambda label: label.value)

    @property
    def input_names(self) -> list[str]:
        """One name per input image (e.g. MRI sequences), in channel order."""
        return [i["name"] for i in self.manifest["inputs"]]

    @property
    def network_config(self) -> dict:
        """A copy of the config `networks.build_network` rebuilds."""
        return copy.deepcopy(self.manifest["network"])

    @property
    def preprocessing(self) -> dict:
        """The preprocessing section with defaults filled in (a copy)."""
        return {**DEFAULT_PREPROCESSING, **copy.deepcopy(self.manifest["preprocessing"])}

    @property
    def inference(self) -> dict:
        """The inference defaults with defaults filled in (a copy)."""
        return {**DEFAULT_INFERENCE, **copy.deepcopy(self.manifest["inference"])}

    @property
    def provenance(self) -> dict:
        return copy.deepcopy(self.manifest.get("provenance", {}))

    @property
    def weights_path(self) -> Path:
        return self.path / self.manifest.get("weights", DEFAULT_WEIGHTS)

    @property
    def onnx_path(self) -> Path:
        """Where the ONNX export of the network is (or goes): the manifest's ``onnx`` or ``model.onnx``."""
        return self.path / self.manifest.get("onnx", DEFAULT_ONNX)

    def older_than_weights(self, export: Path) -> bool:
        """Whether the export file ``export`` is older than the weights file (the cheap test, no digest read)."""
        weights = self.weights_path
        return weights.is_file() and weights.stat().st_mtime > export.stat().st_mtime

    def summary(self) -> str:
        """One line: name, modality, variant, dimensionality and labels."""
        labels = ", ".join(label.name for label in self.labels)
        return f"{self.name}  [{self.modality}, {self.variant}, {self.spatial_dims}D]  {labels}"

    def describe(self) -> str:
        """A multi-line description for people: what the model reads, outputs and was trained on."""
        pre, inf, prov = self.preprocessing, self.inference, self.provenance
        lines = [
            f"{self.name} {self.version}" + (f": {self.description}" if self.description else ""),
            f"  modality {self.modality}, variant {self.variant}, {self.spatial_dims}D; folder {self.path}",
            f"  inputs: {', '.join(self.input_names)}",
            "  labels: " + ", ".join(f"{label.value}={label.name}" for label in self.labels),
            f"  spacing {pre['target_spacing'] or 'as input'} mm, orientation {pre['orientation'] or 'as input'}, "
            f"patch {inf['patch_size']}, overlap {inf['overlap']}",
        ]
        if prov:
            flat = ", ".join(f"{k} {v}" for k, v in prov.get("metrics", {}).items() if not isinstance(v, (dict, list)))
            lines.append(
                f"  trained on {prov.get('training_data', '?')} ({prov.get('cases', '?')} cases, "
                f"{prov.get('date', '?')}); licence {prov.get('licence', '?')}" + (f"; {flat}" if flat else "")
            )
            lines += [f"  {text}" for text in (card.measured(self), card.demonstration_note(self)) if text]
        return "\n".join(lines)


def load_package(path: str | os.PathLike) -> ModelPackage:
    """Open a package: a folder, its ``model.json``, or a ``.zip`` (extracted safely to a cache folder)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PackageError(
            f"No model at {p}: give a model folder (holding {MANIFEST_FILE}), a .zip of one, "
            "or the name of a model in the catalog (`unetseg models` lists them)."
        )
    if p.is_file() and p.suffix.lower() == ".zip":
        p = extract_cached(p)
    elif p.is_file() and p.name == MANIFEST_FILE:
        p = p.parent
    elif not p.is_dir():
        raise PackageError(f"{p} is not a model package: expected a folder, its {MANIFEST_FILE}, or a .zip.")
    folder = p.resolve()
    return ModelPackage(folder, read_manifest(folder))


def save_package(folder: str | os.PathLike, manifest: dict, state_dict: dict, half: bool = False) -> ModelPackage:
    """Write a package: the validated manifest and safetensors weights (fp16 storage with ``half``), atomically.

    A tensor the state dict holds under several names (DynUNet's ``skip_layers``) is stored once, the other names
    recorded in the file's metadata (`shared_tensors`).

    ``format`` and ``weights`` default to this format and ``weights.safetensors``. Each file replaces its
    predecessor only once fully written; other files in the folder (logs, plots) are left alone.
    """
    import torch
    from safetensors.torch import save_file

    manifest = json.loads(json.dumps({"format": FORMAT, "weights": DEFAULT_WEIGHTS, **manifest}, default=jsonable))
    validate_manifest(manifest)
    if not manifest["weights"].endswith(".safetensors"):
        raise PackageError(
            f"save_package writes safetensors; name the weights '*.safetensors', not {manifest['weights']!r}."
        )
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise PackageError(
            f"The state dict holds non-tensor values under {not_tensors[:SHOWN]}; pass model.state_dict()."
        )
    unique, aliases = split_aliases({k: v.detach() for k, v in state_dict.items()})  # DynUNet: each tensor once
    tensors = {
        k: v.to(device="cpu", dtype=torch.float16 if half and v.is_floating_point() else v.dtype, copy=True)
        .contiguous()
        for k, v in unique.items()
    }
    target = Path(folder).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    with atomic_write(target / manifest["weights"]) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, **aliases_metadata(aliases)})
    with atomic_write(target / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return load_package(target)
