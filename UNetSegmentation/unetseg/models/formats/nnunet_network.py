"""The network an nnU-Net v2 configuration describes, rebuilt from allow-listed names only.

Where nnU-Net calls ``pydoc.locate`` on the class names a plans file gives (``network_class_name``, the
``_kw_requires_import`` arguments), this module accepts only ``PlainConvUNet`` / ``ResidualEncoderUNet`` of
``dynamic_network_architectures`` and plain ``torch.nn`` conv/norm/dropout/activation classes, and refuses the rest
by name, so a plans file cannot make us import anything. `network_spec` turns a resolved configuration into a
JSON-serialisable `NetworkSpec`; `NetworkSpec.build` makes the module (torch imported only then).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unetseg.models.formats import FormatError
from unetseg.models.formats.checkpoint import fit_problems, restore_aliases

if TYPE_CHECKING:
    from torch import nn

NETWORK_CLASSES = ("PlainConvUNet", "ResidualEncoderUNet")
_NETWORK_MODULES = (
    "dynamic_network_architectures.architectures.unet",
    "dynamic_network_architectures.architectures.residual_unet",  # where old plans put ResidualEncoderUNet
)

# role -> {class name: canonical dotted name}; accepted spellings are ``<module>.<name>`` for a module below
_TORCH_MODULES = ("torch.nn", "torch.nn.modules.conv", "torch.nn.modules.instancenorm", "torch.nn.modules.batchnorm",
                  "torch.nn.modules.dropout", "torch.nn.modules.activation")
_DNA_BLOCK_MODULES = ("dynamic_network_architectures.building_blocks.residual",)
IMPORTABLE = {
    "conv_op": {n: f"torch.nn.{n}" for n in ("Conv1d", "Conv2d", "Conv3d")},
    "norm_op": {n: f"torch.nn.{n}" for n in ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
                                             "BatchNorm1d", "BatchNorm2d", "BatchNorm3d")},
    "dropout_op": {n: f"torch.nn.{n}" for n in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")},
    "nonlin": {n: f"torch.nn.{n}" for n in ("LeakyReLU", "ReLU", "PReLU", "ELU", "GELU", "SiLU", "Tanh")},
    "block": {n: f"dynamic_network_architectures.building_blocks.residual.{n}" for n in ("BasicBlockD",
                                                                                          "BottleneckD")},
}


@dataclass(frozen=True)
class NetworkSpec:
    """How to build the network: a class of ``dynamic_network_architectures`` and its keyword arguments.

    ``kwargs`` is JSON-serialisable: operator classes are canonical dotted names from :data:`IMPORTABLE`
    (e.g. ``"torch.nn.Conv3d"``); ``input_channels``, ``num_classes`` and ``deep_supervision=False`` are included.
    """

    class_name: str
    kwargs: dict

    def to_dict(self) -> dict:
        return {"class_name": self.class_name, "kwargs": copy.deepcopy(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkSpec:
        spec = cls(class_name=d["class_name"], kwargs=copy.deepcopy(d["kwargs"]))
        _network_class(spec.class_name)  # refuses unknown classes
        for role in IMPORTABLE:
            if spec.kwargs.get(role) is not None:
                _canonical(role, spec.kwargs[role])
        return spec

    @property
    def spatial_dims(self) -> int:
        return int(self.kwargs["conv_op"][-2])

    def build(self) -> nn.Module:
        """The network (parameters initialised by PyTorch's defaults; load a state dict into it)."""
        cls = _network_class(self.class_name)
        kwargs = dict(self.kwargs)
        for role in IMPORTABLE:
            if kwargs.get(role) is not None:
                kwargs[role] = _import(role, kwargs[role])
        return cls(**kwargs)



def _canonical(role: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FormatError(f"plans.json arch_kwargs[{role!r}] must be a class name, got {value!r}.")
    module, _, cls = value.rpartition(".")
    allowed_modules = _DNA_BLOCK_MODULES if role == "block" else _TORCH_MODULES
    if cls not in IMPORTABLE[role] or (module and module not in allowed_modules):
        raise FormatError(f"plans.json arch_kwargs[{role!r}] = {value!r} is not one of the supported "
                          f"{role.replace('_op', '')} classes ({', '.join(IMPORTABLE[role])}).")
    return IMPORTABLE[role][cls]


def _import(role: str, canonical: str):
    name = _canonical(role, canonical).rpartition(".")[2]
    if role == "block":
        from dynamic_network_architectures.building_blocks import residual
        return getattr(residual, name)
    from torch import nn
    return getattr(nn, name)


def _network_class(class_name: str):
    if class_name not in NETWORK_CLASSES:
        raise FormatError(f"Network {class_name!r} is not supported (supported: {', '.join(NETWORK_CLASSES)}).")
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError as e:
        raise FormatError("Building nnU-Net networks needs the 'dynamic-network-architectures' package "
                          "(pip install --no-deps dynamic-network-architectures).") from e
    return getattr(unet, class_name)


def network_spec(config: dict, name: str, input_channels: int, num_classes: int) -> NetworkSpec:
    """The plans' network for ``config`` (a resolved configuration), refusing anything outside the allow-lists."""
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise FormatError(f"Configuration {name!r} has no 'architecture'.")
    full = arch.get("network_class_name", "")
    module, _, cls = str(full).rpartition(".")
    if cls not in NETWORK_CLASSES or (module and module not in _NETWORK_MODULES):
        raise FormatError(f"Configuration {name!r} uses the network {full!r}; only dynamic_network_architectures' "
                          f"{' and '.join(NETWORK_CLASSES)} are supported.")
    kwargs = copy.deepcopy(arch.get("arch_kwargs") or {})
    requires = list(arch.get("_kw_requires_import") or [])
    for key in requires:
        if key not in IMPORTABLE:
            raise FormatError(f"Configuration {name!r} asks to import arch_kwargs[{key!r}]; only "
                              f"{', '.join(IMPORTABLE)} may name classes.")
    for key in IMPORTABLE:
        if kwargs.get(key) is not None:
            if key not in requires:
                raise FormatError(f"Configuration {name!r}: arch_kwargs[{key!r}] is a class name but is not listed "
                                  "in _kw_requires_import.")
            kwargs[key] = _canonical(key, kwargs[key])
    if kwargs.get("conv_op") is None:
        raise FormatError(f"Configuration {name!r}: arch_kwargs has no conv_op.")
    params = _constructor_parameters(cls)
    unknown = sorted(set(kwargs) - params)
    if unknown:
        raise FormatError(f"Configuration {name!r}: {cls} does not take arch_kwargs {unknown}.")
    dims = int(kwargs["conv_op"][-2])
    if dims != len(config.get("patch_size", [])):
        raise FormatError(f"Configuration {name!r}: a {dims}-D network for a {len(config['patch_size'])}-D patch.")
    kwargs.update(input_channels=int(input_channels), num_classes=int(num_classes), deep_supervision=False)
    return NetworkSpec(class_name=cls, kwargs=kwargs)


def _constructor_parameters(cls_name: str) -> set[str]:
    cls = _network_class(cls_name)
    return {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "input_channels",
                                                                                "num_classes", "deep_supervision")}


def same_architecture(a: dict, b: dict) -> bool:
    """Whether two ``architecture`` entries describe the same network (class basename and arguments)."""
    def norm(arch):
        kw = copy.deepcopy(arch.get("arch_kwargs") or {})
        for key in IMPORTABLE:
            if isinstance(kw.get(key), str):
                kw[key] = kw[key].rpartition(".")[2]
        return str(arch.get("network_class_name", "")).rpartition(".")[2], _jsonish(kw)
    return norm(a) == norm(b)


def _jsonish(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonish(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_jsonish(v) for v in x]
    return x


def fold_prefix(fold: str) -> str:
    """The key prefix of one fold's tensors in a converted package's weights."""
    return f"fold_{fold}."


def build_fold_ensemble(config: dict, state: dict) -> nn.Module:
    """The folds of a converted nnU-Net model (manifest ``network`` section) with their weights, strictly loaded.

    ``state`` holds each fold's tensors under `fold_prefix`, the ``decoder.encoder.*`` aliases stored once (they
    are restored here from ``encoder.*``).
    """
    from unetseg.networks.fold_ensemble import FoldEnsemble  # lazy: torch

    spec = NetworkSpec.from_dict(config)
    members = {}
    for fold in config["folds"]:
        prefix = fold_prefix(fold)
        member = spec.build()
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = restore_aliases(own, member.state_dict().keys())
        problems = fit_problems(member.state_dict(), own)
        if problems:
            raise FormatError(f"The weights of fold {fold} do not fit the {spec.class_name} of the manifest: "
                              + "; ".join(problems) + ".")
        member.load_state_dict(own, strict=True)
        members[fold] = member
    unknown = [k for k in state if not any(k.startswith(fold_prefix(f)) for f in config["folds"])]
    if unknown:
        raise FormatError(f"The weights hold tensors of no listed fold (e.g. {unknown[0]}).")
    return FoldEnsemble(members).eval()
