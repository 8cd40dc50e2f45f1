"""A bundle's ``inferer`` read as plain settings: MONAI's sliding window (roi, overlap, blending), whole image or
slices. Only MONAI's own inferers are accepted; a setting this extension does not reproduce is refused by name.
"""

from __future__ import annotations

import inspect

from unetseg.models.formats.monai_config import NON_ARG_KEYS, Resolver, plain, plain_default, same_as_default
from unetseg.models.formats.monai_files import BundleError

SUPPORTED_INFERERS = ("SlidingWindowInferer", "SlidingWindowInfererAdapt", "SimpleInferer", "SliceInferer")


def read_inferer(resolver: Resolver, spatial_dims: int) -> dict:
    """``{"kind": "sliding_window" | "whole_image" | "slices", ...}`` from the config's ``inferer``."""
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
        k: plain(resolver.resolve(f"inferer::{k}"), f"inferer::{k}")
        for k in raw
        if k not in NON_ARG_KEYS and k not in not_read
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
        "mode": str(plain_default(args.pop("mode", "constant"))),
        "sigma_scale": args.pop("sigma_scale", 0.125),
        "padding_mode": str(args.pop("padding_mode", "constant")),
        "cval": float(args.pop("cval", 0.0)),
    }
    if spatial_dim is not None:
        out["spatial_dim"] = int(spatial_dim)
    if out["mode"] not in ("constant", "gaussian"):
        raise BundleError(f"The inferer's blending mode {out['mode']!r} is not supported (constant or gaussian).")
    params = signature.parameters
    extra = sorted(k for k, v in args.items() if k not in params or not same_as_default(v, params[k].default))
    if extra:
        raise BundleError(f"The inferer sets {', '.join(extra)}, which this extension does not support.")
    return out
