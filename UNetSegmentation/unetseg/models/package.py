"""The model package: a folder (or a zip of one) holding ``model.json`` and the network's weights.

The manifest (``"format": "unetseg-model/1"``) is checked against ``schemas/model.schema.json`` and a few
rules a schema cannot state (label values fit the network, one normalisation per input…); every problem
is reported with its JSON path. Weights load without executing code: safetensors, or a state dict through
``torch.load(weights_only=True)``. Torch and safetensors are imported only by the functions that need
them, so listing models is cheap in Slicer's GUI process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from unetseg.image import Label

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "unetseg-model/1"
MANIFEST_FILE = "model.json"
DEFAULT_WEIGHTS = "weights.safetensors"
DEFAULT_ONNX = "model.onnx"
SCHEMA_PATH = Path(__file__).resolve().with_name("schemas") / "model.schema.json"
MAX_UNPACKED_BYTES = 2 * 1024**3
"""Default cap on a zip's uncompressed size (a model zip larger than this is refused, zip bombs included)."""

DEFAULT_PREPROCESSING = {
    "orientation": None,
    "target_spacing": None,
    "hu_clip": None,
    "crop": None,
    "slice_wise": False,
}
DEFAULT_INFERENCE = {"overlap": 0.5, "mirror_axes": [], "tta": False, "postprocessing": {}}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "network_weights", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_SHOWN = 5


class PackageError(ValueError):
    """A model package that cannot be used; the message says what is wrong and how to fix it."""


