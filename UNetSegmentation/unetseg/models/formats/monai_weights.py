"""A bundle's network and weights: the network allow-list, the weights opened without running code, aliases once.

- **Network.** ``network_def``'s ``_target_`` must name one of the U-Net-family classes of `NETWORKS` (MONAI's
  ``UNet``, ``BasicUNet``, ``DynUNet``, ``AttentionUnet``, by short name or full ``monai.networks.nets`` path). A
  ``_target_`` can name any callable, so this allow-list is the security boundary: the name is checked before
  anything is resolved, and the class is then taken from the allow-list (not looked up from the config) and
  called with the plain values ConfigParser resolved for its arguments. A nested ``_target_`` in the arguments
  is refused.
- **Weights.** ``models/model.pt`` is opened with ``torch.load(weights_only=True)`` through
  `unetseg.models.formats.checkpoint.load_checkpoint` (tensors, plain containers and numpy scalars only — the
  same rule as nnU-Net checkpoints), never a full unpickle; a TorchScript archive saved as ``model.pt`` is refused.
  ``models/model.ts`` is **not loaded**: ``torch.jit.load`` deserialises and compiles TorchScript code, and even
  reading its state dict that way runs that loader on untrusted input. A bundle with only ``model.ts`` is refused
  with the one-line command that turns it into a state dict, for a user who trusts the file. Tensors that the
  network holds under several names (DynUNet's ``skip_layers.*`` aliases) are stored once (`dedupe_state_dict`).
"""

from __future__ import annotations

import importlib
import inspect
import io
import zipfile
from typing import TYPE_CHECKING, Any

from unetseg.models.formats import FormatError
from unetseg.models.formats.checkpoint import load_checkpoint, unwrap_prefixes
from unetseg.models.formats.monai_config import NON_ARG_KEYS, Resolver, plain
from unetseg.models.formats.monai_files import TORCHSCRIPT_FILE, WEIGHTS_FILE, BundleError, BundleFiles

if TYPE_CHECKING:
    import torch
    from torch import nn

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


_SHOWN = 5


def network_class(target: Any) -> tuple[str, type]:
    """The allowed class a ``_target_`` names, with its canonical target; a `BundleError` for anything else."""
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


def bound_network_args(cls: type, args: dict) -> dict:
    """Every argument of the network class, defaults filled in (spatial_dims, in/out channels are read here)."""
    try:
        bound = inspect.signature(cls).bind(**args)
    except TypeError as e:
        raise BundleError(f"network_def's arguments do not fit {cls.__name__}: {e}") from e
    bound.apply_defaults()
    return dict(bound.arguments)


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
    if is_torchscript(data):
        raise BundleError(
            f"Refusing {source}: it is a TorchScript archive, which is code, not a state dict. "
            + torchscript_advice(source)
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
    return unwrap_prefixes(state)  # DistributedDataParallel, torch.compile


def _state_dict_in(obj: Any, keys: tuple[str, ...]) -> dict | None:
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                return _state_dict_in(obj[key], keys)
    return None


def is_torchscript(data: bytes) -> bool:
    """A TorchScript archive: a zip holding ``*/constants.pkl`` or ``*/code/`` beside the pickled data."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def torchscript_advice(source: str) -> str:
    """Why TorchScript is never loaded, and the command that turns a trusted one into a state dict."""
    return (
        "TorchScript is code: loading it (torch.jit.load, even only to read its weights) runs a compiler on the "
        "file, so this extension never does. If you trust the file, turn it into a state dict once and import "
        "the bundle again: python -c \"import torch; torch.save(torch.jit.load('models/model.ts').state_dict(), "
        f"'models/model.pt')\" (in the bundle folder; {source})."
    )


def weights_file(files: BundleFiles) -> str:
    """The bundle's state-dict file, or a `BundleError` saying why there is none to use."""
    if files.exists(WEIGHTS_FILE):
        return WEIGHTS_FILE
    if files.exists(TORCHSCRIPT_FILE):
        raise BundleError(
            f"The bundle has only {TORCHSCRIPT_FILE} and no {WEIGHTS_FILE}. " + torchscript_advice(TORCHSCRIPT_FILE)
        )
    raise BundleError(
        f"The bundle has no {WEIGHTS_FILE}. Bundles often list their weights in large_files.yml for download; "
        "this extension never downloads: fetch the weights into models/ first."
    )


def load_dict_keys(resolver: Resolver) -> tuple[str, ...]:
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


def read_network(resolver: Resolver) -> tuple[str, type, dict]:
    """``network_def`` as (canonical target, allowed class, plain arguments); the target is checked first."""
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
    args = {k: plain(v, f"network_def::{k}") for k, v in config.items() if k not in NON_ARG_KEYS}
    return target, cls, args
