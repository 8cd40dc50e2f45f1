"""A package's weights: loaded without executing code (safetensors, or ``torch.load(weights_only=True)``),
checked against the network the manifest describes, and loaded into it.

Torch and safetensors are imported only by the functions that need them, so listing models stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetseg.models.formats.monai_weights import build_network as build_monai_network
from unetseg.models.formats.monai_weights import restore_aliases
from unetseg.models.manifest import MANIFEST_FILE, SHOWN, WeightsError
from unetseg.models.shared_tensors import aliases_from_metadata
from unetseg.vocabulary import MONAI_VARIANT, NNUNET_VARIANT

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unetseg.models.package import ModelPackage

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "network_weights", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


# The last weights file read, by identity (path, modification time, size): a worker that segments case after
# case (a cohort, the Slicer panel's child) reads its model's weights once. One entry keeps memory bounded.
_LAST_READ: dict[tuple, dict] = {}


def load_state_dict(pkg: ModelPackage) -> dict[str, torch.Tensor]:
    """The package's weights as float32 CPU tensors, loaded without executing any code from the file.

    A file read before and unchanged since is not read again; the caller gets its own dict of the same tensors.
    """
    path = pkg.weights_path
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path.name} is missing from {pkg.path}. Put the weights next to "
            f"{MANIFEST_FILE}, or correct the manifest's 'weights' entry."
        )
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _LAST_READ:
        _LAST_READ.clear()
        _LAST_READ[key] = _read_state_dict(path)
    return dict(_LAST_READ[key])


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    state, aliases = _load_safetensors(path) if suffix == ".safetensors" else (_load_torch_state(path), {})
    state = {k: v.float() if v.dtype in _half_dtypes() else v for k, v in state.items()}
    return _unwrap_prefixes(restore_aliases(state, aliases) if aliases else state)


def _half_dtypes() -> tuple:
    import torch

    return (torch.float16, torch.bfloat16)


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The stored tensors and the aliases the file's metadata records (names stored once, `shared_tensors`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, aliases_from_metadata(f.metadata())  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as e:
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
    """The package's network with its weights loaded (strictly), in eval mode on ``device``.

    An imported nnU-Net model is the ensemble of its folds (`FoldEnsemble`: their logits stacked, for the nnU-Net
    pipeline to average as nnU-Net does), built from the manifest's ``network`` build spec; an imported MONAI
    bundle's network is its allow-listed MONAI class with its arguments, the tensors it holds under several names
    restored from ``network.aliases``.
    """
    state = load_state_dict(pkg)
    config = pkg.network_config
    if config["variant"] == NNUNET_VARIANT:
        from unetseg.models.formats.nnunet_network import build_fold_ensemble  # lazy: torch

        return build_fold_ensemble(config, state).to(device).eval()
    if config["variant"] == MONAI_VARIANT:
        network = build_monai_network(config["target"], config["args"])
        state = restore_aliases(state, config.get("aliases", {}))
    else:
        from unetseg.networks.factory import build_network  # lazy: torch

        network = build_network(config)
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
        f"{len(items)} {what}: {', '.join(items[:SHOWN])}{', …' if len(items) > SHOWN else ''}"
        for what, items in found
        if items
    ]