class ManifestError(PackageError):
    """A manifest that breaks the schema or its rules; ``problems`` lists each with its JSON path."""

    def __init__(self, problems: list[str], source: str = MANIFEST_FILE) -> None:
        self.problems = problems
        super().__init__(f"Invalid model manifest {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class WeightsError(PackageError):
    """Weights that are missing, unreadable, unsafe to load, or do not fit the network."""


# ---------------------------------------------------------------------------------------------- manifest


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    """The JSON Schema (draft-07) of ``model.json`` shipped with the package."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_manifest(manifest: dict, source: str = MANIFEST_FILE) -> dict:
    """Return ``manifest`` if valid; otherwise raise `ManifestError` listing every problem with its JSON path."""
    import jsonschema

    data = json.loads(json.dumps(manifest, default=_jsonable))  # tuples and numpy values, as a file has them
    validator = jsonschema.Draft7Validator(manifest_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    problems = [f"{e.json_path}: {e.message}" for e in errors] or _rule_problems(data)
    if problems:
        raise ManifestError(problems, source)
    return manifest


def _rule_problems(m: dict) -> list[str]:
    """Consistency rules across fields, checked once the schema holds."""
    net, inputs, labels = m["network"], m["inputs"], m["labels"]
    pre, dims = m["preprocessing"], m["spatial_dims"]
    values = [label["value"] for label in labels]
    names = [i["name"] for i in inputs]
    checks = [
        (
            net["variant"] == m["variant"],
            "$.network.variant",
            f"is {net['variant']!r} but $.variant is {m['variant']!r}",
        ),
        (
            net["spatial_dims"] == dims,
            "$.network.spatial_dims",
            f"is {net['spatial_dims']} but $.spatial_dims is {dims}",
        ),
        (
            net["in_channels"] == len(inputs),
            "$.network.in_channels",
            f"is {net['in_channels']} but $.inputs lists {len(inputs)} input(s)",
        ),
        (len(set(names)) == len(names), "$.inputs", f"input names repeat: {names}"),
        (len(set(values)) == len(values), "$.labels", f"label values repeat: {values}"),
        (
            all(v < net["num_classes"] for v in values),
            "$.labels",
            f"values {values} must be below $.network.num_classes ({net['num_classes']})",
        ),
        (
            len(labels) == net["num_classes"] - 1,
            "$.labels",
            f"names {len(labels)} classes but the network has {net['num_classes'] - 1} besides background",
        ),
        (
            len(pre["normalization"]) == len(inputs),
            "$.preprocessing.normalization",
            f"has {len(pre['normalization'])} entries for {len(inputs)} input(s); give one per input",
        ),
        (
            len(m["inference"]["patch_size"]) == dims,
            "$.inference.patch_size",
            f"has {len(m['inference']['patch_size'])} values for a {dims}D network",
        ),
        (
            all(a < dims for a in m["inference"].get("mirror_axes", [])),
            "$.inference.mirror_axes",
            f"axes must be below spatial_dims ({dims})",
        ),
        (not pre.get("slice_wise") or dims == 2, "$.preprocessing.slice_wise", "is only for 2D networks"),
        *(
            (
                bool(pre.get("hu_clip")) or "clip" in n or {"percentile_00_5", "percentile_99_5"} <= n.keys(),
                f"$.preprocessing.normalization[{i}]",
                "the ct scheme needs a clip range: 'clip', both 'percentile_00_5' and 'percentile_99_5', "
                "or $.preprocessing.hu_clip",
            )
            for i, n in enumerate(pre["normalization"])
            if n["scheme"] == "ct"
        ),
        (
            not pre.get("hu_clip") or pre["hu_clip"][0] < pre["hu_clip"][1],
            "$.preprocessing.hu_clip",
            "needs [low, high] with low < high",
        ),
    ]
    return [f"{path}: {message}" for ok, path, message in checks if not ok]


def _jsonable(value: Any) -> Any:
    """JSON form of numpy scalars/arrays and paths (what a training script naturally puts in a manifest)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def read_manifest(folder: Path) -> dict:
    """The validated manifest of a package folder."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise PackageError(
            f"No {MANIFEST_FILE} in {folder}: a model package is a folder holding {MANIFEST_FILE} "
            "and its weights (or a zip of such a folder)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError([f"$: not valid JSON ({e})"], str(path)) from e
    if not isinstance(manifest, dict):
        raise ManifestError(["$: must be a JSON object"], str(path))
    return validate_manifest(manifest, str(path))


# ---------------------------------------------------------------------------------------------- the package


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
            metrics = ", ".join(f"{k} {v}" for k, v in prov.get("metrics", {}).items())
            lines.append(
                f"  trained on {prov.get('training_data', '?')} ({prov.get('cases', '?')} cases, "
                f"{prov.get('date', '?')}); licence {prov.get('licence', '?')}" + (f"; {metrics}" if metrics else "")
            )
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
        p = _extract_cached(p)
    elif p.is_file() and p.name == MANIFEST_FILE:
        p = p.parent
    elif not p.is_dir():
        raise PackageError(f"{p} is not a model package: expected a folder, its {MANIFEST_FILE}, or a .zip.")
    folder = p.resolve()
    return ModelPackage(folder, read_manifest(folder))


# ---------------------------------------------------------------------------------------------- zips


def check_zip(zf: zipfile.ZipFile, max_bytes: int = MAX_UNPACKED_BYTES) -> str:
    """Check a model zip before anything is extracted; return the folder prefix holding ``model.json``.

    Refuses absolute paths, ``..`` components, symbolic links and an uncompressed size above ``max_bytes``.
    """
    problems, total = [], 0
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            problems.append(f"{info.filename}: absolute path")
        elif ".." in PurePosixPath(name).parts:
            problems.append(f"{info.filename}: escapes the target folder ('..')")
        elif stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{info.filename}: symbolic link")
        total += info.file_size
    if problems:
        raise PackageError("Refusing an unsafe model zip:\n" + "\n".join(f"  - {p}" for p in problems[:_SHOWN]))
    if total > max_bytes:
        raise PackageError(
            f"The model zip unpacks to {total / 1e9:.2f} GB, above the {max_bytes / 1e9:.2f} GB cap. "
            "If this model really is that large, import it as a folder or raise the cap."
        )
    manifests = sorted(
        (n for n in zf.namelist() if PurePosixPath(n).name == MANIFEST_FILE and len(PurePosixPath(n).parts) <= 2),
        key=lambda n: len(PurePosixPath(n).parts),
    )
    if not manifests:
        raise PackageError(
            f"The zip holds no {MANIFEST_FILE} at its top level or in a top-level folder; zip the model folder itself."
        )
    if len(manifests) > 1 and len(PurePosixPath(manifests[1]).parts) == len(PurePosixPath(manifests[0]).parts):
        raise PackageError(f"The zip holds several models ({', '.join(manifests)}); zip one model per file.")
    return manifests[0][: -len(MANIFEST_FILE)]


def extract_zip(zip_path: str | os.PathLike, target: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Validate a model zip (layout, manifest, weights present), then extract its package into ``target``."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise PackageError(f"{zip_path} is not a readable zip file ({e}); zip the model folder again.") from e
    with zf:
        prefix = check_zip(zf, max_bytes)
        try:
            manifest = json.loads(zf.read(prefix + MANIFEST_FILE).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError([f"$: not valid JSON ({e})"], f"{zip_path}:{prefix}{MANIFEST_FILE}") from e
        validate_manifest(manifest, f"{zip_path}:{prefix}{MANIFEST_FILE}")
        weights = prefix + manifest.get("weights", DEFAULT_WEIGHTS)
        if weights not in zf.namelist():
            raise WeightsError(f"The zip {zip_path} lacks the weights file {weights} its manifest names.")
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        for info in zf.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue  # other top-level entries (e.g. __MACOSX/) are not part of the package
            dest = (root / info.filename[len(prefix) :]).resolve()
            if not dest.is_relative_to(root):
                raise PackageError(f"Refusing zip member {info.filename}: it escapes the target folder.")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:  # zipfile stops at the checked header size
                shutil.copyfileobj(src, out)
    return target


def zip_cache_dir() -> Path:
    """Where zipped models given by path are unpacked (once per zip file version)."""
    return Path(tempfile.gettempdir()) / "unetseg-model-cache"


def _extract_cached(zip_path: Path) -> Path:
    """The unpacked package of a zip, extracted once per (path, size, mtime) and reused afterwards."""
    st = zip_path.stat()
    key = hashlib.sha256(f"{zip_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = zip_cache_dir() / key
    if (dest / MANIFEST_FILE).is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # an earlier unpack that did not finish
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        extract_zip(zip_path, staging / "package")
        if not dest.exists():  # another process may have unpacked the same zip meanwhile
            os.replace(staging / "package", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------------- weights


def load_state_dict(pkg: ModelPackage) -> dict[str, torch.Tensor]:
    """The package's weights as float32 CPU tensors, loaded without executing any code from the file."""
    path = pkg.weights_path
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path.name} is missing from {pkg.path}. Put the weights next to "
            f"{MANIFEST_FILE}, or correct the manifest's 'weights' entry."
        )
    suffix = path.suffix.lower()
    state = _load_safetensors(path) if suffix == ".safetensors" else _load_torch_state(path)
    return {k: v.float() if v.dtype in _half_dtypes() else v for k, v in _unwrap_prefixes(state).items()}


