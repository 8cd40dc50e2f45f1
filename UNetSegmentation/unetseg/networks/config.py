"""A network config, validated and completed: `normalize_config`, and the strides it implies (`total_stride`).

Torch-free, so planning, the CLI and package checks validate configs without loading torch or MONAI.

Required keys: ``variant`` (one of `unetseg.vocabulary.VARIANTS`), ``spatial_dims`` (2 or 3), ``in_channels``
(channels the network receives, e.g. one per MRI sequence) and ``num_classes`` (background included). Optional
keys and their defaults (`normalize_config` fills them in; a manifest stores its result):

- ``width`` (1.0): multiplies the paper's feature counts; e.g. 0.25 for a small, CPU-friendly model.
- ``features``: explicit per-level feature counts (5 levels) for unet/unetpp/attention_unet/vnet; for vnet
  they must double per level. Default: the paper's — (64…1024) for U-Net, U-Net++ and Attention U-Net,
  (16…256) for V-Net — times ``width``. Explicit ``features`` take precedence over ``width``.
- nnunet only: ``kernel_size``, ``strides``, ``filters`` (one entry per stage, as nnU-Net's plans and MONAI's
  DynUNet take them; ``strides[0]`` must be 1), ``res_block`` (False). Defaults: nnU-Net's generic network,
  6 stages 32→320 in 3D, 7 stages 32→512 in 2D, 3×3(×3) kernels, stride 2; ``filters`` scale with ``width``.
- ``norm`` ("instance"; or "batch"; ``norm_name`` is accepted as a synonym): instance normalisation is the
  default for every variant, as in nnU-Net, because 3D training runs at batch sizes of 2 where BatchNorm's
  statistics are noise. MONAI's V-Net and Attention U-Net hard-code BatchNorm; it is swapped there.
- ``dropout`` (0.0): also for V-Net, whose MONAI default of 0.5 is not used.
- ``deep_supervision`` (False) for unet, unetpp and nnunet, with ``deep_supr_num`` (unet, nnunet: the number
  of lower-resolution outputs; default: the decoder levels nnU-Net trains with a non-zero weight, i.e. all but
  the lowest, which nnU-Net computes only to weight it 0). In train mode the network then
  returns a list of logits ``[full resolution, 1/2, 1/4, …]``, each at its own resolution (U-Net++: its
  nested outputs, all at full resolution, deepest first).
- Seed add-ons (`unetseg.networks.addons`): ``hu_priors`` (None or ``{"mean", "std", "clip"}``, CT), ``fusion``
  ("early" | "late") with ``sequences`` (MRI), ``prior_gate`` (False; 2D X-ray), ``multiscale_stem`` (False).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from unetseg.vocabulary import HU_PRIOR_WINDOWS, VARIANTS

NORMS = ("instance", "batch")
FUSIONS = ("early", "late")
DEEP_SUPERVISION_VARIANTS = ("unet", "unetpp", "nnunet")
LATE_FUSION_VARIANTS = ("unet",)
PAPER_FEATURES = {
    "unet": (64, 128, 256, 512, 1024),
    "unetpp": (64, 128, 256, 512, 1024),
    "attention_unet": (64, 128, 256, 512, 1024),
    "vnet": (16, 32, 64, 128, 256),
}
LEVELS = 5  # the classic family (all but nnunet): 5 resolution levels, 4 down-samplings by 2
_REQUIRED = ("variant", "spatial_dims", "in_channels", "num_classes")
_COMMON_KEYS = {
    *_REQUIRED,
    "width",
    "norm",
    "norm_name",
    "dropout",
    "deep_supervision",
    "hu_priors",
    "fusion",
    "sequences",
    "prior_gate",
    "multiscale_stem",
}
_VARIANT_KEYS = {
    "unet": {"features", "deep_supr_num"},
    "unetpp": {"features"},
    "attention_unet": {"features"},
    "vnet": {"features"},
    "nnunet": {"filters", "kernel_size", "strides", "deep_supr_num", "res_block"},
}


def normalize_config(config: dict) -> dict:
    """Validate a network config and return it complete, with every default filled in (JSON-serialisable)."""
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"Network config lacks required key(s) {missing}; required: {list(_REQUIRED)}.")
    variant = config["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"Unknown network variant {variant!r}; allowed variants: {list(VARIANTS)}.")
    unknown = sorted(set(config) - _COMMON_KEYS - _VARIANT_KEYS[variant])
    if unknown:
        allowed = sorted(_COMMON_KEYS | _VARIANT_KEYS[variant])
        raise ValueError(f"Unknown key(s) {unknown} for variant {variant!r}; allowed keys: {allowed}.")
    dims = _choice(config, "spatial_dims", (2, 3))
    width = float(config.get("width", 1.0))
    if not width > 0:
        raise ValueError(f"width must be a positive number; got {width}.")
    cfg = {
        "variant": variant,
        "spatial_dims": dims,
        "in_channels": _positive_int(config, "in_channels"),
        "num_classes": _positive_int(config, "num_classes", minimum=2),
        "width": width,
        "norm": _norm(config),
        "dropout": _dropout(config),
        "deep_supervision": bool(config.get("deep_supervision", False)),
    }
    if variant == "nnunet":
        cfg.update(_nnunet_layout(config, dims, width))
    else:
        cfg["features"] = _features(config, variant, width)
    cfg.update(_deep_supervision(config, cfg))
    cfg.update(_addons(config, cfg))
    return cfg


def _choice(config: dict, key: str, allowed: Sequence) -> object:
    value = config[key] if key in config else allowed[0]
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}; got {value!r}.")
    return value


def _positive_int(config: dict, key: str, minimum: int = 1) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = " (num_classes counts the background too)" if key == "num_classes" else ""
        raise ValueError(f"{key} must be an integer >= {minimum}{hint}; got {value!r}.")
    return value


def _norm(config: dict) -> str:
    norm, alias = config.get("norm"), config.get("norm_name")
    if norm is not None and alias is not None and str(norm).lower() != str(alias).lower():
        raise ValueError(f"norm ({norm!r}) and its synonym norm_name ({alias!r}) disagree; give one of them.")
    value = str(norm or alias or "instance").lower()
    if value not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}; got {value!r}.")
    return value


def _dropout(config: dict) -> float:
    value = float(config.get("dropout", 0.0))
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {value}.")
    return value


def _scaled(features: Sequence[int], width: float) -> list[int]:
    return [max(2, round(f * width)) for f in features]


def _features(config: dict, variant: str, width: float) -> list[int]:
    if "features" not in config:
        scaled = _scaled(PAPER_FEATURES[variant], width)
        return [scaled[0] * 2**i for i in range(LEVELS)] if variant == "vnet" else scaled
    features = [int(f) for f in config["features"]]
    if len(features) != LEVELS or min(features) < 2:
        raise ValueError(f"features must list {LEVELS} integers >= 2 (one per level); got {config['features']}.")
    if variant == "vnet" and features != [features[0] * 2**i for i in range(LEVELS)]:
        raise ValueError(f"vnet features must double per level, e.g. [16, 32, 64, 128, 256]; got {features}.")
    return features


def _per_axis(value: int | Sequence[int], dims: int, key: str) -> list[int]:
    values = [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]
    if len(values) != dims or min(values) < 1:
        raise ValueError(f"each entry of {key} must be a positive int or a list of {dims}; got {value!r}.")
    return values


def _nnunet_layout(config: dict, dims: int, width: float) -> dict:
    """nnU-Net's per-stage kernel sizes, strides and filters (the planner's, or the generic network's)."""
    stages = 6 if dims == 3 else 7
    kernel_size = config.get("kernel_size", [3] * stages)
    strides = config.get("strides", [1] + [2] * (stages - 1))
    if len(kernel_size) != len(strides) or len(strides) < 3:
        raise ValueError(
            f"kernel_size and strides must have the same length >= 3 (one entry per stage); "
            f"got {len(kernel_size)} and {len(strides)}."
        )
    kernel_size = [_per_axis(k, dims, "kernel_size") for k in kernel_size]
    strides = [_per_axis(s, dims, "strides") for s in strides]
    if strides[0] != [1] * dims:
        raise ValueError(f"strides[0] must be 1 (the first stage keeps full resolution); got {strides[0]}.")
    cap = 320 if dims == 3 else 512
    default = _scaled([min(32 * 2**i, cap) for i in range(len(strides))], width)
    filters = [int(f) for f in config.get("filters", default)]
    if len(filters) != len(strides) or min(filters) < 2:
        raise ValueError(f"filters must list one integer >= 2 per stage ({len(strides)}); got {filters}.")
    return {
        "kernel_size": kernel_size,
        "strides": strides,
        "filters": filters,
        "res_block": bool(config.get("res_block", False)),
    }


