"""Run an imported MONAI bundle as ``python -m monai.bundle run`` runs it, from the manifest's ``pipeline``.

The ``pipeline`` section (``kind: "monai"``) holds the bundle's preprocessing, inferer and postprocessing as the
checked plain steps `unetseg.models.formats.monai_bundle` read; nothing comes from the bundle's config. The
volume is taken as MONAI holds it (`monai_geometry.monai_volume`), the steps run with MONAI's rules
(`monai_geometry`, `monai_intensity`), the inferer with MONAI's sliding window (torch, `monai_torch`) or its numpy
twin (ONNX Runtime, `monai_windows`), and ``Invertd`` brings the scores back to the input grid before the
arg-max, as in the bundle. A bundle without ``Invertd`` gets its labels back on the input grid by nearest
neighbour. `check_pipeline` refuses, at import and at run time, anything this module cannot reproduce.
Torch-free at import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from unetseg.image import Image
from unetseg.inference import monai_geometry as geometry
from unetseg.inference import monai_intensity as intensity
from unetseg.inference.limits import WorkLimits, check_work
from unetseg.inference.monai_windows import export_scores, window_plan
from unetseg.inference.postprocessing import keep_largest_component
from unetseg.inference.windows import WindowSettings

PIPELINE_KIND = "monai"
INFERER_KINDS = ("sliding_window", "slices", "whole_image")


def check_pipeline(pipeline: dict, spatial_dims: int) -> None:
    """Raise ValueError naming the first step this module cannot run exactly as MONAI does."""
    where = "the bundle's"
    for step in pipeline.get("preprocessing", []):
        op = step.get("op")
        if op == "spacing":
            if step.get("mode") not in ("bilinear", "nearest") or step.get("padding_mode") not in ("border", "zeros"):
                raise ValueError(
                    f"{where} Spacing uses mode {step.get('mode')!r} / padding {step.get('padding_mode')!r}; "
                    "only bilinear or nearest with border or zeros padding are reproduced."
                )
            if step.get("align_corners"):
                raise ValueError(f"{where} Spacing sets align_corners=True, which is not reproduced.")
        elif op not in ("orientation", "scale_intensity_range", "normalize_intensity", "scale_intensity"):
            raise ValueError(f"{where} preprocessing step {op!r} is not supported.")
    _check_inferer(pipeline.get("inferer", {}), spatial_dims)
    state = "scores"
    for step in pipeline.get("postprocessing", []):
        state = _check_post_step(step, state, pipeline)
    if state == "scores":
        raise ValueError(f"{where} postprocessing never turns scores into labels (AsDiscrete).")


def _check_inferer(inferer: dict, spatial_dims: int) -> None:
    kind = inferer.get("kind")
    if kind not in INFERER_KINDS:
        raise ValueError(f"The bundle's inferer {kind!r} is not supported ({', '.join(INFERER_KINDS)}).")
    if kind == "whole_image":
        return
    numbers = [inferer.get("overlap"), inferer.get("sigma_scale")]
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        raise ValueError(f"The bundle's inferer gives per-axis overlap or sigma_scale ({numbers}); one number each.")
    if not 0 <= inferer["overlap"] < 1 or inferer.get("mode") not in ("constant", "gaussian"):
        raise ValueError(f"The bundle's inferer overlap {inferer['overlap']} / mode {inferer.get('mode')!r}.")
    if inferer.get("padding_mode") != "constant" or inferer.get("cval", 0.0) != 0.0:
        raise ValueError("The bundle's inferer pads windows other than with zeros, which is not reproduced.")


def _check_post_step(step: dict, state: str, pipeline: dict) -> str:
    """The data's state after ``step`` ("scores", "labels" or "masks"), or a ValueError."""
    op, where = step.get("op"), "the bundle's postprocessing"
    sigmoid = any(s.get("function") == "sigmoid" for s in pipeline["postprocessing"] if s.get("op") == "activation")
    if op == "activation":
        if state != "scores":
            raise ValueError(f"{where} applies an activation after AsDiscrete.")
        return state
    if op == "invert":
        if state != "scores" and not step.get("nearest_interp"):
            raise ValueError(f"{where} inverts a label map with linear interpolation (Invertd nearest_interp=False).")
        return state
    if op == "discretize":
        if step.get("argmax") and sigmoid:
            raise ValueError(f"{where} takes the arg-max of independent (sigmoid) channels.")
        return "labels" if step.get("argmax") else "masks"
    if op == "keep_largest_component":
        plain = step.get("independent", True) and step.get("num_components", 1) == 1
        if state != "labels" or not plain or step.get("connectivity") is not None:
            raise ValueError(
                f"{where} KeepLargestConnectedComponent is reproduced on an arg-max label map with its defaults "
                "(independent, one component, full connectivity) only."
            )
        return state
    raise ValueError(f"{where} step {op!r} is not supported.")


