"""The U-Net family behind one factory, `build_network(config)`, driven by a plain JSON-serialisable dict.

Required keys: ``variant`` (one of `VARIANTS`), ``spatial_dims`` (2 or 3), ``in_channels`` (channels the
network receives, e.g. one per MRI sequence) and ``num_classes`` (background included). Optional keys and
their defaults (`normalize_config` fills them in; a manifest stores its result):

- ``width`` (1.0): multiplies the paper's feature counts; e.g. 0.25 for a small, CPU-friendly model.
- ``features``: explicit per-level feature counts (5 levels) for unet/unetpp/attention_unet/vnet; for vnet
  they must double per level. Default: the paper's — (64…1024) for U-Net, U-Net++ and Attention U-Net,
  (16…256) for V-Net — times ``width``. Explicit ``features`` take precedence over ``width``.
- nnunet only: ``kernel_size``, ``strides``, ``filters`` (one entry per stage, as nnU-Net's plans and MONAI's
  DynUNet take them; ``strides[0]`` must be 1), ``res_block`` (False). Defaults: nnU-Net's generic network,
  6 stages 32→320 in 3D, 7 stages 32→512 in 2D, 3×3(×3) kernels, stride 2; ``filters`` scale with ``width``.
- ``norm`` ("instance"; or "batch"; ``norm_name`` is accepted as a synonym): instance normalisation is the
  default for every variant, as in nnU-Net, because 3D training runs at batch sizes of 2 where BatchNorm's
  statistics are noise. MONAI's V-Net and Attention U-Net hard-code BatchNorm; it is swapped here.
- ``dropout`` (0.0): also for V-Net, whose MONAI default of 0.5 is not used.
- ``deep_supervision`` (False) for unet, unetpp and nnunet, with ``deep_supr_num`` (unet, nnunet: the number
  of lower-resolution outputs; default: the decoder levels nnU-Net trains with a non-zero weight, i.e. all but
  the lowest, which nnU-Net computes only to weight it 0). In train mode the network then
  returns a list of logits ``[full resolution, 1/2, 1/4, …]``, each at its own resolution (U-Net++: its
  nested outputs, all at full resolution, deepest first).
- Seed add-ons: ``hu_priors`` (None or ``{"mean", "std", "clip"}``, CT), ``fusion`` ("early" | "late") with
  ``sequences`` (MRI), ``prior_gate`` (False; 2D X-ray), ``multiscale_stem`` (False). See the classes below.

Parameter counts at the paper widths (2D, 1 input, 2 classes; `benchmarks/param_counts.py`): U-Net 31.1 M
(paper 31.0 M); V-Net 45.6 M in 3D (≈48 M quoted); nnU-Net 3D generic 31.2 M. U-Net++ has 36.5 M, not the
≈42 M of the paper's design, because MONAI's transposed convolutions halve the channels of the up-sampled
path before each concatenation (without halving: 44.0 M). Attention U-Net has 31.7 M, not ≈35 M, because
MONAI merges each decoder level with one convolution instead of two (the missing second convolutions are
the 3.1 M difference).

In eval mode ``model(x)`` returns logits ``(N, num_classes, *spatial)`` of the input's spatial size for any
input size: the input is padded (at the end of each axis) to the network's `total_stride` and the output
cropped back, by `pad_to_multiple`, the same helper inference uses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Norm
from monai.networks.nets import AttentionUnet, BasicUNet, BasicUNetPlusPlus, DynUNet, VNet
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition
from torch import nn
from torch.nn import functional

VARIANTS = ("unet", "vnet", "unetpp", "attention_unet", "nnunet")
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
_LEVELS = 5  # the classic family: 5 resolution levels, 4 down-samplings by 2
_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


# --------------------------------------------------------------------------- configuration


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
        return [scaled[0] * 2**i for i in range(_LEVELS)] if variant == "vnet" else scaled
    features = [int(f) for f in config["features"]]
    if len(features) != _LEVELS or min(features) < 2:
        raise ValueError(f"features must list {_LEVELS} integers >= 2 (one per level); got {config['features']}.")
    if variant == "vnet" and features != [features[0] * 2**i for i in range(_LEVELS)]:
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
    most = _LEVELS - 2 if variant == "unet" else len(cfg["strides"]) - 2
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
        if clip[0] > HUPriorChannels.WINDOWS[0][1] or clip[1] < HUPriorChannels.WINDOWS[2][0]:
            raise ValueError(
                f"hu_priors.clip {clip} hides the lung (< -400 HU) or bone (>= 400 HU) window; "
                "clip to at least [-400, 400] or drop hu_priors."
            )
    return {"mean": float(value["mean"]), "std": std, "clip": clip}


def total_stride(config: dict) -> tuple[int, ...]:
    """Per-axis factor by which the network down-samples; inputs are padded to a multiple of it."""
    cfg = normalize_config(config)
    if cfg["variant"] == "nnunet":
        return tuple(math.prod(axis) for axis in zip(*cfg["strides"], strict=True))
    return (2 ** (_LEVELS - 1),) * cfg["spatial_dims"]


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
    if math.prod(p // s for p, s in zip(patch, stride, strict=True)) < 2:
        raise ValueError(
            f"patch_size {patch} leaves a single voxel at the bottleneck (total stride {list(stride)}), which "
            f"normalisation cannot handle; allowed: at least twice the stride along one axis."
        )


# --------------------------------------------------------------------------- padding


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the end of each spatial axis of (N, C, *spatial) up to a multiple; return the crop back.

    ``padded[crop_slices]`` is ``x``; apply the same slices to a full-resolution output to crop it.
    """
    spatial = tuple(x.shape[2:])
    multiple = (multiple,) * len(spatial) if isinstance(multiple, int) else tuple(multiple)
    if len(multiple) != len(spatial):
        raise ValueError(f"multiple must have one entry per spatial axis ({len(spatial)}); got {multiple}.")
    extra = [-n % m for n, m in zip(spatial, multiple, strict=True)]
    crop = (slice(None), slice(None), *(slice(0, n) for n in spatial))
    if not any(extra):
        return x, crop
    pad = [v for e in reversed(extra) for v in (0, e)]  # pad lists the last axis first
    return functional.pad(x, pad), crop