def _half_dtypes() -> tuple:
    import torch

    return (torch.float16, torch.bfloat16)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e}). Re-export the weights.") from e


def _load_torch_state(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise WeightsError(
            f"Refusing {path.name}: loading it would execute code stored in the file ({reason}). "
            "Save only tensors — torch.save(model.state_dict(), ...) — or convert the weights to safetensors."
        ) from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable PyTorch weights file ({e}).") from e
    return _state_dict_from(obj, path)


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict in a loaded checkpoint: the object itself or one of its usual state-dict entries."""
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return _state_dict_from(obj[key], path)
    raise WeightsError(
        f"{path} holds no state dict (a dict of tensors, or a checkpoint with one under {', '.join(_STATE_DICT_KEYS)})."
    )


def _unwrap_prefixes(state: dict) -> dict:
    """Drop a wrapper prefix every key carries (weights saved from a DDP or torch.compile model)."""
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return _unwrap_prefixes({k[len(prefix) :]: v for k, v in state.items()})
    return state


def build_model(pkg: ModelPackage, device: str = "cpu") -> nn.Module:
    """The package's network with its weights loaded (strictly), in eval mode on ``device``."""
    from unetseg.networks.factory import build_network

    network = build_network(pkg.network_config)
    state = load_state_dict(pkg)
    problems = fit_problems(network.state_dict(), state)
    if problems:
        raise WeightsError(
            f"The weights {pkg.weights_path} do not fit the network of model {pkg.name} "
            f"({pkg.variant}): " + "; ".join(problems) + ". The manifest's 'network' must be "
            "the config the weights were trained with."
        )
    network.load_state_dict(state, strict=True)
    return network.to(device).eval()


def fit_problems(expected: dict, given: dict) -> list[str]:
    """How a state dict differs from a network's: missing and unexpected keys, shape mismatches (first few)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    found = (
        ("missing key(s)", missing),
        ("unexpected key(s)", unexpected),
        ("shape mismatch(es), weights vs network", shapes),
    )
    return [
        f"{len(items)} {what}: {', '.join(items[:_SHOWN])}{', …' if len(items) > _SHOWN else ''}"
        for what, items in found
        if items
    ]


def save_package(folder: str | os.PathLike, manifest: dict, state_dict: dict, half: bool = False) -> ModelPackage:
    """Write a package: the validated manifest and safetensors weights (fp16 storage with ``half``), atomically.

    ``format`` and ``weights`` default to this format and ``weights.safetensors``. Each file replaces its
    predecessor only once fully written; other files in the folder (logs, plots) are left alone.
    """
    import torch
    from safetensors.torch import save_file

    from unetseg.io import atomic_write

    manifest = json.loads(json.dumps({"format": FORMAT, "weights": DEFAULT_WEIGHTS, **manifest}, default=_jsonable))
    validate_manifest(manifest)
    if not manifest["weights"].endswith(".safetensors"):
        raise PackageError(
            f"save_package writes safetensors; name the weights '*.safetensors', not {manifest['weights']!r}."
        )
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise PackageError(
            f"The state dict holds non-tensor values under {not_tensors[:_SHOWN]}; pass model.state_dict()."
        )
    tensors = {
        k: v.detach()
        .to(device="cpu", dtype=torch.float16 if half and v.is_floating_point() else v.dtype, copy=True)
        .contiguous()
        for k, v in state_dict.items()
    }
    target = Path(folder).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    with atomic_write(target / manifest["weights"]) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    with atomic_write(target / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return load_package(target)
