"""What each supported MONAI transform's arguments mean, as the plain step the description keeps.

One reader per step op (`STEP_READERS`): ``(args, key_index, spatial_dims) -> (step, argument names read)``;
arguments a reader does not read must hold MONAI's default (checked by `monai_steps`). Values that this
extension cannot reproduce exactly are refused here, with the argument named.
"""

from __future__ import annotations

import re
from typing import Any

from unetseg.models.formats.monai_config import per_key
from unetseg.models.formats.monai_files import BundleError


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
    mode = per_key(args.get("mode", "bilinear"), key_index)
    padding = per_key(args.get("padding_mode", "border"), key_index)
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
    softmax, sigmoid = (per_key(args.get(k, False), key_index) for k in ("softmax", "sigmoid"))
    if args.get("other") is not None:
        raise BundleError("Activations with 'other' (a custom function) is not supported.")
    if softmax and sigmoid:
        raise BundleError("Activations sets both softmax and sigmoid.")
    return {"function": "softmax" if softmax else "sigmoid" if sigmoid else None}, {"softmax", "sigmoid", "other"}


def _read_discretize(args: dict, key_index: int, spatial_dims: int) -> tuple[dict, set]:
    argmax = bool(per_key(args.get("argmax", False), key_index))
    threshold = per_key(args.get("threshold"), key_index)
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


STEP_READERS = {
    "orientation": _read_orientation,
    "spacing": _read_spacing,
    "scale_intensity_range": _read_scale_intensity_range,
    "normalize_intensity": _read_normalize_intensity,
    "scale_intensity": _read_scale_intensity,
    "activation": _read_activation,
    "discretize": _read_discretize,
    "keep_largest_component": _read_keep_largest,
    "invert": None,  # read in read_step
}


def check_output_steps(steps: list[dict]) -> None:
    if not any(s["op"] == "discretize" and (s["argmax"] or s["threshold"] is not None) for s in steps):
        raise BundleError(
            "The bundle's postprocessing has no AsDiscrete(argmax=True) or AsDiscrete(threshold=...): it outputs "
            "scores, not a label map, and cannot be imported as a segmentation model."
        )