def _deep_supervision(config: dict, cfg: dict) -> dict:
    variant = cfg["variant"]
    if cfg["deep_supervision"] and variant not in DEEP_SUPERVISION_VARIANTS:
        raise ValueError(
            f"deep_supervision is available for variants {list(DEEP_SUPERVISION_VARIANTS)}; got {variant!r}."
        )
    if variant not in ("unet", "nnunet"):
        return {}
    most = LEVELS - 2 if variant == "unet" else len(cfg["strides"]) - 2
    value = int(config.get("deep_supr_num", max(1, most - 1)))
    if not 1 <= value <= most:
        raise ValueError(f"deep_supr_num must be between 1 and {most} for this {variant}; got {value}.")
    return {"deep_supr_num": value}


def _addons(config: dict, cfg: dict) -> dict:
    """The seed's modality add-ons, validated against each other and against the variant."""
    fusion = _choice(config, "fusion", FUSIONS)
    sequences = int(config.get("sequences", cfg["in_channels"]))
    hu_priors = _hu_priors(config.get("hu_priors"))
    addons = {
        "hu_priors": hu_priors,
        "fusion": fusion,
        "sequences": sequences,
        "prior_gate": bool(config.get("prior_gate", False)),
        "multiscale_stem": bool(config.get("multiscale_stem", False)),
    }
    if sequences != cfg["in_channels"]:
        raise ValueError(
            f"in_channels ({cfg['in_channels']}) must equal sequences ({sequences}): "
            f"fusion={fusion!r} takes one input channel per sequence."
        )
    if fusion == "late":
        if sequences < 2:
            raise ValueError(f"fusion='late' needs in_channels = sequences >= 2; got {sequences}. Use 'early'.")
        if cfg["variant"] not in LATE_FUSION_VARIANTS:
            raise ValueError(
                f"fusion='late' is available for variants {list(LATE_FUSION_VARIANTS)}; got {cfg['variant']!r}."
            )
        if hu_priors or addons["multiscale_stem"]:
            raise ValueError("fusion='late' cannot be combined with hu_priors or multiscale_stem (they mix channels).")
    if addons["prior_gate"] and cfg["spatial_dims"] != 2:
        raise ValueError(f"prior_gate is 2D-only (spatial_dims must be 2); got spatial_dims={cfg['spatial_dims']}.")
    return addons