# ---------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class _Resampled:
    """One Spacing: the grid before (affine, shape) and after, and how it interpolated (for Invertd)."""

    src_affine: np.ndarray
    src_shape: tuple[int, ...]
    dst_affine: np.ndarray
    mode: str
    padding_mode: str


def bundle_pipeline(manifest: dict) -> dict:
    """``{"preprocessing", "inferer", "postprocessing"}`` from a manifest of ``preprocessing.kind`` monai."""
    try:
        steps, rest = manifest["preprocessing"]["monai"]["steps"], manifest["inference"]["monai"]
        return {"preprocessing": steps, "inferer": rest["inferer"], "postprocessing": rest["postprocessing"]}
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"Model {manifest.get('name')!r} says it runs a MONAI bundle's pipeline but its manifest lacks {e}; "
            "import the bundle again (`unetseg models import BUNDLE --replace`)."
        ) from e


def predict_labels(
    inputs: Sequence[Image],
    package: Any,
    settings: WindowSettings,
    backend: str,
    run: Any,
    limits: WorkLimits,
) -> np.ndarray:
    """The bundle's label map (label values, ``(z, y, x)``) on the grid of ``inputs[0]``."""
    pipeline = bundle_pipeline(package.manifest)
    check_pipeline(pipeline, int(package.manifest["spatial_dims"]))
    rank = 2 if package.manifest["spatial_dims"] == 2 and pipeline["inferer"]["kind"] != "slices" else 3
    volume, affine = geometry.monai_volume(inputs, rank)
    records: list[Any] = []
    for step in pipeline["preprocessing"]:
        volume, affine = _preprocess(volume, affine, step, records, pipeline["inferer"], settings, limits)
    run.report(0.05, "preprocessed")
    if backend in ("onnx", "openvino"):
        scores = export_scores(backend, package, volume, pipeline["inferer"], settings, run)
    else:
        from unetseg.inference.monai_torch import torch_scores  # lazy: torch

        scores = torch_scores(package, volume, pipeline["inferer"], settings, run)
    del volume
    run.check_cancel()
    inverted = False
    for step in pipeline["postprocessing"]:
        op = step["op"]
        if op == "activation":
            scores = intensity.activation(scores, step["function"])
        elif op == "invert":
            scores, inverted = _invert(scores, records, bool(step["nearest_interp"])), True
        elif op == "discretize":
            scores = intensity.discretize(scores, step["argmax"], step["threshold"])
        elif op == "keep_largest_component":
            labels = np.rint(scores[0]).astype(np.int32)
            values = step.get("applied_labels") or [int(v) for v in np.unique(labels) if v != 0]
            scores = keep_largest_component(labels, values)[np.newaxis].astype(np.float32)
    if not inverted:
        scores = _invert(scores, records, nearest=True)
    sigmoid = any(s["op"] == "activation" and s["function"] == "sigmoid" for s in pipeline["postprocessing"])
    return geometry.labels_to_image(_label_map(scores, sigmoid))


