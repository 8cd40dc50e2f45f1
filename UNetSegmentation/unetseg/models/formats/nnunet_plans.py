"""What an nnU-Net v2 ``plans.json`` and ``dataset.json`` say, as plain dataclasses (no ``nnunetv2`` needed).

The rules follow nnunetv2 2.8.1 (``utilities/plans_handling/plans_handler.py``, ``utilities/label_handling``,
``utilities/get_network_from_plans.py``); where nnU-Net looks a class up by the name a plans file gives
(``pydoc.locate``, ``recursive_find_python_class``), this module accepts only names from fixed allow-lists and refuses
the rest by name, so a plans file cannot make us import anything.

- :func:`resolve_configuration` — a configuration with ``inherits_from`` resolved, old-format plans converted.
- :func:`parse_labels` / :func:`parse_channels` — labels, regions (``regions_class_order``), ignore label, heads.
- :func:`parse_preprocessing` — transpose, spacing, patch, normalisation, resampling, reader.
The network itself is `nnunet_network`'s.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from unetseg.models.formats import FormatError
from unetseg.models.formats.nnunet_network import NETWORK_CLASSES

# ------------------------------------------------------------------------------------------ allow-lists

NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization", "RGBTo01Normalization",
                  "NoNormalization")
RESAMPLING_FUNCTIONS = {
    "resample_data_or_seg_to_shape": {"is_seg", "order", "order_z", "force_separate_z",
                                      "separate_z_anisotropy_threshold"},
    "resample_torch_fornnunet": {"is_seg", "num_threads", "device", "memefficient_seg_resampling",
                                 "force_separate_z", "separate_z_anisotropy_threshold", "mode", "aniso_axis_mode"},
    "no_resampling_hack": set(),
}
READERS = ("SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient", "NaturalImage2DIO",
           "Tiff3DIO")
CT_PROPERTIES = ("mean", "std", "percentile_00_5", "percentile_99_5")


# ------------------------------------------------------------------------------------------ dataclasses


@dataclass(frozen=True)
class NnUNetLabels:
    """Labels from ``dataset.json``, with nnU-Net's ``LabelManager`` rules.

    ``label_names``: ``{value: name}`` of the output label map (background 0 included). For label models the
    network has one head per label and the label is the argmax index (nnU-Net requires values 0..N-1). For region
    models (``has_regions``) head ``i`` is region ``regions[i]`` (sigmoid > 0.5), painted with
    ``regions_class_order[i]`` in that order (later regions overwrite earlier ones); the painted value is named after
    its region.
    """

    labels: dict
    has_regions: bool
    heads: int
    label_names: dict[int, str]
    regions: list[list[int]] | None = None
    region_names: list[str] | None = None
    regions_class_order: list[int] | None = None
    ignore_label: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return d


@dataclass(frozen=True)
class NnUNetPreprocessing:
    """A configuration's preprocessing and sliding-window settings (every axis list is in transposed order)."""

    configuration: str
    spatial_dims: int
    transpose_forward: list[int]
    transpose_backward: list[int]
    spacing: list[float]
    patch_size: list[int]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    intensity_properties: list[dict | None]
    resampling_data: dict
    resampling_probabilities: dict
    resampling_seg: dict
    image_reader_writer: str
    reorient_to_ras: bool = False
    batch_size: int | None = None
    median_image_size_in_voxels: list[float] | None = None
    original_median_spacing_after_transp: list[float] | None = field(default=None)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ plans