def _crop_outputs(out: torch.Tensor | list[torch.Tensor], spatial: Sequence[int], padded: Sequence[int]):
    """Crop full-resolution logits (and lower-resolution deep-supervision logits) back to the input's extent."""
    if isinstance(out, torch.Tensor):
        return _crop(out, spatial, padded)
    return [_crop(o, spatial, padded) for o in out]


def _crop(t: torch.Tensor, spatial: Sequence[int], padded: Sequence[int]) -> torch.Tensor:
    keep = [math.ceil(n * s / p) for n, s, p in zip(spatial, t.shape[2:], padded, strict=True)]
    return t[(slice(None), slice(None), *(slice(0, k) for k in keep))]


# --------------------------------------------------------------------------- add-ons


class HUPriorChannels(nn.Module):
    """CT add-on: lung, soft-tissue and bone masks recomputed from the HU image, appended as 3 channels.

    The network receives normalised CT; HU = x·std + mean is recovered from channel 0. The masks are soft
    (products of sigmoids ``softness`` HU wide at each window edge), so they are smooth and differentiable.
    """

    WINDOWS = ((-1000.0, -400.0), (-100.0, 100.0), (400.0, math.inf))  # lung, soft tissue, bone (HU)

    def __init__(self, mean: float, std: float, softness: float = 10.0):
        super().__init__()
        self.mean, self.std, self.softness = mean, std, softness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x[:, :1].float() * self.std + self.mean
        masks = [self._window(hu, lo, hi).to(x.dtype) for lo, hi in self.WINDOWS]
        return torch.cat([x, *masks], dim=1)

    def _window(self, hu: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        mask = torch.sigmoid((hu - lo) / self.softness)
        return mask if math.isinf(hi) else mask * torch.sigmoid((hi - hu) / self.softness)


class MultiScaleStem(nn.Module):
    """Parallel 3/5/7 convolutions fused by a 1×1 convolution: one stem for lesions of very different sizes."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.branches = nn.ModuleList(
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=k, norm=_norm_arg(norm), act=_ACT)
            for k in (3, 5, 7)
        )
        self.fuse = Convolution(
            spatial_dims, 3 * out_channels, out_channels, kernel_size=1, norm=_norm_arg(norm), act=_ACT
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class PriorGate(nn.Module):
    """X-ray add-on: a small prior U-Net whose sigmoid map gates the foreground logits.

    Gating is in probability space: foreground logits get ``+ log σ(prior)``, so after the softmax each
    foreground probability is multiplied by the prior map (and renormalised); background is untouched.
    """

    def __init__(self, in_channels: int, first_features: int, norm: str):
        super().__init__()
        features = [max(2, first_features * 2**i // 8) for i in range(_LEVELS)]
        self.net = BasicUNet(2, in_channels, 1, features=(*features, features[0]), norm=_norm_arg(norm))

    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        log_prior = functional.logsigmoid(self.net(x).float()).to(logits.dtype)
        return torch.cat([logits[:, :1], logits[:, 1:] + log_prior], dim=1)


# --------------------------------------------------------------------------- backbones


def _norm_arg(norm: str) -> tuple:
    return ("instance", {"affine": True}) if norm == "instance" else ("batch", {})


class UNetEncoder(nn.Module):
    """The U-Net contracting path (MONAI BasicUNet blocks): two 3×3 convs per level, 4 max-poolings."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], norm: str, dropout: float):
        super().__init__()
        act, norm_arg = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), _norm_arg(norm)
        self.levels = nn.ModuleList([TwoConv(spatial_dims, in_channels, features[0], act, norm_arg, True, dropout)])
        for c_in, c_out in itertools.pairwise(features):
            self.levels.append(Down(spatial_dims, c_in, c_out, act, norm_arg, True, dropout))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """The U-Net expanding path: transposed-conv up-sampling, skip concatenation, two convs; optional DS heads."""

    def __init__(
        self, spatial_dims: int, features: Sequence[int], num_classes: int, norm: str, dropout: float, heads: int
    ):
        super().__init__()
        act, norm_arg = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), _norm_arg(norm)
        deep = list(reversed(features))
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, c_in, c_skip, c_skip, act, norm_arg, True, dropout, halves=c_skip != features[0])
            for c_in, c_skip in itertools.pairwise(deep)
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.head = conv(features[0], num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList(conv(features[1 + i], num_classes, kernel_size=1) for i in range(heads))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x, decoded = features[-1], []
        for up, skip in zip(self.ups, reversed(features[:-1]), strict=True):
            x = up(x, skip)
            decoded.append(x)
        out = self.head(x)
        if not (self.training and len(self.ds_heads)):
            return out
        finest_first = decoded[::-1]
        return [out, *(head(finest_first[1 + i]) for i, head in enumerate(self.ds_heads))]


class ClassicUNet(nn.Module):
    """Ronneberger's U-Net, with one encoder (early fusion) or one encoder per sequence (late fusion).

    Late fusion: the per-level features of the sequence encoders are concatenated and fused by a 1×1
    convolution before the shared decoder.
    """

    def __init__(self, cfg: dict, in_channels: int):
        super().__init__()
        dims, features, norm, dropout = cfg["spatial_dims"], cfg["features"], cfg["norm"], cfg["dropout"]
        late = cfg["fusion"] == "late"
        n_encoders, enc_in = (in_channels, 1) if late else (1, in_channels)
        self.encoders = nn.ModuleList(UNetEncoder(dims, enc_in, features, norm, dropout) for _ in range(n_encoders))
        conv = Conv[Conv.CONV, dims]
        self.fusion = nn.ModuleList(conv(n_encoders * f, f, kernel_size=1) for f in features) if late else None
        heads = cfg["deep_supr_num"] if cfg["deep_supervision"] else 0
        self.decoder = UNetDecoder(dims, features, cfg["num_classes"], norm, dropout, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.fusion is None:
            return self.decoder(self.encoders[0](x))
        per_sequence = [enc(x[:, i : i + 1]) for i, enc in enumerate(self.encoders)]
        levels = zip(*per_sequence, strict=True)
        fused = [fuse(torch.cat(level, dim=1)) for fuse, level in zip(self.fusion, levels, strict=True)]
        return self.decoder(fused)


class UNetPlusPlus(BasicUNetPlusPlus):
    """MONAI's U-Net++ returning one tensor, or in training with deep supervision its nested outputs deepest first.

    Without deep supervision the three shallower output heads are dropped: unused parameters would break
    distributed training and bloat the weights.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.deep_supervision:
            self.final_conv_0_1 = self.final_conv_0_2 = self.final_conv_0_3 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = super().forward(x)
        return outputs[::-1] if self.training and self.deep_supervision else outputs[-1]


class WidthVNet(VNet):
    """MONAI's V-Net with a width (its 16 base channels scaled), configurable dropout, 2D-correct dropout, and a
    1×1 input adapter when ``in_channels`` does not divide the base width (MONAI requires it: 3 MRI sequences)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, base: int, dropout: float):
        nn.Module.__init__(self)  # VNet.__init__ hard-codes the widths; build the same layers with ours
        d, b, act = spatial_dims, base, ("elu", {"inplace": True})
        drop_down, drop_up = dropout or None, (dropout or None, dropout)
        fits = b % in_channels == 0
        self.adapter = nn.Identity() if fits else Conv[Conv.CONV, d](in_channels, b, kernel_size=1)
        self.in_tr = InputTransition(d, in_channels if fits else b, b, act)
        self.down_tr32 = DownTransition(d, b, 1, act, dropout_dim=d)
        self.down_tr64 = DownTransition(d, 2 * b, 2, act, dropout_dim=d)
        self.down_tr128 = DownTransition(d, 4 * b, 3, act, dropout_prob=drop_down, dropout_dim=d)
        self.down_tr256 = DownTransition(d, 8 * b, 2, act, dropout_prob=drop_down, dropout_dim=d)
        self.up_tr256 = UpTransition(d, 16 * b, 16 * b, 2, act, dropout_prob=drop_up, dropout_dim=d)
        self.up_tr128 = UpTransition(d, 16 * b, 8 * b, 2, act, dropout_prob=drop_up, dropout_dim=d)
        self.up_tr64 = UpTransition(d, 8 * b, 4 * b, 1, act, dropout_prob=(None, dropout), dropout_dim=d)
        self.up_tr32 = UpTransition(d, 4 * b, 2 * b, 1, act, dropout_prob=(None, dropout), dropout_dim=d)
        self.out_tr = OutputTransition(d, 2 * b, num_classes, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.adapter(x))


class NestedDynUNet(DynUNet):
    """MONAI's DynUNet returning deep-supervision logits at their own resolution, as nnU-Net does, instead of
    up-sampling them to full resolution and stacking them (cheaper, and the loss down-samples the target)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.output_block(self.skip_layers(x))
        return [out, *self.heads] if self.training and self.deep_supervision else out


def _use_instance_norm(module: nn.Module) -> None:
    """Swap hard-coded BatchNorm layers (MONAI's V-Net, Attention U-Net) for affine InstanceNorm, in place."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d)):
            dims = 3 if isinstance(child, nn.BatchNorm3d) else 2
            setattr(module, name, Norm[Norm.INSTANCE, dims](child.num_features, affine=True))
        else:
            _use_instance_norm(child)


def _backbone(cfg: dict, in_channels: int) -> nn.Module:
    dims, classes, variant = cfg["spatial_dims"], cfg["num_classes"], cfg["variant"]
    if variant == "unet":
        return ClassicUNet(cfg, in_channels)
    if variant == "unetpp":
        features = (*cfg["features"], cfg["features"][0])
        return UNetPlusPlus(
            dims, in_channels, classes, features, cfg["deep_supervision"], norm=_norm_arg(cfg["norm"]),
            dropout=cfg["dropout"],
        )  # fmt: skip
    if variant == "nnunet":
        return NestedDynUNet(
            dims, in_channels, classes, cfg["kernel_size"], cfg["strides"], cfg["strides"][1:],
            filters=cfg["filters"], dropout=cfg["dropout"] or None, norm_name=_norm_arg(cfg["norm"]),
            deep_supervision=cfg["deep_supervision"], deep_supr_num=cfg["deep_supr_num"], res_block=cfg["res_block"],
        )  # fmt: skip
    if variant == "vnet":
        net = WidthVNet(dims, in_channels, classes, cfg["features"][0], cfg["dropout"])
    else:
        net = AttentionUnet(dims, in_channels, classes, cfg["features"], (2,) * (_LEVELS - 1), dropout=cfg["dropout"])
    if cfg["norm"] == "instance":
        _use_instance_norm(net)
    return net


def _first_features(cfg: dict) -> int:
    return (cfg["filters"] if cfg["variant"] == "nnunet" else cfg["features"])[0]


class SegmentationNetwork(nn.Module):
    """A backbone with its optional input add-ons and prior gate, padding inputs to the total stride."""

    def __init__(self, cfg: dict, stem: nn.Module, backbone: nn.Module, prior_gate: PriorGate | None):
        super().__init__()
        self.config = cfg
        self.stride = total_stride(cfg)
        self.stem, self.backbone, self.prior_gate = stem, backbone, prior_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        dims, channels = self.config["spatial_dims"], self.config["in_channels"]
        if x.ndim != dims + 2 or x.shape[1] != channels:
            raise ValueError(f"Expected input (N, {channels}, *{dims} spatial axes); got shape {tuple(x.shape)}.")
        padded, _ = pad_to_multiple(x, self.stride)
        out = self.backbone(self.stem(padded))
        if self.prior_gate is not None:
            out = [self.prior_gate(padded, out[0]), *out[1:]] if isinstance(out, list) else self.prior_gate(padded, out)
        return _crop_outputs(out, x.shape[2:], padded.shape[2:])


def build_network(config: dict) -> nn.Module:
    """Build the network a config describes (see the module docstring); ``model.config`` is its normalised form."""
    cfg = normalize_config(config)
    channels, stem = cfg["in_channels"], []
    if cfg["hu_priors"]:
        stem.append(HUPriorChannels(cfg["hu_priors"]["mean"], cfg["hu_priors"]["std"]))
        channels += len(HUPriorChannels.WINDOWS)
    if cfg["multiscale_stem"]:
        stem.append(MultiScaleStem(cfg["spatial_dims"], channels, _first_features(cfg), cfg["norm"]))
        channels = _first_features(cfg)
    gate = PriorGate(cfg["in_channels"], _first_features(cfg), cfg["norm"]) if cfg["prior_gate"] else None
    return SegmentationNetwork(cfg, nn.Sequential(*stem), _backbone(cfg, channels), gate)
