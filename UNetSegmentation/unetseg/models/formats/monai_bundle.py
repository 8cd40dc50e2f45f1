"""Read a MONAI bundle (a folder or a zip of one) into a plain description this project can convert and run.

A bundle is ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) and ``models/model.pt`` (a state
dict) and/or ``models/model.ts`` (TorchScript). The configs are read with MONAI's own
`monai.bundle.ConfigParser` (references, relative ids, ``%`` macros of the same file and ``$`` expressions are
MONAI's, not re-implemented here), but nothing in a bundle is allowed to run code:

- **Network.** ``network_def``'s ``_target_`` must name one of the U-Net-family classes of `NETWORKS` (MONAI's
  ``UNet``, ``BasicUNet``, ``DynUNet``, ``AttentionUnet``, by short name or full ``monai.networks.nets`` path). A
  ``_target_`` can name any callable, so this allow-list is the security boundary: the name is checked before
  anything is resolved, and the class is then taken from the allow-list (not looked up from the config) and
  called with the plain values ConfigParser resolved for its arguments. A nested ``_target_`` in the arguments
  is refused.
- **Transforms and inferer.** Never instantiated: their arguments are read from the parsed config and turned
  into plain steps (`PREPROCESSING_STEPS`, `POSTPROCESSING_STEPS`). Reading/typing transforms are skipped
  (`IGNORED_TRANSFORMS`, listed in the description); any other transform is refused with its name.
- **Expressions.** ``$`` strings are Python that MONAI ``eval()``s. Every expression that resolving a value
  would evaluate (the value and everything it refers to, as MONAI's resolver finds them) is checked first with
  `check_expression`: constants, references, arithmetic, comparisons, list/dict literals, a few pure builtins
  (``len``, ``min``, ``max``…) and ``monai.utils.CommonKeys.X`` / ``torch.float32``-style dtype names only — no
  other calls, attributes, comprehensions or lambdas. Import statements (``"imports": ["$import glob"]``) are
  dropped before parsing (MONAI would import them on every resolve) and listed in the description. ``%`` macros
  that name another file are refused (MONAI would open that path relative to the working directory).
- **Weights.** ``models/model.pt`` is opened with ``torch.load(weights_only=True)`` through
  `unetseg.models.formats.checkpoint.load_checkpoint` (tensors, plain containers and numpy scalars only — the
  same rule as nnU-Net checkpoints), never a full unpickle; a TorchScript archive saved as ``model.pt`` is refused.
  ``models/model.ts`` is **not loaded**: ``torch.jit.load`` deserialises and compiles TorchScript code, and even
  reading its state dict that way runs that loader on untrusted input. A bundle with only ``model.ts`` is refused
  with the one-line command that turns it into a state dict, for a user who trusts the file. Tensors that the
  network holds under several names (DynUNet's ``skip_layers.*`` aliases) are stored once (`dedupe_state_dict`).
- **Files.** A zip is checked by `unetseg.models.formats.archive.check_zip` before anything is read from it (no
  absolute paths, ``..``, symbolic links, encrypted or repeated members; a size cap and a compression-ratio check
  against zip bombs) and the few files needed are read in memory, never extracted; in a folder, files that
  resolve outside the bundle are refused. ``large_files.yml`` download links are never followed.

`read_bundle` returns a `MonaiBundle`: everything JSON-serialisable (``to_dict``, ``to_manifest_fields``) plus
the de-duplicated state dict.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetseg.models.formats import FormatError
from unetseg.models.formats.archive import MAX_UNPACKED_BYTES, check_zip

if TYPE_CHECKING:
    import torch
    from torch import nn

SOURCE_FORMAT = "monai_bundle"
VARIANT = "monai"
"""The manifest ``variant`` of an imported bundle: the network is rebuilt from ``network.target``/``args``."""

METADATA_FILE = "configs/metadata.json"
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
WEIGHTS_FILE = "models/model.pt"
TORCHSCRIPT_FILE = "models/model.ts"
MAX_CONFIG_BYTES = 4 * 1024**2

# Allowed networks: canonical target -> (module, class, the names a config may use for it).
NETWORKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "monai.networks.nets.UNet": ("monai.networks.nets.unet", "UNet", ("UNet", "Unet")),
    "monai.networks.nets.BasicUNet": (
        "monai.networks.nets.basic_unet",
        "BasicUNet",
        ("BasicUNet", "BasicUnet", "Basicunet", "basicunet"),
    ),
    "monai.networks.nets.DynUNet": ("monai.networks.nets.dynunet", "DynUNet", ("DynUNet", "DynUnet", "Dynunet")),
    "monai.networks.nets.AttentionUnet": ("monai.networks.nets.attentionunet", "AttentionUnet", ("AttentionUnet",)),
}

# Transforms read into steps (name without the dictionary suffix -> step op); the rest is refused unless ignored.
PREPROCESSING_STEPS = {
    "Orientation": "orientation",
    "Spacing": "spacing",
    "ScaleIntensityRange": "scale_intensity_range",
    "NormalizeIntensity": "normalize_intensity",
    "ScaleIntensity": "scale_intensity",
}
POSTPROCESSING_STEPS = {
    "Activations": "activation",
    "AsDiscrete": "discretize",
    "KeepLargestConnectedComponent": "keep_largest_component",
    "Invert": "invert",
}
IGNORED_TRANSFORMS = {
    "LoadImage": "reads the file (this predictor reads the image itself)",
    "EnsureChannelFirst": "moves the channel axis first (array layout only)",
    "AddChannel": "adds a channel axis (array layout only)",
    "EnsureType": "converts the array type only",
    "ToTensor": "converts the array type only",
    "ToNumpy": "converts the array type only",
    "ToDevice": "moves data to a device only",
    "Identity": "does nothing",
    "FromMetaTensor": "converts the array type only",
    "SaveImage": "writes the result (this predictor writes its own)",
    "CopyItems": "copies dictionary entries only",
    "DeleteItems": "deletes dictionary entries only",
}
SUPPORTED_INFERERS = ("SlidingWindowInferer", "SlidingWindowInfererAdapt", "SimpleInferer", "SliceInferer")

_ARGUMENT_KEYS = ("keys", "allow_missing_keys", "lazy", "meta_keys", "meta_key_postfix")
_NON_ARG_KEYS = ("_target_", "_desc_", "_requires_", "_disabled_", "_mode_")
_REF_VARS = "__local_refs"  # MONAI's ReferenceResolver._vars: "@id" in an expression becomes __local_refs['id']
_PURE_BUILTINS = ("len", "min", "max", "abs", "round", "int", "float", "bool", "str", "tuple", "list")
_DTYPE_NAMES = re.compile(r"^(bool_?|u?int(8|16|32|64)|float(16|32|64)|bfloat16|half|float|double)$")
_MAX_EXPRESSION_NODES = 200
_MAX_EXPRESSION_INT = 10**6
_MAX_MULTIPLICATIONS = 2
"""Size limits on expressions (nodes, numbers, multiplications) keep them small; a hostile expression can still
ask for a large list ("[0] * 10**6 * 10**6" fails with MemoryError), but never run code."""
_SHOWN = 5


class BundleError(FormatError):
    """A MONAI bundle that cannot be imported; the message says what and, where possible, how to fix it."""


# ---------------------------------------------------------------------------------------------- description


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
            "variant": VARIANT,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": max(num_classes, 2),
            "target": self.network_target,
            "args": copy.deepcopy(self.network_args),
            "aliases": dict(self.aliases),
        }

    def to_manifest_fields(self) -> dict:
        """The fields of this project's ``model.json`` that the bundle determines (JSON-serialisable).

        ``preprocessing.monai_steps`` / ``inference.monai_inferer`` / ``inference.postprocessing.monai_steps``
        are authoritative (MONAI's semantics, for parity with ``python -m monai.bundle run``). The project's
        own keys are filled where they say the same: ``orientation``, ``target_spacing`` (when every axis is
        resampled), ``normalization`` (when the intensity steps are exactly one of the project's schemes,
        otherwise absent), ``patch_size``/``overlap`` (sliding window). ``name`` is a suggestion; ``modality``
        is None when the metadata does not say (the importer must then ask).
        """
        pre: dict[str, Any] = {"monai_steps": copy.deepcopy(self.preprocessing)}
        for step in self.preprocessing:
            if step["op"] == "orientation":
                pre["orientation"] = step["axcodes"] if len(step["axcodes"]) == 3 else None
            elif step["op"] == "spacing" and len(step["pixdim"]) == 3 and all(p > 0 for p in step["pixdim"]):
                pre["target_spacing"] = list(step["pixdim"])
        if self.inferer.get("kind") == "slices":
            pre["slice_wise"] = True  # the 2D network runs slice by slice (monai_inferer.spatial_dim names the axis)
        normalization = project_normalization(self.preprocessing)
        if normalization is not None:
            pre["normalization"] = [copy.deepcopy(normalization) for _ in self.inputs]
        inference: dict[str, Any] = {
            "monai_inferer": copy.deepcopy(self.inferer),
            "tta": False,
            "mirror_axes": [],
            "postprocessing": {"monai_steps": copy.deepcopy(self.postprocessing)},
        }
        roi = self.inferer.get("roi_size")
        if roi and all(isinstance(r, int) and r > 0 for r in roi):
            inference["patch_size"] = list(roi)
        overlap = self.inferer.get("overlap")
        if isinstance(overlap, (int, float)):
            inference["overlap"] = float(overlap)
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "modality": self.modality,
            "variant": VARIANT,
            "spatial_dims": self.spatial_dims,
            "network": self.network_config(),
            "inputs": copy.deepcopy(self.inputs),
            "labels": copy.deepcopy(self.labels),
            "preprocessing": pre,
            "inference": inference,
            "provenance": copy.deepcopy(self.provenance),
        }

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


# ---------------------------------------------------------------------------------------------- networks


def network_class(target: Any) -> tuple[str, type]:
    """The allowed class a ``_target_`` names, with its canonical target; a `BundleError` for anything else."""
    import importlib

    if isinstance(target, str):
        for canonical, (module, cls_name, names) in NETWORKS.items():
            accepted = {*names, *(f"monai.networks.nets.{n}" for n in names), *(f"{module}.{n}" for n in names)}
            if target in accepted:
                return canonical, getattr(importlib.import_module(module), cls_name)
    allowed = ", ".join(c.rsplit(".", 1)[1] for c in NETWORKS)
    raise BundleError(
        f"Refusing the bundle's network_def: _target_ {target!r} is not one of the networks this extension "
        f"imports ({allowed}, from monai.networks.nets). A _target_ can name any Python callable, so other "
        "targets are never called."
    )


def build_network(target: str, args: dict) -> nn.Module:
    """The allowed MONAI network ``target`` built with ``args`` (plain values, as `to_dict` stores them)."""
    _, cls = network_class(target)
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise BundleError(f"network_def cannot build {cls.__name__} from its arguments {args}: {e}") from e


def _bound_network_args(cls: type, args: dict) -> dict:
    try:
        bound = inspect.signature(cls).bind(**args)
    except TypeError as e:
        raise BundleError(f"network_def's arguments do not fit {cls.__name__}: {e}") from e
    bound.apply_defaults()
    return dict(bound.arguments)


# ---------------------------------------------------------------------------------------------- state dicts


def dedupe_state_dict(network: nn.Module, state: dict) -> tuple[dict, dict[str, str]]:
    """Store each tensor of ``state`` once: ``(unique, aliases)`` with ``aliases[name] = stored name``.

    Aliases come from the network itself — names under which its ``state_dict`` holds one and the same tensor
    (DynUNet reaches its encoder again through ``skip_layers``) — so the file's own storage sharing does not
    matter. Every name of a group that the file holds must carry equal values (a file whose copies disagree
    is refused: loading it would keep whichever came last). Unrelated tensors are never merged.
    """
    import torch

    groups: dict[int, list[str]] = {}
    for name, tensor in network.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    unique, aliases = {}, {}
    for names in groups.values():
        present = [n for n in names if n in state]
        if not present:
            continue  # a missing key; the strict load reports it
        keep = present[0]
        for other in present[1:]:
            a, b = state[keep], state[other]
            if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
                raise BundleError(
                    f"The weights hold {keep} and {other}, one and the same tensor of the network, with different "
                    "values; the file is inconsistent."
                )
        unique[keep] = state[keep]
        aliases.update({n: keep for n in names if n != keep})
    known = {n for names in groups.values() for n in names}
    unique.update({k: v for k, v in state.items() if k not in known})  # unexpected keys: the strict load reports
    return unique, aliases


def restore_aliases(unique: dict, aliases: dict[str, str]) -> dict:
    """The full state dict: ``unique`` plus each alias bound to its stored tensor (no copies)."""
    missing = sorted({target for target in aliases.values() if target not in unique})
    if missing:
        raise BundleError(f"The stored weights lack {', '.join(missing[:_SHOWN])}, which aliases point at.")
    return {**unique, **{alias: unique[target] for alias, target in aliases.items()}}


def load_weights(data: bytes, source: str, load_dict_keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict from the bytes of a ``model.pt``, opened with ``torch.load(weights_only=True)`` and the
    numpy-scalar allow-list of `unetseg.models.formats.checkpoint` (a training checkpoint may hold metrics)."""
    from unetseg.models.formats.checkpoint import load_checkpoint

    if _is_torchscript(data):
        raise BundleError(
            f"Refusing {source}: it is a TorchScript archive, which is code, not a state dict. "
            + _torchscript_advice(source)
        )
    try:
        obj = load_checkpoint(io.BytesIO(data), what=source)  # weights_only=True plus numpy scalars, nothing else
    except BundleError:
        raise
    except FormatError as e:
        raise BundleError(str(e)) from e
    state = _state_dict_in(obj, (*load_dict_keys, "model", "state_dict", "network", "net"))
    if state is None:
        raise BundleError(
            f"{source} holds no state dict (a dict of tensors, or a checkpoint with one under "
            f"{', '.join((*load_dict_keys, 'model', 'state_dict'))})."
        )
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _state_dict_in(obj: Any, keys: tuple[str, ...]) -> dict | None:
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                return _state_dict_in(obj[key], keys)
    return None


def _is_torchscript(data: bytes) -> bool:
    """A TorchScript archive: a zip holding ``*/constants.pkl`` or ``*/code/`` beside the pickled data."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _torchscript_advice(source: str) -> str:
    return (
        "TorchScript is code: loading it (torch.jit.load, even only to read its weights) runs a compiler on the "
        "file, so this extension never does. If you trust the file, turn it into a state dict once and import "
        "the bundle again: python -c \"import torch; torch.save(torch.jit.load('models/model.ts').state_dict(), "
        f"'models/model.pt')\" (in the bundle folder; {source})."
    )


# ---------------------------------------------------------------------------------------------- files


class _BundleFiles:
    """The bundle's files under its root, from a folder or a zip (read in memory, never extracted)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.hashes: dict[str, str] = {}
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise BundleError(f"{path} is not a readable zip file ({e}).") from e
            self._prefix = bundle_zip_prefix(self._zip, max_bytes, str(path))
            self._members = {i.filename.replace("\\", "/"): i for i in self._zip.infolist()}
            self.root_name = self._prefix.rstrip("/").rsplit("/", 1)[-1] or path.stem
        else:
            if not (path / METADATA_FILE).is_file():
                raise BundleError(f"{path} is not a MONAI bundle: it has no {METADATA_FILE}.")
            self.root = path.resolve()
            self.root_name = self.root.name

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def exists(self, rel: str) -> bool:
        if self._zip is not None:
            return self._prefix + rel in self._members
        return (self.path / rel).is_file()

    def read(self, rel: str, limit: int | None = None) -> bytes:
        """The bytes of ``rel`` (recorded with their sha256); refused past ``limit`` or outside the bundle."""
        limit = self.max_bytes if limit is None else limit
        if self._zip is not None:
            info = self._members[self._prefix + rel]
            if info.file_size > limit:
                raise BundleError(f"{rel} in the bundle is {info.file_size} bytes, above the {limit} byte cap.")
            try:
                with self._zip.open(info) as f:  # zipfile stops at the header's size and checks the CRC
                    data = f.read(limit + 1)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BundleError(f"Cannot read {rel} from the zip ({e}).") from e
        else:
            full = (self.path / rel).resolve()
            if not full.is_relative_to(self.root):
                raise BundleError(f"Refusing {rel}: it is a link that leads outside the bundle folder ({full}).")
            if full.stat().st_size > limit:
                raise BundleError(f"{rel} in the bundle is {full.stat().st_size} bytes, above the {limit} byte cap.")
            data = full.read_bytes()
        if len(data) > limit:
            raise BundleError(f"{rel} in the bundle is larger than the {limit} byte cap.")
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return data

    def sha256_of(self, rel: str) -> str:
        """The sha256 of a file that is listed but not loaded (streamed; nothing is interpreted)."""
        digest = hashlib.sha256()
        if self._zip is not None:
            try:
                with self._zip.open(self._members[self._prefix + rel]) as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BundleError(f"Cannot read {rel} from the zip ({e}).") from e
        else:
            full = (self.path / rel).resolve()
            if not full.is_relative_to(self.root):
                raise BundleError(f"Refusing {rel}: it is a link that leads outside the bundle folder ({full}).")
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def bundle_zip_prefix(zf: zipfile.ZipFile, max_bytes: int = MAX_UNPACKED_BYTES, label: str | None = None) -> str:
    """Check a bundle zip before anything is read from it; return the folder prefix holding ``configs/``.

    `unetseg.models.formats.archive.check_zip` refuses absolute paths, ``..`` components, symbolic links,
    encrypted or repeated members, too many entries and zip bombs (size cap, compression ratio).
    """
    try:
        names = check_zip(zf, max_bytes, label)
    except BundleError:
        raise
    except FormatError as e:
        raise BundleError(str(e)) from e
    metas = sorted(
        (n for n in names if n == METADATA_FILE or (n.endswith("/" + METADATA_FILE) and n.count("/") == 2)),
        key=lambda n: n.count("/"),
    )
    if not metas:
        raise BundleError(
            f"The zip holds no {METADATA_FILE} at its top level or in a top-level folder: it is not a MONAI bundle."
        )
    if len(metas) > 1 and metas[1].count("/") == metas[0].count("/"):
        raise BundleError(f"The zip holds several bundles ({', '.join(metas)}); zip one bundle per file.")
    return metas[0][: -len(METADATA_FILE)]


def _load_config(data: bytes, rel: str) -> dict:
    """A JSON or YAML config as a dict (UTF-8; duplicate JSON keys refused, as MONAI does)."""

    def no_duplicates(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise BundleError(f"{rel} repeats the key(s) {', '.join(repeated)}.")
        return dict(pairs)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{rel} is not UTF-8 text ({e}).") from e
    if rel.endswith(".json"):
        try:
            config = json.loads(text, object_pairs_hook=no_duplicates)
        except BundleError:
            raise
        except ValueError as e:
            raise BundleError(f"{rel} is not valid JSON ({e}).") from e
    else:
        try:
            import yaml
        except ImportError as e:
            raise BundleError(f"{rel} is YAML; install PyYAML (pip install pyyaml) to import this bundle.") from e
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BundleError(f"{rel} is not valid YAML ({e}).") from e
    if not isinstance(config, dict):
        raise BundleError(f"{rel} must hold a mapping (a JSON object) at its top level.")
    return config


# ---------------------------------------------------------------------------------------------- expressions


def check_expression(expression: str, where: str) -> None:
    """Refuse a ``$`` expression (as MONAI's resolver hands it over, references already ``__local_refs['id']``)
    unless it only combines constants, references and plain data — so ``eval()`` cannot call anything."""
    body = expression[1:] if expression.startswith("$") else expression
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as e:
        raise BundleError(f"Refusing the expression {expression!r} at {where}: not Python ({e.msg}).") from e
    nodes = list(ast.walk(tree))
    problem = None
    if len(nodes) > _MAX_EXPRESSION_NODES:
        problem = "too long"
    elif sum(isinstance(n, ast.Mult) for n in nodes) > _MAX_MULTIPLICATIONS:
        problem = f"more than {_MAX_MULTIPLICATIONS} multiplications"
    allowed_names = _allowed_name_nodes(tree)
    for node in nodes:
        if problem:
            break
        problem = _expression_node_problem(node, allowed_names)
    if problem:
        raise BundleError(
            f"Refusing the expression {expression!r} at {where}: {problem}. Bundle expressions are Python that "
            "MONAI would eval(); this extension evaluates only constants, references (@id), arithmetic, "
            f"comparisons, list/dict literals, {'/'.join(_PURE_BUILTINS)} and monai.utils.CommonKeys / dtype names."
        )


def _allowed_name_nodes(tree: ast.AST) -> set[int]:
    """ids of the Name/Attribute nodes that are allowed where they stand (references, builtins, constants)."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == _REF_VARS
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            allowed.add(id(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _PURE_BUILTINS:
            allowed.add(id(node.func))
        elif isinstance(node, ast.Attribute) and _constant_attribute(node):
            allowed.update(id(n) for n in ast.walk(node))
    return allowed


def _constant_attribute(node: ast.Attribute) -> bool:
    """``monai.utils.CommonKeys.IMAGE``-style key names and ``torch.float32``-style dtype names."""
    parts, current = [], node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return False
    dotted = [current.id, *reversed(parts)]
    if dotted[:3] == ["monai", "utils", "CommonKeys"] and len(dotted) == 4:
        return dotted[3].isupper()
    return len(dotted) == 2 and dotted[0] in ("torch", "numpy", "np") and bool(_DTYPE_NAMES.match(dotted[1]))


_SAFE_NODES = (
    ast.Expression,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.Subscript,
    ast.Slice,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Attribute,
    ast.Load,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
)


def _expression_node_problem(node: ast.AST, allowed_names: set[int]) -> str | None:
    if not isinstance(node, _SAFE_NODES):
        return f"it uses {type(node).__name__}"
    if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in allowed_names:
        return f"it names {ast.unparse(node)!r}"
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in _PURE_BUILTINS):
            return f"it calls {ast.unparse(node.func)!r}"
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            return "it calls a function with keyword or starred arguments"
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_EXPRESSION_INT:
            return f"it holds the large number {value}"
        if isinstance(value, (str, bytes)) and len(value) > 10_000:
            return "it holds a very long string"
    return None


def _sanitize(config: Any, where: str, dropped: list[str]) -> Any:
    """A copy of the raw config without import statements (MONAI imports them on every resolve); file macros
    (``%other.json#id``) are refused: MONAI would open that path relative to the working directory."""
    from monai.bundle import ConfigParser
    from monai.bundle.config_item import ConfigExpression

    if isinstance(config, dict):
        return {k: _sanitize(v, f"{where}::{k}" if where else str(k), dropped) for k, v in config.items()}
    if isinstance(config, list):
        return [_sanitize(v, f"{where}::{i}", dropped) for i, v in enumerate(config)]
    if isinstance(config, str) and config.startswith("%"):
        path, _ = ConfigParser.split_path_id(config[1:])
        if path:
            raise BundleError(
                f"Refusing the macro {config!r} at {where}: it reads another file ({path}); this extension reads "
                "only the bundle's own inference config."
            )
    if ConfigExpression.is_expression(config) and "import" in config:
        try:
            is_import = ConfigExpression.is_import_statement(config)
        except SyntaxError:
            is_import = True  # MONAI's resolver would fail on it anyway; it cannot be needed
        if is_import:
            dropped.append(f"{where}: {config}")
            return None
    return config


class _Resolver:
    """MONAI's ConfigParser over the sanitised config, resolving single ids only after checking every
    expression the resolution would evaluate."""

    def __init__(self, config: dict) -> None:
        from monai.bundle import ConfigParser

        self.dropped: list[str] = []
        clean = _sanitize(config, "", self.dropped)
        self.parser = ConfigParser(clean)
        self.raw = clean

    def has(self, id: str) -> bool:
        return id in self.parser

    def get_raw(self, id: str) -> Any:
        return self.parser.get(id)

    def unevaluated(self, id: str) -> Any:
        """``id`` resolved without evaluating or instantiating anything (ConfigItem objects stay as they are)."""
        self.parser.parse(reset=True)
        return self.parser.get_parsed_content(id, instantiate=False, eval_expr=False)

    def resolve(self, id: str, allow_components: bool = True) -> Any:
        """The value of ``id`` with its expressions evaluated and nothing instantiated (components stay
        `ConfigComponent` objects); every expression on the way is checked first."""
        from monai.bundle.config_item import ConfigComponent, ConfigExpression

        self.unevaluated(id)
        for item_id, item in self.parser.ref_resolver.resolved_content.items():
            if isinstance(item, ConfigExpression):
                check_expression(item.get_config(), item_id)
            elif isinstance(item, ConfigComponent) and not allow_components and item_id != id:
                raise BundleError(
                    f"Refusing {id}: it reaches the component {item_id} ({item.get_config().get('_target_')!r}); "
                    "only plain values are allowed there."
                )
        self.parser.parse(reset=True)
        try:
            return self.parser.get_parsed_content(id, instantiate=False, eval_expr=True)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise BundleError(f"The bundle's config cannot resolve {id}: {e}") from e


def _plain(value: Any, where: str) -> Any:
    """A resolved value as JSON data (tuples become lists); components and other objects are refused."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BundleError(f"{where} is {value}; only finite numbers are allowed.")
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _plain(value.item(), where)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}::{k}") for k, v in value.items()}
    raise BundleError(f"{where} resolves to {type(value).__name__}, not plain data (numbers, strings, lists).")


# ---------------------------------------------------------------------------------------------- reading


def read_bundle(path: str | os.PathLike, max_bytes: int = MAX_UNPACKED_BYTES) -> MonaiBundle:
    """Read the MONAI bundle at ``path`` (a folder, or a zip of one) into a `MonaiBundle`.

    Raises `BundleError` (a `FormatError`, hence a ValueError) naming what is refused and why.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"No MONAI bundle at {p}.")
    files = _BundleFiles(p, max_bytes)
    try:
        return _read(files, p)
    finally:
        files.close()


def _read(files: _BundleFiles, path: Path) -> MonaiBundle:
    metadata = _load_config(files.read(METADATA_FILE, MAX_CONFIG_BYTES), METADATA_FILE)
    config_rel = next((c for c in INFERENCE_CONFIGS if files.exists(c)), None)
    if config_rel is None:
        raise BundleError(f"The bundle has no {' or '.join(INFERENCE_CONFIGS[:2])}: nothing says how to run it.")
    resolver = _Resolver(_load_config(files.read(config_rel, MAX_CONFIG_BYTES), config_rel))

    image_key, pred_key, in_format, out_format = _data_format(metadata)
    target, cls, args = _network(resolver)
    bound = _bound_network_args(cls, args)
    spatial_dims, in_channels, out_channels = (int(bound[k]) for k in ("spatial_dims", "in_channels", "out_channels"))
    ignored: list[dict] = [{"what": d, "why": "import statement; never run"} for d in resolver.dropped]
    preprocessing = _steps(resolver, "preprocessing", image_key, PREPROCESSING_STEPS, ignored, spatial_dims)
    postprocessing = _steps(resolver, "postprocessing", pred_key, POSTPROCESSING_STEPS, ignored, spatial_dims)
    _check_output_steps(postprocessing)
    inferer = _inferer(resolver, spatial_dims)

    num_inputs = int(in_format.get("num_channels", in_channels))
    if num_inputs != in_channels:
        raise BundleError(
            f"The network takes {in_channels} input channel(s) but metadata.json's input {image_key!r} has "
            f"{num_inputs}; bundles that feed the network extra channels (guidance, clicks) are not supported."
        )
    activation = next((s["function"] for s in postprocessing if s["op"] == "activation"), None)
    inputs = _inputs(in_format, in_channels)
    labels = _labels(out_format, out_channels, multi_label=activation == "sigmoid")

    network = build_network(target, args)
    weights_rel = _weights_file(files)
    state = load_weights(files.read(weights_rel), weights_rel, _load_dict_keys(resolver))
    unique, aliases = dedupe_state_dict(network, state)
    try:
        network.load_state_dict(restore_aliases(unique, aliases), strict=True)
    except RuntimeError as e:
        raise BundleError(f"{weights_rel} does not fit the bundle's network_def ({target}): {e}") from e

    provenance = {
        "source_format": SOURCE_FORMAT,
        "source": path.name,
        "bundle_name": str(metadata.get("name") or files.root_name),
        "bundle_version": str(metadata.get("version", "")),
        "inference_config": config_rel,
        "weights": weights_rel,
        "files_sha256": dict(sorted(files.hashes.items())),
        **{k: str(metadata[k]) for k in ("monai_version", "pytorch_version", "authors", "copyright") if k in metadata},
    }
    if path.is_file():
        provenance["archive_sha256"] = _file_sha256(path)
    if files.exists(TORCHSCRIPT_FILE):
        provenance["not_loaded"] = {TORCHSCRIPT_FILE: files.sha256_of(TORCHSCRIPT_FILE)}
        ignored.append({"what": TORCHSCRIPT_FILE, "why": "TorchScript is code; the state dict in model.pt is used"})
    licence = next((metadata[k] for k in ("license", "licence") if isinstance(metadata.get(k), str)), None)
    if licence:
        provenance["licence"] = licence
    return MonaiBundle(
        name=_slug(str(metadata.get("name") or files.root_name)),
        version=str(metadata.get("version", "1")) or "1",
        description=str(metadata.get("description", "")),
        network_target=target,
        network_args=args,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        modality=_modality(in_format),
        inputs=inputs,
        labels=labels,
        preprocessing=preprocessing,
        inferer=inferer,
        postprocessing=postprocessing,
        ignored=ignored,
        provenance=provenance,
        state_dict=unique,
        aliases=aliases,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_file(files: _BundleFiles) -> str:
    if files.exists(WEIGHTS_FILE):
        return WEIGHTS_FILE
    if files.exists(TORCHSCRIPT_FILE):
        raise BundleError(
            f"The bundle has only {TORCHSCRIPT_FILE} and no {WEIGHTS_FILE}. " + _torchscript_advice(TORCHSCRIPT_FILE)
        )
    raise BundleError(
        f"The bundle has no {WEIGHTS_FILE}. Bundles often list their weights in large_files.yml for download; "
        "this extension never downloads: fetch the weights into models/ first."
    )


def _load_dict_keys(resolver: _Resolver) -> tuple[str, ...]:
    """The keys a bundle's CheckpointLoader reads the network from (``load_dict``), read without resolving."""
    keys: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).endswith("CheckpointLoader") and isinstance(node.get("load_dict"), dict):
                keys.extend(str(k) for k in node["load_dict"])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(resolver.raw)
    return tuple(dict.fromkeys(keys))


def _data_format(metadata: dict) -> tuple[str, str, dict, dict]:
    fmt = metadata.get("network_data_format")
    if not isinstance(fmt, dict) or not isinstance(fmt.get("inputs"), dict) or not isinstance(fmt.get("outputs"), dict):
        raise BundleError(f"{METADATA_FILE} lacks network_data_format.inputs/outputs (the MONAI bundle schema).")
    inputs, outputs = fmt["inputs"], fmt["outputs"]
    if len(inputs) != 1:
        raise BundleError(
            f"{METADATA_FILE} declares {len(inputs)} network inputs ({', '.join(inputs)}); one image input "
            "(its channels may be several sequences) is supported."
        )
    image_key = next(iter(inputs))
    pred_key = "pred" if "pred" in outputs else next(iter(outputs), "pred")
    in_format = inputs[image_key] if isinstance(inputs[image_key], dict) else {}
    out_format = outputs.get(pred_key) if isinstance(outputs.get(pred_key), dict) else {}
    return image_key, pred_key, in_format, out_format


def _network(resolver: _Resolver) -> tuple[str, type, dict]:
    if not resolver.has("network_def"):
        raise BundleError("The bundle's inference config has no network_def.")
    raw = resolver.get_raw("network_def")
    if not isinstance(raw, dict) or "_target_" not in raw:
        raise BundleError(
            f"The bundle's network_def is {str(raw)[:80]!r}, not a {{'_target_': ...}} entry; only a network "
            "named by _target_ (and checked against the allow-list) can be imported."
        )
    target, cls = network_class(raw["_target_"])  # before anything is resolved
    for key in ("_mode_", "_requires_"):
        if key in raw:
            raise BundleError(f"Refusing network_def: it sets {key}, which this extension does not support.")
    resolved = resolver.resolve("network_def", allow_components=False)
    config = resolved.get_config() if hasattr(resolved, "get_config") else resolved
    if config.get("_disabled_") not in (None, False, "false", "False"):
        raise BundleError("The bundle's network_def is disabled (_disabled_); there is no network to import.")
    args = {k: _plain(v, f"network_def::{k}") for k, v in config.items() if k not in _NON_ARG_KEYS}
    return target, cls, args


def _transform_name(target: Any) -> str | None:
    """The class name of a MONAI transform ``_target_`` without its dictionary suffix; None if not MONAI's."""
    if not isinstance(target, str):
        return None
    module, _, name = target.rpartition(".")
    if module and not (module == "monai.transforms" or module.startswith("monai.transforms.")):
        return None
    for suffix in ("Dict", "D", "d"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and (
            base in PREPROCESSING_STEPS or base in POSTPROCESSING_STEPS or base in IGNORED_TRANSFORMS
        ):
            return base
    return name


def _transform_ids(resolver: _Resolver, list_id: str, depth: int = 0) -> list[tuple[str, dict]]:
    """The ids and raw configs of the transforms in the list at ``list_id``, following pure references."""
    from monai.bundle.config_item import ConfigExpression, ConfigItem

    if depth > 8:
        raise BundleError(f"{list_id}: references nest too deeply.")
    value = resolver.unevaluated(list_id)
    if isinstance(value, ConfigExpression):
        refs = _concatenated_refs(value.get_config())
        if refs is None:
            raise BundleError(
                f"Refusing {list_id} = {resolver.get_raw(list_id)!r}: a transform list may be a list or a sum of "
                "references (@a + @b), nothing computed."
            )
        return [t for ref in refs for t in _transform_ids(resolver, ref, depth + 1)]
    if not isinstance(value, list):
        raise BundleError(f"{list_id} is not a list of transforms.")
    found = []
    for i, item in enumerate(value):
        if isinstance(item, ConfigItem):
            item_id = item.get_id()
        elif isinstance(item, dict):
            item_id = f"{list_id}::{i}"
        else:
            raise BundleError(f"{list_id}::{i} is not a transform ({str(item)[:60]!r}).")
        raw = resolver.get_raw(item_id)
        if not isinstance(raw, dict) or "_target_" not in raw:
            raise BundleError(f"{item_id} is not a transform entry with a _target_.")
        found.append((item_id, raw))
    return found


def _concatenated_refs(expression: str) -> list[str] | None:
    """``["a", "b"]`` for ``$__local_refs['a'] + __local_refs['b']``; None for anything else."""
    try:
        node = ast.parse(expression[1:].strip(), mode="eval").body
    except SyntaxError:
        return None
    refs: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
            stack += [n.right, n.left]
        elif (
            isinstance(n, ast.Subscript)
            and isinstance(n.value, ast.Name)
            and n.value.id == _REF_VARS
            and isinstance(n.slice, ast.Constant)
        ):
            refs.append(str(n.slice.value))
        else:
            return None
    return refs


def _compose_list_id(resolver: _Resolver, id: str) -> str:
    raw = resolver.get_raw(id)
    if isinstance(raw, dict) and isinstance(raw.get("_target_"), str) and raw["_target_"].endswith("Compose"):
        if _transform_name(raw["_target_"]) != "Compose":
            raise BundleError(f"{id} is a {raw['_target_']!r}, not MONAI's Compose.")
        return f"{id}::transforms"
    if isinstance(raw, (list, str)):
        return id
    raise BundleError(f"The bundle's {id} is not a Compose of transforms (or a list of them).")


def _steps(
    resolver: _Resolver, id: str, key: str, supported: dict, ignored: list[dict], spatial_dims: int
) -> list[dict]:
    """The steps the ``id`` Compose applies to ``key``: supported ones read, reading/typing ones skipped."""
    if not resolver.has(id):
        if id == "postprocessing":
            raise BundleError("The bundle's inference config has no postprocessing: nothing turns scores into labels.")
        return []
    steps = []
    for item_id, raw in _transform_ids(resolver, _compose_list_id(resolver, id)):
        target = raw["_target_"]
        name = _transform_name(target)
        if "_disabled_" in raw and _truthy(resolver.resolve(f"{item_id}::_disabled_")):
            ignored.append({"what": f"{item_id} ({target})", "why": "disabled"})
            continue
        if name in IGNORED_TRANSFORMS:
            ignored.append({"what": f"{item_id} ({target})", "why": IGNORED_TRANSFORMS[name]})
            continue
        if "keys" in raw:
            keys = _plain(resolver.resolve(f"{item_id}::keys"), f"{item_id}::keys") if "keys" in raw else []
            keys = [keys] if isinstance(keys, str) else list(keys or [])
            if key not in keys:
                ignored.append({"what": f"{item_id} ({target})", "why": f"does not touch {key!r}"})
                continue
        else:
            keys = [key]
        if name not in supported:
            known = ", ".join(sorted({*supported, *IGNORED_TRANSFORMS}))
            raise BundleError(
                f"Refusing the bundle: its {id} uses {target!r} ({item_id}), which this extension does not "
                f"support. Supported in {id}: {', '.join(supported)} (and, skipped as they do not change values: "
                f"{known})."
            )
        steps.append(_step(resolver, item_id, raw, name, supported[name], keys.index(key), spatial_dims))
    return steps


def _truthy(value: Any) -> bool:
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def _step(resolver: _Resolver, item_id: str, raw: dict, name: str, op: str, key_index: int, spatial_dims: int) -> dict:
    """One supported transform as a plain step; arguments not read must hold MONAI's default."""
    import monai.transforms

    target = raw["_target_"]
    cls_name = target.rpartition(".")[2]  # name plus "", "d", "D" or "Dict": a class of monai.transforms
    if cls_name not in (name, f"{name}d", f"{name}D", f"{name}Dict"):
        raise BundleError(f"Refusing {target!r} ({item_id}): not a MONAI transform name.")
    signature = inspect.signature(getattr(monai.transforms, cls_name))
    if op == "invert":
        # Invertd's other arguments are plumbing (which transform, which meta keys); only how it resamples counts.
        if raw.get("post_func") is not None:
            raise BundleError(f"Refusing {target} ({item_id}): post_func (a custom function) is not supported.")
        nearest = resolver.resolve(f"{item_id}::nearest_interp") if "nearest_interp" in raw else True
        return {"op": op, "transform": str(target), "nearest_interp": bool(_per_key(nearest, key_index))}
    args = {}
    for arg in raw:
        if arg in _NON_ARG_KEYS or arg in _ARGUMENT_KEYS:
            continue
        if arg not in signature.parameters:
            raise BundleError(f"Refusing {target} ({item_id}): {arg!r} is not an argument of MONAI's {name}.")
        args[arg] = _plain(_dtype_name(resolver.resolve(f"{item_id}::{arg}")), f"{item_id}::{arg}")
    reader = _STEP_READERS[op]
    step, read = reader(args, key_index, spatial_dims)
    for arg, value in args.items():
        if arg in read:
            continue
        if arg == "dtype":
            if value is not None and "float" not in str(value):
                raise BundleError(f"Refusing {target} ({item_id}): dtype {value!r} (only float output is supported).")
            continue
        default = signature.parameters[arg].default
        if default is inspect.Parameter.empty or not _same(value, default):
            raise BundleError(
                f"Refusing {target} ({item_id}): {arg}={value!r} is not supported (only MONAI's default "
                f"{_plain_default(default)!r})."
            )
    return {"op": op, "transform": str(target), **step}


def _dtype_name(value: Any) -> Any:
    """A dtype object (from ``$torch.float32`` or ``$numpy.float32``) as its name; other values unchanged."""
    import numpy as np
    import torch

    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and issubclass(value, np.generic):
        return value.__name__
    return value


def _plain_default(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


def _same(value: Any, default: Any) -> bool:
    default = _plain_default(default)
    if isinstance(default, tuple):
        default = list(default)
    return value == default


def _per_key(value: Any, key_index: int) -> Any:
    """A per-key argument (``mode: ["bilinear", "nearest"]`` for two keys) for our key."""
    if isinstance(value, list) and value and all(isinstance(v, (str, bool)) for v in value):
        return value[min(key_index, len(value) - 1)]
    return value


def _read_orientation(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    axcodes = args.get("axcodes")
    if not isinstance(axcodes, str) or not re.fullmatch(r"[RLAPSI]{2,3}", axcodes.upper()):
        raise BundleError(f"Orientation axcodes {axcodes!r} is not supported (give codes such as 'RAS').")
    if args.get("labels") not in (None, [["L", "R"], ["P", "A"], ["I", "S"]]):
        raise BundleError(f"Orientation labels {args['labels']!r} are not supported (only the RAS convention).")
    return {"axcodes": axcodes.upper()}, {"axcodes", "labels"}


def _read_spacing(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    pixdim = args.get("pixdim")
    values = [pixdim] if isinstance(pixdim, (int, float)) else list(pixdim or [])
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BundleError(f"Spacing pixdim {pixdim!r} is not a number or a list of numbers.")
    # MONAI: extra values are dropped, missing ones repeat the last; a value <= 0 keeps that axis's spacing.
    values = (values + [values[-1]] * spatial_dims)[:spatial_dims]
    mode = _per_key(args.get("mode", "bilinear"), key_index)
    padding = _per_key(args.get("padding_mode", "border"), key_index)
    align = args.get("align_corners", False)
    align = align[min(key_index, len(align) - 1)] if isinstance(align, list) else align
    step = {"pixdim": [float(v) for v in values], "mode": mode, "padding_mode": padding, "align_corners": bool(align)}
    return step, {"pixdim", "mode", "padding_mode", "align_corners"}


def _number(args: dict, name: str, default: Any = None) -> float | None:
    value = args.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"{name}={value!r} is not a number.")
    return float(value)


def _read_scale_intensity_range(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    if "a_min" not in args or "a_max" not in args:
        raise BundleError("ScaleIntensityRange needs a_min and a_max.")
    step = {k: _number(args, k) for k in ("a_min", "a_max", "b_min", "b_max")}
    step["clip"] = bool(args.get("clip", False))
    return step, {"a_min", "a_max", "b_min", "b_max", "clip"}


def _read_normalize_intensity(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    step = {}
    for k in ("subtrahend", "divisor"):
        value = args.get(k)
        if value is not None and not isinstance(value, (int, float, list)):
            raise BundleError(f"NormalizeIntensity {k}={value!r} is not supported.")
        step[k] = value
    step["nonzero"] = bool(args.get("nonzero", False))
    step["channel_wise"] = bool(args.get("channel_wise", False))
    return step, {"subtrahend", "divisor", "nonzero", "channel_wise"}


def _read_scale_intensity(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    if args.get("factor") is not None:
        raise BundleError(f"ScaleIntensity with factor={args['factor']!r} is not supported (only minv/maxv).")
    step = {"minv": _number(args, "minv", 0.0), "maxv": _number(args, "maxv", 1.0), "factor": None}
    step["channel_wise"] = bool(args.get("channel_wise", False))
    return step, {"minv", "maxv", "factor", "channel_wise"}


def _read_activation(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    softmax, sigmoid = (_per_key(args.get(k, False), key_index) for k in ("softmax", "sigmoid"))
    if args.get("other") is not None:
        raise BundleError("Activations with 'other' (a custom function) is not supported.")
    if softmax and sigmoid:
        raise BundleError("Activations sets both softmax and sigmoid.")
    return {"function": "softmax" if softmax else "sigmoid" if sigmoid else None}, {"softmax", "sigmoid", "other"}


def _read_discretize(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    argmax = bool(_per_key(args.get("argmax", False), key_index))
    threshold = _per_key(args.get("threshold"), key_index)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise BundleError(f"AsDiscrete threshold={threshold!r} is not supported (a number).")
    if args.get("rounding") is not None:
        raise BundleError(f"AsDiscrete rounding={args['rounding']!r} is not supported.")
    step = {"argmax": argmax, "threshold": None if threshold is None else float(threshold)}
    return step, {"argmax", "threshold", "rounding", "to_onehot"}  # to_onehot changes the layout, not the labels


def _read_keep_largest(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    step = {
        "applied_labels": args.get("applied_labels"),
        "independent": bool(args.get("independent", True)),
        "connectivity": args.get("connectivity"),
        "num_components": int(args.get("num_components", 1)),
    }
    if args.get("is_onehot"):
        raise BundleError("KeepLargestConnectedComponent on one-hot data is not supported.")
    return step, {"applied_labels", "independent", "connectivity", "num_components", "is_onehot"}


_STEP_READERS = {
    "orientation": _read_orientation,
    "spacing": _read_spacing,
    "scale_intensity_range": _read_scale_intensity_range,
    "normalize_intensity": _read_normalize_intensity,
    "scale_intensity": _read_scale_intensity,
    "activation": _read_activation,
    "discretize": _read_discretize,
    "keep_largest_component": _read_keep_largest,
    "invert": None,  # read in _step
}


def _check_output_steps(steps: list[dict]) -> None:
    if not any(s["op"] == "discretize" and (s["argmax"] or s["threshold"] is not None) for s in steps):
        raise BundleError(
            "The bundle's postprocessing has no AsDiscrete(argmax=True) or AsDiscrete(threshold=...): it outputs "
            "scores, not a label map, and cannot be imported as a segmentation model."
        )


def _inferer(resolver: _Resolver, spatial_dims: int) -> dict:
    if not resolver.has("inferer"):
        raise BundleError("The bundle's inference config has no inferer.")
    raw = resolver.get_raw("inferer")
    target = raw.get("_target_") if isinstance(raw, dict) else None
    name = target.rpartition(".")[2] if isinstance(target, str) else None
    module = target.rpartition(".")[0] if isinstance(target, str) else ""
    if name not in SUPPORTED_INFERERS or (module and not module.startswith("monai.inferers")):
        raise BundleError(
            f"Refusing the bundle: its inferer {target!r} is not supported (only MONAI's "
            f"{', '.join(SUPPORTED_INFERERS)})."
        )
    if name == "SimpleInferer":
        return {"kind": "whole_image", "inferer": target}
    from monai import inferers

    signature = inspect.signature(inferers.SlidingWindowInferer)
    not_read = ("sw_device", "device", "progress", "cpu_thresh", "buffer_steps", "buffer_dim", "cache_roi_weight_map")
    args = {
        k: _plain(resolver.resolve(f"inferer::{k}"), f"inferer::{k}")
        for k in raw
        if k not in _NON_ARG_KEYS and k not in not_read
    }
    kind = "slices" if name == "SliceInferer" else "sliding_window"  # slices: a 2D network over a 3D volume
    spatial_dim = args.pop("spatial_dim", 0) if name == "SliceInferer" else None
    if kind == "slices" and spatial_dims != 2:
        raise BundleError(f"The bundle's SliceInferer runs a {spatial_dims}D network; it needs a 2D one.")
    if "roi_size" not in args:
        raise BundleError(f"The bundle's {name} has no roi_size.")
    roi = args.pop("roi_size")
    roi = [roi] * spatial_dims if isinstance(roi, int) else list(roi)
    if len(roi) != spatial_dims:
        raise BundleError(f"The inferer's roi_size {roi} has {len(roi)} values for a {spatial_dims}D network.")
    if not all(isinstance(r, int) and (r > 0 or r == -1) for r in roi):
        raise BundleError(f"The inferer's roi_size {roi} must be positive integers (or -1: the whole axis).")
    out = {
        "kind": kind,
        "inferer": target,
        "roi_size": roi,
        "overlap": args.pop("overlap", 0.25),
        "sw_batch_size": int(args.pop("sw_batch_size", 1)),
        "mode": str(_plain_default(args.pop("mode", "constant"))),
        "sigma_scale": args.pop("sigma_scale", 0.125),
        "padding_mode": str(args.pop("padding_mode", "constant")),
        "cval": float(args.pop("cval", 0.0)),
    }
    if spatial_dim is not None:
        out["spatial_dim"] = int(spatial_dim)
    if out["mode"] not in ("constant", "gaussian"):
        raise BundleError(f"The inferer's blending mode {out['mode']!r} is not supported (constant or gaussian).")
    params = signature.parameters
    extra = sorted(k for k, v in args.items() if k not in params or not _same(v, params[k].default))
    if extra:
        raise BundleError(f"The inferer sets {', '.join(extra)}, which this extension does not support.")
    return out


# ---------------------------------------------------------------------------------------------- metadata


def _channel_names(channel_def: Any, count: int, fallback: str) -> list[str]:
    names = {}
    if isinstance(channel_def, dict):
        for k, v in channel_def.items():
            try:
                names[int(k)] = str(v).strip()
            except (TypeError, ValueError):
                continue
    return [names.get(i) or f"{fallback} {i}" for i in range(count)]


def _inputs(in_format: dict, in_channels: int) -> list[dict]:
    names = _channel_names(in_format.get("channel_def"), in_channels, "channel")
    if in_channels == 1 and names == ["channel 0"]:
        names = ["image"]
    seen: dict[str, int] = {}
    out = []
    for name in names:  # the manifest wants distinct input names
        seen[name] = seen.get(name, 0) + 1
        out.append({"name": name if seen[name] == 1 else f"{name} {seen[name]}"})
    return out


def _labels(out_format: dict, out_channels: int, multi_label: bool) -> list[dict]:
    """Label values and names: softmax/argmax outputs channel i as value i (channel 0 the background);
    sigmoid outputs (independent channels) become values 1…C in channel order."""
    channel_def = out_format.get("channel_def")
    if isinstance(channel_def, dict):
        too_high = [k for k in channel_def if str(k).isdigit() and int(k) >= out_channels]
        if too_high:
            raise BundleError(
                f"metadata.json names output channel(s) {', '.join(too_high)} but the network has {out_channels}."
            )
    names = _channel_names(channel_def, out_channels, "label")
    if multi_label:
        return [{"value": i + 1, "name": name, "channel": i} for i, name in enumerate(names)]
    if out_channels < 2:
        raise BundleError("A softmax/argmax network needs at least 2 output channels (background and a label).")
    return [{"value": i, "name": name} for i, name in enumerate(names) if i > 0]


_MODALITY_WORDS = {
    "CT": ("ct", "computed tomography", "hounsfield", "cta", "cect"),
    "MR": ("mr", "mri", "magnetic resonance", "t1", "t1w", "t2", "t2w", "flair", "adc", "dwi", "t1c", "t1ce", "t1gd"),
    "XR": ("xr", "x-ray", "xray", "radiograph", "cxr", "dx", "cr"),
}


def _modality(in_format: dict) -> str | None:
    """CT/MR/XR from the input's ``modality`` (then its ``format`` and channel names); None if unsaid."""
    candidates = [in_format.get("modality"), in_format.get("format")]
    channel_def = in_format.get("channel_def")
    if isinstance(channel_def, dict):
        candidates += list(channel_def.values())
    for text in candidates:
        if not isinstance(text, str):
            continue
        words = set(re.split(r"[^a-z0-9-]+", text.lower())) | {text.lower().strip()}
        for modality, known in _MODALITY_WORDS.items():
            if words & set(known):
                return modality
    return None


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-._")[:100]
    return slug or "monai-bundle"