def resolve_configuration(plans: dict, name: str) -> dict:
    """The configuration ``name`` with ``inherits_from`` resolved (parent updated by child, as nnU-Net does) and an
    old-format one (``UNet_class_name`` …) converted to ``architecture``."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or not configs:
        raise FormatError("plans.json has no 'configurations'.")
    if name not in configs:
        raise FormatError(f"plans.json has no configuration {name!r} (it has {', '.join(configs)}).")
    chain, current = [], name
    while True:
        if current in chain:
            raise FormatError(f"plans.json: configurations inherit in a circle ({' -> '.join([*chain, current])}).")
        chain.append(current)
        parent = configs[current].get("inherits_from")
        if parent is None:
            break
        if parent not in configs:
            raise FormatError(f"plans.json: configuration {current!r} inherits from {parent!r}, which is missing.")
        current = parent
    resolved: dict = {}
    for cname in reversed(chain):
        resolved.update(copy.deepcopy(configs[cname]))
    if "architecture" not in resolved:
        resolved = _convert_old_architecture(resolved, name)
    return resolved


def _convert_old_architecture(config: dict, name: str) -> dict:
    """nnU-Net's conversion of pre-``architecture`` plans (``ConfigurationManager.__init__``)."""
    cls = config.get("UNet_class_name")
    if cls not in NETWORK_CLASSES:
        raise FormatError(f"Configuration {name!r} uses an old plans format with network {cls!r}; only "
                          f"{' and '.join(NETWORK_CLASSES)} can be converted.")
    try:
        n_stages = len(config["n_conv_per_stage_encoder"])
        dim = len(config["patch_size"])
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(config["UNet_base_num_features"] * 2 ** i, config["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": copy.deepcopy(config["conv_kernel_sizes"]),
            "strides": copy.deepcopy(config["pool_op_kernel_sizes"]),
            ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"):
                copy.deepcopy(config["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": copy.deepcopy(config["n_conv_per_stage_decoder"]),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        }
    except (KeyError, TypeError) as e:
        raise FormatError(f"Configuration {name!r}: old-format plans lack {e}.") from e
    module = "unet" if cls == "PlainConvUNet" else "residual_unet"
    out = {k: v for k, v in config.items() if k not in (
        "UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
        "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features")}
    out["architecture"] = {"network_class_name": f"dynamic_network_architectures.architectures.{module}.{cls}",
                           "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                          "nonlin"]}
    return out


def check_not_cascade(config: dict, name: str) -> None:
    previous = config.get("previous_stage")
    if previous:
        raise FormatError(
            f"Configuration {name!r} is a cascade stage: it needs the segmentation of {previous!r} as extra input "
            f"channels. Cascades are not supported; import the {previous!r} or the 3d_fullres model instead."
        )


# ------------------------------------------------------------------------------------------ labels, channels


def parse_channels(dataset_json: dict) -> list[str]:
    """Channel names in input order (``channel_names``, or the older ``modality``)."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise FormatError("dataset.json has no 'channel_names'.")
    try:
        keyed = {int(k): str(v) for k, v in channels.items()}
    except (TypeError, ValueError) as e:
        raise FormatError(f"dataset.json 'channel_names' keys must be channel numbers ({e}).") from e
    if sorted(keyed) != list(range(len(keyed))):
        raise FormatError(f"dataset.json 'channel_names' must number the channels 0..{len(keyed) - 1}; "
                          f"it has {sorted(keyed)}.")
    return [keyed[i] for i in range(len(keyed))]


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise FormatError(f"dataset.json labels: {where} must be an integer, got {value!r}.")
    return int(value)


def parse_labels(dataset_json: dict) -> NnUNetLabels:
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise FormatError("dataset.json has no 'labels'.")
    if "background" not in labels:
        raise FormatError("dataset.json labels must declare 'background' (value 0).")
    if isinstance(labels["background"], (list, tuple)) or _int(labels["background"], "background") != 0:
        raise FormatError("dataset.json labels: 'background' must be 0.")
    ignore = labels.get("ignore")
    if ignore is not None:
        ignore = _int(ignore, "ignore")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    values = set()
    for name, v in labels.items():
        if name == "ignore":
            continue
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            values.add(_int(x, repr(name)))
    all_labels = sorted(values)
    if ignore is not None and ignore != max(all_labels) + 1:
        raise FormatError(f"dataset.json: the ignore label must be the highest value ({max(all_labels) + 1}), "
                          f"not {ignore}.")
    if not has_regions:
        if all_labels != list(range(len(all_labels))):
            raise FormatError(f"dataset.json label values must be consecutive from 0 (nnU-Net's argmax index is the "
                              f"label); they are {all_labels}.")
        names = {}
        for name, v in labels.items():
            if name != "ignore":
                names.setdefault(_int(v[0] if isinstance(v, (list, tuple)) else v, repr(name)), name)
        return NnUNetLabels(labels=copy.deepcopy(labels), has_regions=False, heads=len(all_labels),
                            label_names=dict(sorted(names.items())), ignore_label=ignore)
    order = dataset_json.get("regions_class_order")
    regions, region_names = [], []
    for name, v in labels.items():
        if name == "ignore":
            continue
        members = [_int(x, repr(name)) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if set(members) == {0}:
            continue
        regions.append(members)
        region_names.append(name)
    if not isinstance(order, list) or len(order) != len(regions):
        raise FormatError(f"dataset.json defines {len(regions)} regions ({', '.join(region_names)}) and needs a "
                          f"'regions_class_order' with one label value per region; it has {order!r}.")
    order = [_int(x, "regions_class_order") for x in order]
    names = {0: "background"}
    for value, name in zip(order, region_names, strict=True):
        names[value] = name  # a value painted twice keeps the later region's name, as the later region wins
    return NnUNetLabels(labels=copy.deepcopy(labels), has_regions=True, heads=len(regions),
                        label_names=dict(sorted(names.items())), regions=regions, region_names=region_names,
                        regions_class_order=order, ignore_label=ignore)


# ------------------------------------------------------------------------------------------ preprocessing


def parse_preprocessing(plans: dict, name: str, config: dict, n_channels: int) -> NnUNetPreprocessing:
    preprocessor = config.get("preprocessor_name", "DefaultPreprocessor")
    if preprocessor != "DefaultPreprocessor":
        raise FormatError(f"Configuration {name!r} uses the custom preprocessor {preprocessor!r}; only nnU-Net's "
                          "DefaultPreprocessor is reproduced.")
    label_manager = plans.get("label_manager", "LabelManager")
    if label_manager != "LabelManager":
        raise FormatError(f"plans.json names the custom label manager {label_manager!r}; only LabelManager is "
                          "reproduced.")
    tf, tb = plans.get("transpose_forward"), plans.get("transpose_backward")
    if not _is_perm(tf, 3) or not _is_perm(tb, 3) or [tf[i] for i in tb] != [0, 1, 2]:
        raise FormatError(f"plans.json: transpose_forward {tf!r} / transpose_backward {tb!r} are not a permutation "
                          "of 3 axes and its inverse.")
    try:
        patch = [int(x) for x in config["patch_size"]]
        spacing = [float(x) for x in config["spacing"]]
        schemes = list(config["normalization_schemes"])
        use_mask = [bool(x) for x in config["use_mask_for_norm"]]
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"Configuration {name!r} lacks or mangles {e}.") from e
    dims = len(patch)
    if dims not in (2, 3) or len(spacing) != dims or any(p <= 0 for p in patch) \
            or any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise FormatError(f"Configuration {name!r}: patch_size {patch} and spacing {spacing} must both have 2 or 3 "
                          "positive entries.")
    if len(schemes) != n_channels or len(use_mask) != n_channels:
        raise FormatError(f"Configuration {name!r} normalises {len(schemes)} channels (use_mask_for_norm: "
                          f"{len(use_mask)}) but dataset.json has {n_channels}.")
    for s in schemes:
        if s not in NORMALIZATIONS:
            raise FormatError(f"Configuration {name!r} uses the normalisation {s!r}; supported: "
                              f"{', '.join(NORMALIZATIONS)}.")
    props_all = plans.get("foreground_intensity_properties_per_channel",
                          plans.get("foreground_intensity_properties_by_modality", {})) or {}
    props: list[dict | None] = []
    for c, scheme in enumerate(schemes):
        p = props_all.get(str(c))
        if scheme == "CTNormalization" and (
                not isinstance(p, dict) or any(not isinstance(p.get(k), (int, float)) for k in CT_PROPERTIES)):
            raise FormatError(f"Channel {c} uses CTNormalization, which needs foreground_intensity_properties_"
                              f"per_channel['{c}'] with {', '.join(CT_PROPERTIES)} in plans.json.")
        props.append({k: float(v) for k, v in p.items() if isinstance(v, (int, float))} if isinstance(p, dict)
                     else None)
    resampling = {kind: _resampling(config, kind, name) for kind in ("data", "probabilities", "seg")}
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise FormatError(f"plans.json names the image reader {reader!r}; supported: {', '.join(READERS)}.")
    return NnUNetPreprocessing(
        configuration=name, spatial_dims=dims, transpose_forward=list(tf), transpose_backward=list(tb),
        spacing=spacing, patch_size=patch, normalization_schemes=schemes, use_mask_for_norm=use_mask,
        intensity_properties=props, resampling_data=resampling["data"],
        resampling_probabilities=resampling["probabilities"], resampling_seg=resampling["seg"],
        image_reader_writer=reader, reorient_to_ras=reader.endswith("WithReorient"),
        batch_size=config.get("batch_size"), median_image_size_in_voxels=config.get("median_image_size_in_voxels"),
        original_median_spacing_after_transp=plans.get("original_median_spacing_after_transp"),
    )


def _is_perm(x: Any, n: int) -> bool:
    return isinstance(x, list) and sorted(x) == list(range(n)) and all(isinstance(i, int) for i in x)


def _resampling(config: dict, kind: str, name: str) -> dict:
    fn = config.get(f"resampling_fn_{kind}", "resample_data_or_seg_to_shape")
    kwargs = config.get(f"resampling_fn_{kind}_kwargs") or {}
    if fn not in RESAMPLING_FUNCTIONS:
        raise FormatError(f"Configuration {name!r} resamples {kind} with {fn!r}; supported: "
                          f"{', '.join(RESAMPLING_FUNCTIONS)}.")
    unknown = sorted(set(kwargs) - RESAMPLING_FUNCTIONS[fn])
    if not isinstance(kwargs, dict) or unknown:
        raise FormatError(f"Configuration {name!r}: resampling_fn_{kind}_kwargs has arguments {fn} does not take: "
                          f"{unknown}.")
    return {"fn": fn, "kwargs": copy.deepcopy(kwargs)}
