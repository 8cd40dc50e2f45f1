"""A bundle's ``preprocessing`` and ``postprocessing`` Composes read as plain steps, never instantiated.

Each transform's ``_target_`` is matched by name against `PREPROCESSING_STEPS` / `POSTPROCESSING_STEPS` (MONAI's
array or dictionary class, e.g. ``Spacingd``), its arguments resolved by the checked `Resolver` and turned into a
step with MONAI's semantics (``{"op": ..., "transform": ..., ...}``, `monai_step_args`); an argument that is not
read must hold MONAI's default. Reading/typing transforms are skipped (`IGNORED_TRANSFORMS`, listed in the
description) and transforms on other keys are skipped; any other transform is refused with its name.
"""

from __future__ import annotations

import inspect
from typing import Any

from unetseg.models.formats.monai_config import (
    NON_ARG_KEYS,
    Resolver,
    concatenated_refs,
    per_key,
    plain,
    plain_default,
    same_as_default,
    truthy,
)
from unetseg.models.formats.monai_files import BundleError
from unetseg.models.formats.monai_step_args import STEP_READERS

_ARGUMENT_KEYS = ("keys", "allow_missing_keys", "lazy", "meta_keys", "meta_key_postfix")
"""Dictionary-transform arguments that say which entries to touch, not what to do to them."""

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


def _transform_ids(resolver: Resolver, list_id: str, depth: int = 0) -> list[tuple[str, dict]]:
    """The ids and raw configs of the transforms in the list at ``list_id``, following pure references."""
    from monai.bundle.config_item import ConfigExpression, ConfigItem

    if depth > 8:
        raise BundleError(f"{list_id}: references nest too deeply.")
    value = resolver.unevaluated(list_id)
    if isinstance(value, ConfigExpression):
        refs = concatenated_refs(value.get_config())
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


def _compose_list_id(resolver: Resolver, id: str) -> str:
    """The id of the transform list of a Compose (or of the list itself)."""
    raw = resolver.get_raw(id)
    if isinstance(raw, dict) and isinstance(raw.get("_target_"), str) and raw["_target_"].endswith("Compose"):
        if _transform_name(raw["_target_"]) != "Compose":
            raise BundleError(f"{id} is a {raw['_target_']!r}, not MONAI's Compose.")
        return f"{id}::transforms"
    if isinstance(raw, (list, str)):
        return id
    raise BundleError(f"The bundle's {id} is not a Compose of transforms (or a list of them).")


def read_steps(
    resolver: Resolver, id: str, key: str, supported: dict, ignored: list[dict], spatial_dims: int
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
        if "_disabled_" in raw and truthy(resolver.resolve(f"{item_id}::_disabled_")):
            ignored.append({"what": f"{item_id} ({target})", "why": "disabled"})
            continue
        if name in IGNORED_TRANSFORMS:
            ignored.append({"what": f"{item_id} ({target})", "why": IGNORED_TRANSFORMS[name]})
            continue
        if "keys" in raw:
            keys = plain(resolver.resolve(f"{item_id}::keys"), f"{item_id}::keys") if "keys" in raw else []
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
        steps.append(read_step(resolver, item_id, raw, name, supported[name], keys.index(key), spatial_dims))
    return steps


def read_step(
    resolver: Resolver, item_id: str, raw: dict, name: str, op: str, key_index: int, spatial_dims: int
) -> dict:
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
        return {"op": op, "transform": str(target), "nearest_interp": bool(per_key(nearest, key_index))}
    args = {}
    for arg in raw:
        if arg in NON_ARG_KEYS or arg in _ARGUMENT_KEYS:
            continue
        if arg not in signature.parameters:
            raise BundleError(f"Refusing {target} ({item_id}): {arg!r} is not an argument of MONAI's {name}.")
        args[arg] = plain(dtype_name(resolver.resolve(f"{item_id}::{arg}")), f"{item_id}::{arg}")
    reader = STEP_READERS[op]
    step, read = reader(args, key_index, spatial_dims)
    for arg, value in args.items():
        if arg in read:
            continue
        if arg == "dtype":
            if value is not None and "float" not in str(value):
                raise BundleError(f"Refusing {target} ({item_id}): dtype {value!r} (only float output is supported).")
            continue
        default = signature.parameters[arg].default
        if default is inspect.Parameter.empty or not same_as_default(value, default):
            raise BundleError(
                f"Refusing {target} ({item_id}): {arg}={value!r} is not supported (only MONAI's default "
                f"{plain_default(default)!r})."
            )
    return {"op": op, "transform": str(target), **step}


def dtype_name(value: Any) -> Any:
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
