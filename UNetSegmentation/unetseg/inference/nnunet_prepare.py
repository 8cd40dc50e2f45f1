"""nnU-Net v2's preprocessing of one case and the export of its logits, reproduced without nnunetv2.

`preprocess` follows ``DefaultPreprocessor.run_case_npy``: float32 copy, ``transpose_forward``, crop to the
bounding box of the non-zero mask with its holes filled, normalise each channel by its scheme, resample to the
configuration's spacing (2-D configurations keep the slice spacing). `export` follows
``convert_predicted_logits_to_segmentation_with_correct_shape``: resample the logits back to the cropped shape,
take the arg-max (or paint the regions whose sigmoid exceeds 0.5 in ``regions_class_order``), put them into a
zero volume at the crop and transpose back. Arrays are ``(C, z, y, x)`` in the reader's order, never reoriented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unetseg.inference.nnunet_resampling import new_shape, resample_by_name
from unetseg.models.package import ModelPackage

_EPS = 1e-8


@dataclass(frozen=True)
class NnUNetRules:
    """What a converted nnU-Net model's manifest says about its preprocessing, windows and outputs."""

    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    spacing: tuple[float, ...]  # the configuration's, in transposed order (2 entries for 2-D)
    normalization: tuple[dict, ...]
    resampling_data: dict
    resampling_probabilities: dict
    patch_size: tuple[int, ...]
    heads: int
    folds: int = 1
    regions: tuple[tuple[int, ...], ...] | None = None
    class_order: tuple[int, ...] | None = None

    @classmethod
    def from_package(cls, package: ModelPackage) -> NnUNetRules:
        pre, inference, net = package.preprocessing, package.inference, package.network_config
        rules = pre["nnunetv2"]
        regions = inference.get("regions")
        return cls(
            transpose_forward=tuple(rules["transpose_forward"]),
            transpose_backward=tuple(rules["transpose_backward"]),
            spacing=tuple(float(s) for s in rules["spacing"]),
            normalization=tuple(pre["normalization"]),
            resampling_data=rules["resampling_data"],
            resampling_probabilities=rules["resampling_probabilities"],
            patch_size=tuple(int(p) for p in inference["patch_size"]),
            heads=int(net.get("heads", net["num_classes"])),
            folds=len(net["folds"]),
            regions=None if regions is None else tuple(tuple(r) for r in regions["regions"]),
            class_order=None if regions is None else tuple(regions["class_order"]),
        )

    def target_spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """The spacing the network sees for a (transposed) ``spacing``: a 2-D configuration keeps the first axis."""
        return (spacing[0], *self.spacing) if len(self.spacing) == 2 else self.spacing


