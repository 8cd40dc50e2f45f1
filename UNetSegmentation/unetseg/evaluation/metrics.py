"""Per-class segmentation metrics in physical units: Dice, IoU, HD, HD95, ASSD and volumes.

Arrays are label maps in numpy order, e.g. (z, y, x) as in `Image.array`, so ``spacing`` is given **in the
same axis order as the array**: (sz, sy, sx) in mm — the reverse of `Image.spacing`, which is ITK (x, y, z);
pass ``image.spacing[::-1]``. Axes of size 1 (a 2D image stored as one slice) are dropped before surface
distances are measured, so a 2D image gets 2D contours.

Surfaces are the boundary voxels of each mask (voxels with a face neighbour outside it; the image border
counts as outside). Distances between surfaces come from SimpleITK's exact Euclidean (Maurer) distance map
with the voxel spacing, the standard SimpleITK evaluation recipe; MONAI's surface metrics would need SciPy,
which is not otherwise a dependency.

- ``hd``: Hausdorff distance, the largest surface distance in either direction (mm).
- ``hd95``: the larger of the two directed 95th percentiles (as MONAI's ``HausdorffDistanceMetric``).
- ``assd``: average symmetric surface distance, the mean of both directions' distances pooled (mm).
- ``volume_pred_ml``, ``volume_ref_ml``, ``volume_diff_ml`` (prediction minus reference), in millilitres.

Empty masks, applied the same way everywhere (unlike MONAI's ``DiceMetric``, whose default ignores empty
references and so never penalises a false positive on an empty case):

- both empty: Dice 1, IoU 1, distances 0, ``flag = "both_empty"``;
- one empty: Dice 0, IoU 0, distances ``inf``, ``flag = "pred_empty"`` or ``"ref_empty"``;
- otherwise ``flag = None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

FLAGS = ("both_empty", "pred_empty", "ref_empty")


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty."""
    pred_mask, ref_mask = _binary_pair(pred_mask, ref_mask)
    total = int(pred_mask.sum()) + int(ref_mask.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred_mask, ref_mask).sum()) / total


def iou(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Intersection over union (Jaccard) of two binary masks; 1.0 when both are empty."""
    pred_mask, ref_mask = _binary_pair(pred_mask, ref_mask)
    union = int(np.logical_or(pred_mask, ref_mask).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred_mask, ref_mask).sum()) / union


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of the prediction to the reference surface, and back.

    Both masks must be non-empty. ``spacing`` follows the array's axis order.
    """
    pred_mask, ref_mask = _binary_pair(pred_mask, ref_mask)
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError("surface_distances needs two non-empty masks; see compute_metrics for empty conventions.")
    pred_mask, ref_mask, spacing = _drop_singleton_axes(pred_mask, ref_mask, _spacing(spacing, pred_mask.ndim))
    pred_mask, ref_mask = _crop_to_union(pred_mask, ref_mask)
    return (
        _distance_to_surface(ref_mask, spacing)[_surface(pred_mask, spacing)],
        _distance_to_surface(pred_mask, spacing)[_surface(ref_mask, spacing)],
    )


def compute_metrics(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float]
) -> dict[int, dict]:
    """Per-label metrics of a predicted label map against a reference (see the module docstring for keys)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape; got {pred.shape} and {ref.shape}.")
    spacing = _spacing(spacing, pred.ndim)
    voxel_ml = math.prod(spacing) / 1000.0
    return {int(label): _label_metrics(pred == label, ref == label, spacing, voxel_ml) for label in labels}


def _label_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], voxel_ml: float) -> dict:
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    result = {
        "dice": dice(pred, ref),
        "iou": iou(pred, ref),
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_ref_ml": n_ref * voxel_ml,
        "volume_diff_ml": (n_pred - n_ref) * voxel_ml,
    }
    if n_pred == 0 or n_ref == 0:
        flag = "both_empty" if n_pred == n_ref else ("pred_empty" if n_pred == 0 else "ref_empty")
        distance = 0.0 if flag == "both_empty" else math.inf
        return {**result, "hd": distance, "hd95": distance, "assd": distance, "flag": flag}
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    return {
        **result,
        "hd": float(max(to_ref.max(), to_pred.max())),
        "hd95": float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))),
        "assd": float(np.concatenate([to_ref, to_pred]).mean()),
        "flag": None,
    }


def _binary_pair(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"Masks must have the same shape; got {pred_mask.shape} and {ref_mask.shape}.")
    return pred_mask, ref_mask


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(
            f"spacing must list {ndim} positive values in the array's axis order (e.g. (sz, sy, sx) for "
            f"(z, y, x) arrays); got {spacing}."
        )
    return spacing


def _drop_singleton_axes(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]):
    """Remove axes of size 1 (keeping at least two), so a one-slice 2D image gets in-plane contours."""
    keep = [i for i, n in enumerate(pred.shape) if n > 1]
    keep = keep if len(keep) >= 2 else list(range(pred.ndim))[-2:]
    shape = tuple(pred.shape[i] for i in keep)
    return pred.reshape(shape), ref.reshape(shape), tuple(spacing[i] for i in keep)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the bounding box of both masks with a one-voxel empty margin (the image border is outside)."""
    coords = np.argwhere(pred | ref)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(coords.min(0), coords.max(0), strict=True))
    return np.pad(pred[box], 1), np.pad(ref[box], 1)


def _image(mask: np.ndarray, spacing: tuple[float, ...]) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing[::-1])  # SimpleITK spacing is (x, y[, z]): the reverse of numpy's axis order
    return image


def _surface(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Boundary voxels of a mask: in it, with a face neighbour outside it."""
    return sitk.GetArrayFromImage(sitk.LabelContour(_image(mask, spacing), fullyConnected=False)) > 0


def _distance_to_surface(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Unsigned Euclidean distance (mm) of every voxel to the mask's boundary voxels (exactly 0 on them)."""
    distance = sitk.SignedMaurerDistanceMap(
        _image(mask, spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    # Maurer's float32 map leaves ~1e-6 mm on the boundary itself; identical masks must give exactly 0.
    return np.where(_surface(mask, spacing), 0.0, np.abs(sitk.GetArrayFromImage(distance)))