def _preprocess(
    volume: np.ndarray,
    affine: np.ndarray,
    step: dict,
    records: list,
    inferer: dict,
    settings: WindowSettings,
    limits: WorkLimits,
) -> tuple[np.ndarray, np.ndarray]:
    """One preprocessing step on (volume, affine); spatial steps are recorded for Invertd."""
    op = step["op"]
    if op == "orientation":
        new_affine, reorder = geometry.orientation(affine, volume.shape[1:], step["axcodes"])
        records.append(reorder)
        return reorder.apply(volume), new_affine
    if op == "spacing":
        new_affine, shape = geometry.spacing_grid(affine, volume.shape[1:], step["pixdim"])
        _check_work(shape, volume.shape[0], affine, new_affine, inferer, settings, limits)
        resampled = geometry.resample(volume, affine, new_affine, shape, step["mode"], step["padding_mode"])
        new_affine = geometry.tracked_affine(affine, new_affine, volume.shape[1:], shape)
        records.append(_Resampled(affine, volume.shape[1:], new_affine, step["mode"], step["padding_mode"]))
        return resampled, new_affine
    if op == "scale_intensity_range":
        args = {k: step[k] for k in ("a_min", "a_max", "b_min", "b_max", "clip")}
        return intensity.scale_intensity_range(volume, **args), affine
    if op == "normalize_intensity":
        args = {k: step[k] for k in ("subtrahend", "divisor", "nonzero", "channel_wise")}
        return intensity.normalize_intensity(volume, **args), affine
    return intensity.scale_intensity(volume, step["minv"], step["maxv"], step["channel_wise"]), affine


def _check_work(
    grid: Sequence[int],
    channels: int,
    affine: np.ndarray,
    new_affine: np.ndarray,
    inferer: dict,
    settings: WindowSettings,
    limits: WorkLimits,
) -> None:
    """Refuse a network grid beyond the work limits before resampling to it (spacings quoted z, y, x)."""
    roi, _ = window_plan(inferer, grid)
    as_3d = list(grid) if len(grid) == 3 else [1, *grid]
    windows = dataclasses.replace(
        settings, spatial_dims=len(grid), roi_size=roi, overlap=float(inferer.get("overlap", 0.25))
    )
    spacing = [np.sqrt((a[:-1, :-1] ** 2).sum(axis=0))[::-1] for a in (affine, new_affine)]
    check_work(as_3d if len(grid) == 2 else grid, channels, windows, limits, spacing[0], spacing[1])


def _invert(scores: np.ndarray, records: list, nearest: bool) -> np.ndarray:
    """MONAI's Invertd: the spatial steps undone in reverse order (Spacing resampled back, channel by channel
    in float64 as MONAI computes it; Orientation reordered back)."""
    for record in reversed(records):
        if isinstance(record, geometry.Reorder):
            scores = record.undo(scores)
            continue
        mode = "nearest" if nearest else record.mode
        scores = np.stack(
            [
                geometry.resample(c[np.newaxis], record.dst_affine, record.src_affine, record.src_shape, mode,
                                  record.padding_mode)[0]
                for c in scores
            ]
        )  # fmt: skip
    return scores


def _label_map(out: np.ndarray, sigmoid: bool) -> np.ndarray:
    """Label values from the discrete output: an arg-max map is the values itself; thresholded channels are
    painted in channel order (value c + 1 for sigmoid channels, c for softmax ones; a later channel wins)."""
    if out.shape[0] == 1:
        labels = np.rint(out[0]).astype(np.int64)  # arg-max channels, or one sigmoid channel: value 1
        return labels.astype(np.min_scalar_type(max(int(labels.max(initial=0)), 1)))
    labels = np.zeros(out.shape[1:], dtype=np.int64)
    for c, mask in enumerate(out):
        value = c + 1 if sigmoid else c
        if value:
            labels[mask > 0.5] = value
    return labels.astype(np.min_scalar_type(max(int(labels.max(initial=0)), 1)))