def _hu_priors(value: object) -> dict | None:
    if value in (None, False):
        return None
    if not isinstance(value, dict) or not {"mean", "std"} <= set(value):
        raise ValueError(f"hu_priors must be None or a dict with 'mean', 'std' (and optional 'clip'); got {value!r}.")
    std = float(value["std"])
    if not std > 0:
        raise ValueError(f"hu_priors.std must be positive; got {std}.")
    clip = value.get("clip")
    if clip is not None:
        clip = [float(clip[0]), float(clip[1])]
        windows = {name: (low, high) for name, low, high in HU_PRIOR_WINDOWS}
        lung_top, bone_floor = windows["lung"][1], windows["bone"][0]
        if clip[0] > lung_top or clip[1] < bone_floor:
            raise ValueError(
                f"hu_priors.clip {clip} hides the lung (< {lung_top:g} HU) or bone (>= {bone_floor:g} HU) window; "
                f"clip to at least [{lung_top:g}, {bone_floor:g}] or drop hu_priors."
            )
    return {"mean": float(value["mean"]), "std": std, "clip": clip}


def total_stride(config: dict) -> tuple[int, ...]:
    """Per-axis factor by which the network down-samples; inputs are padded to a multiple of it."""
    cfg = normalize_config(config)
    if cfg["variant"] == "nnunet":
        return tuple(math.prod(axis) for axis in zip(*cfg["strides"], strict=True))
    return (2 ** (LEVELS - 1),) * cfg["spatial_dims"]


def check_patch_size(config: dict, patch_size: Sequence[int]) -> None:
    """Raise ValueError unless a training/inference patch is a multiple of the total stride with a real bottleneck."""
    stride = total_stride(config)
    patch = [int(p) for p in patch_size]
    if len(patch) != len(stride) or min(patch) < 1:
        raise ValueError(f"patch_size must list {len(stride)} positive sizes (spatial_dims); got {list(patch_size)}.")
    if any(p % s for p, s in zip(patch, stride, strict=True)):
        nearest = [max(s, round(p / s) * s) for p, s in zip(patch, stride, strict=True)]
        raise ValueError(
            f"patch_size {patch} is not a multiple of the network's total stride {list(stride)} per axis; "
            f"allowed: multiples of it, e.g. {nearest}."
        )
    if bottleneck_voxels(patch, stride) < 2:
        raise ValueError(
            f"patch_size {patch} leaves a single voxel at the bottleneck (total stride {list(stride)}), which "
            f"normalisation cannot handle; allowed: at least twice the stride along one axis."
        )


def bottleneck_voxels(spatial: Sequence[int], stride: Sequence[int]) -> int:
    """Voxels at the network's deepest level for a spatial size that is a multiple of the total stride."""
    return math.prod(n // s for n, s in zip(spatial, stride, strict=True))