@dataclass
class Preprocessed:
    """A case ready for the network, and what `export` needs to bring its logits back."""

    data: np.ndarray  # (C, *grid) float32
    spacing: tuple[float, ...]  # original spacing, transposed
    shape_before_cropping: tuple[int, ...]  # transposed
    bbox: tuple[slice, ...]
    cropped_shape: tuple[int, ...]


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel, holes filled (``binary_fill_holes``: background not connected to the border,
    6-connected, becomes foreground)."""
    mask = np.any(data != 0, axis=0)
    background, count = ndimage.label(~mask)
    if count:
        border = np.zeros(count + 1, dtype=bool)
        for axis in range(mask.ndim):
            for index in (0, -1):
                border[np.unique(np.take(background, index, axis=axis))] = True
        mask |= ~border[background]
    return mask


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The half-open bounding box of ``mask``; the whole extent when it is empty (``get_bbox_from_mask``)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, mask.shape[axis]))
    return tuple(box)


def normalise(data: np.ndarray, mask: np.ndarray, schemes: Sequence[dict]) -> None:
    """Normalise each channel of the cropped ``data`` in place by its scheme (``default_normalization_schemes``)."""
    for c, scheme in enumerate(schemes):
        x = data[c]
        kind = scheme["scheme"]
        if kind == "ct":
            np.clip(x, scheme["percentile_00_5"], scheme["percentile_99_5"], out=x)
            x -= np.float32(scheme["mean"])
            x /= np.float32(max(scheme["std"], _EPS))
        elif kind == "zscore" and scheme.get("use_mask"):
            values = x[mask]
            mean, std = values.mean(), values.std()
            x[mask] = (values - mean) / max(std, _EPS)
        elif kind == "zscore":
            mean, std = x.mean(), x.std()
            x -= mean
            x /= max(std, _EPS)
        elif kind == "rescale01":
            x -= x.min()
            x /= max(x.max(), _EPS)
        elif kind == "rgb01":
            if x.min() < 0 or x.max() > 255:
                raise ValueError("An RGB channel must lie in 0..255 (nnU-Net's RGBTo01Normalization).")
            x /= np.float32(255)
        elif kind != "none":
            raise ValueError(f"Unknown nnU-Net normalisation {kind!r}.")


def preprocess(arrays: np.ndarray, spacing: Sequence[float], rules: NnUNetRules) -> Preprocessed:
    """``arrays`` ``(C, z, y, x)`` of ``spacing`` (z, y, x) mm → the network's input, as nnU-Net prepares it."""
    tf = rules.transpose_forward
    data = np.ascontiguousarray(arrays.astype(np.float32).transpose(0, *(a + 1 for a in tf)))
    spacing_t = tuple(float(spacing[a]) for a in tf)
    shape_before = tuple(data.shape[1:])
    mask = nonzero_mask(data)
    bbox = bounding_box(mask)
    data = np.ascontiguousarray(data[(slice(None), *bbox)])
    mask = mask[bbox]
    cropped = tuple(data.shape[1:])
    target = rules.target_spacing(spacing_t)
    grid = new_shape(cropped, spacing_t, target)
    normalise(data, mask, rules.normalization)
    del mask
    data = resample_by_name(data, grid, spacing_t, target, rules.resampling_data)
    return Preprocessed(data, spacing_t, shape_before, bbox, cropped)


def argmax(logits: np.ndarray) -> np.ndarray:
    """``np.argmax(logits, axis=0)`` (ties to the lower index) channel by channel in float32, much faster on fp16."""
    best = logits[0].astype(np.float32)
    index = np.zeros(best.shape, dtype=np.intp if len(logits) > 255 else np.uint8)
    for c in range(1, len(logits)):
        channel = logits[c].astype(np.float32)
        higher = channel > best
        index[higher] = c
        np.maximum(best, channel, out=best)
    return index


def segmentation(logits: np.ndarray, rules: NnUNetRules) -> np.ndarray:
    """Labels from logits ``(heads, *spatial)``: the arg-max (ties to the lower label), or the regions whose sigmoid
    (in float32) exceeds 0.5, painted in ``class_order``."""
    if rules.regions is None:
        return argmax(logits).astype(np.uint8 if rules.heads <= 255 else np.uint16)
    labels = np.zeros(logits.shape[1:], dtype=np.uint8 if max(rules.class_order) < 255 else np.uint16)
    for head, value in enumerate(rules.class_order):
        labels[1 / (1 + np.exp(-logits[head].astype(np.float32))) > 0.5] = value
    return labels


def export(logits: np.ndarray, pre: Preprocessed, rules: NnUNetRules) -> np.ndarray:
    """Labels ``(z, y, x)`` on the input grid from the network's (fp16) logits on the preprocessed grid."""
    logits = resample_by_name(logits, pre.cropped_shape, rules.target_spacing(pre.spacing), pre.spacing,
                              rules.resampling_probabilities)
    cropped = segmentation(logits, rules)
    del logits
    labels = np.zeros(pre.shape_before_cropping, dtype=cropped.dtype)
    labels[pre.bbox] = cropped
    return np.ascontiguousarray(labels.transpose(rules.transpose_backward))
