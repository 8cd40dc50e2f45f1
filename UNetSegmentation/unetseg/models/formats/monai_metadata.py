"""What a bundle's ``metadata.json`` says about the network's input and output: channels, labels, modality.

``network_data_format.inputs.<image>`` gives the input channels (``channel_def``) and modality;
``outputs.pred.channel_def`` gives the label names.
"""

from __future__ import annotations

import re
from typing import Any

from unetseg.models.formats.monai_files import METADATA_FILE, BundleError


def data_format(metadata: dict) -> tuple[str, str, dict, dict]:
    """(input key, prediction key, input format, output format) from ``network_data_format``."""
    fmt = metadata.get("network_data_format")
    if not isinstance(fmt, dict) or not isinstance(fmt.get("inputs"), dict) or not isinstance(fmt.get("outputs"), dict):
        raise BundleError(f"{METADATA_FILE} lacks network_data_format.inputs/outputs (the MONAI bundle schema).")
    inputs, outputs = fmt["inputs"], fmt["outputs"]
    if len(inputs) != 1:
        raise BundleError(
            f"{METADATA_FILE} declares {len(inputs)} network inputs ({', '.join(inputs)}); one image input "
            "(its channels may be several sequences) is supported."
        )
    image_key = next(iter(inputs))
    pred_key = "pred" if "pred" in outputs else next(iter(outputs), "pred")
    in_format = inputs[image_key] if isinstance(inputs[image_key], dict) else {}
    out_format = outputs.get(pred_key) if isinstance(outputs.get(pred_key), dict) else {}
    return image_key, pred_key, in_format, out_format


def _channel_names(channel_def: Any, count: int, fallback: str) -> list[str]:
    names = {}
    if isinstance(channel_def, dict):
        for k, v in channel_def.items():
            try:
                names[int(k)] = str(v).strip()
            except (TypeError, ValueError):
                continue
    return [names.get(i) or f"{fallback} {i}" for i in range(count)]


def read_inputs(in_format: dict, in_channels: int) -> list[dict]:
    """One ``{"name": ...}`` per input channel, named from ``channel_def`` (distinct names)."""
    names = _channel_names(in_format.get("channel_def"), in_channels, "channel")
    if in_channels == 1 and names == ["channel 0"]:
        names = ["image"]
    seen: dict[str, int] = {}
    out = []
    for name in names:  # the manifest wants distinct input names
        seen[name] = seen.get(name, 0) + 1
        out.append({"name": name if seen[name] == 1 else f"{name} {seen[name]}"})
    return out


def read_labels(out_format: dict, out_channels: int, multi_label: bool) -> list[dict]:
    """Label values and names: softmax/argmax outputs channel i as value i (channel 0 the background);
    sigmoid outputs (independent channels) become values 1…C in channel order."""
    channel_def = out_format.get("channel_def")
    if isinstance(channel_def, dict):
        too_high = [k for k in channel_def if str(k).isdigit() and int(k) >= out_channels]
        if too_high:
            raise BundleError(
                f"metadata.json names output channel(s) {', '.join(too_high)} but the network has {out_channels}."
            )
    names = _channel_names(channel_def, out_channels, "label")
    if multi_label:
        return [{"value": i + 1, "name": name, "channel": i} for i, name in enumerate(names)]
    if out_channels < 2:
        raise BundleError("A softmax/argmax network needs at least 2 output channels (background and a label).")
    return [{"value": i, "name": name} for i, name in enumerate(names) if i > 0]


_MODALITY_WORDS = {
    "CT": ("ct", "computed tomography", "hounsfield", "cta", "cect"),
    "MR": ("mr", "mri", "magnetic resonance", "t1", "t1w", "t2", "t2w", "flair", "adc", "dwi", "t1c", "t1ce", "t1gd"),
    "XR": ("xr", "x-ray", "xray", "radiograph", "cxr", "dx", "cr"),
}


def read_modality(in_format: dict) -> str | None:
    """CT/MR/XR from the input's ``modality`` (then its ``format`` and channel names); None if unsaid."""
    candidates = [in_format.get("modality"), in_format.get("format")]
    channel_def = in_format.get("channel_def")
    if isinstance(channel_def, dict):
        candidates += list(channel_def.values())
    for text in candidates:
        if not isinstance(text, str):
            continue
        words = set(re.split(r"[^a-z0-9-]+", text.lower())) | {text.lower().strip()}
        for modality, known in _MODALITY_WORDS.items():
            if words & set(known):
                return modality
    return None


def slug(name: str) -> str:
    """A catalog name (letters, digits, ``.``, ``_``, ``-``) made from a bundle's name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-._")[:100]
    return slug or "monai-bundle"
