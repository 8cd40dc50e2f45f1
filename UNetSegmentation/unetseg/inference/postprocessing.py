"""Post-processing of label maps: largest component, hole filling, small-island removal, and an optional CRF.

Label maps are numpy integer arrays in ``(z, y, x)`` order; components are 26-connected (8-connected on a
single slice), as in nnU-Net and MONAI. The morphology uses SimpleITK and needs no PyTorch; the dense CRF
(`crf.dense_crf`, torch) is imported only when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from unetseg.inference.preprocessing import nonzero_bbox

if TYPE_CHECKING:
    import torch

POSTPROCESS_OPTIONS = ("largest_component", "fill_holes", "min_island_mm3", "crf")


# ------------------------------------------------------------------------------------------------- morphology


def _to_sitk(mask: np.ndarray) -> sitk.Image:
    """A uint8 SimpleITK image of a mask; a single slice becomes a 2D image so 2D rules apply."""
    return sitk.GetImageFromArray((mask[0] if mask.shape[0] == 1 else mask).astype(np.uint8))


def _from_sitk(img: sitk.Image, shape: tuple[int, ...]) -> np.ndarray:
    return sitk.GetArrayFromImage(img).reshape(shape)


def _components_by_size(mask: np.ndarray, minimum_size: int = 0) -> np.ndarray:
    """Component ids 1..n, largest first; components under ``minimum_size`` voxels become 0."""
    components = sitk.ConnectedComponent(_to_sitk(mask), True)  # fully connected: 26 (8 in 2D)
    return _from_sitk(sitk.RelabelComponent(components, minimumObjectSize=minimum_size), mask.shape)


def _largest(mask: np.ndarray) -> np.ndarray:
    return _components_by_size(mask) == 1


def _filled(mask: np.ndarray) -> np.ndarray:
    return _from_sitk(sitk.BinaryFillhole(_to_sitk(mask), fullyConnected=False, foregroundValue=1), mask.shape) > 0


def _map_labels(labels: np.ndarray, values: Iterable[int], change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``change`` (mask → new mask) to each label inside its bounding box.

    Voxels dropped from a mask become background; voxels added to a mask take the label only where they were
    background, so one label never overwrites another.
    """
    out = labels.copy()
    for value in values:
        mask = labels == value
        if not mask.any():
            continue
        box = nonzero_bbox(mask, margin=1)
        old = mask[box]
        new = change(old)
        region = out[box]  # a view: writing to it writes to `out`
        region[old & ~new] = 0
        region[new & ~old & (region == 0)] = value
    return out


def _present(labels: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(labels) if v != 0]


def keep_largest_component(labels: np.ndarray, label_values: Iterable[int]) -> np.ndarray:
    """Keep only the largest connected component of each given label; the rest becomes background."""
    return _map_labels(labels, label_values, _largest)


def fill_holes(labels: np.ndarray, label_values: Iterable[int]) -> np.ndarray:
    """Fill background cavities fully enclosed by a label, in 3D (2D for a single slice).

    3D rather than slice by slice: a tube open at its ends (a vessel wall, bowel) keeps its lumen, only truly
    enclosed cavities are filled. Enclosed voxels of another label (a lesion inside an organ) are kept.
    """
    return _map_labels(labels, label_values, _filled)


def remove_small_islands(labels: np.ndarray, spacing: Sequence[float], min_volume_mm3: float) -> np.ndarray:
    """Set to background every connected component smaller than ``min_volume_mm3``, label by label.

    ``spacing`` is the voxel size in mm (only its product matters here; give it in the array's (z, y, x) order).
    """
    voxels = math.ceil(min_volume_mm3 / float(np.prod(spacing)) - 1e-9)
    if voxels <= 1:
        return labels.copy()
    return _map_labels(labels, _present(labels), lambda mask: _components_by_size(mask, voxels) > 0)


def postprocess(
    labels: np.ndarray,
    spacing: Sequence[float],
    options: dict,
    probabilities: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
) -> np.ndarray:
    """Run the enabled steps: CRF, small-island removal, largest component, hole filling (in that order).

    ``spacing``: voxel size in mm in the array's ``(z, y, x)`` order. ``options``: ``largest_component``
    (True for every label, or a list of labels), ``fill_holes`` (bool), ``min_island_mm3`` (float),
    ``crf`` (bool; needs the class ``probabilities`` (C, z, y, x) and the ``image`` on the same grid).
    """
    unknown = set(options) - set(POSTPROCESS_OPTIONS)
    if unknown:
        raise ValueError(f"Unknown post-processing option(s) {sorted(unknown)}; allowed: {POSTPROCESS_OPTIONS}.")
    out = labels
    if options.get("crf"):
        if probabilities is None or image is None:
            raise ValueError(
                "The CRF step refines class probabilities: pass `probabilities` and `image` on the label grid, "
                "or call dense_crf before the arg-max."
            )
        from unetseg.inference.crf import dense_crf  # lazy: torch

        refined = dense_crf(probabilities, image, spacing).argmax(0).cpu().numpy()
        out = refined.reshape(labels.shape).astype(labels.dtype)
    if options.get("min_island_mm3", 0) > 0:
        out = remove_small_islands(out, spacing, float(options["min_island_mm3"]))
    largest = options.get("largest_component", False)
    if largest:
        out = keep_largest_component(out, _present(out) if largest is True else [int(v) for v in largest])
    if options.get("fill_holes"):
        out = fill_holes(out, _present(out))
    return out if out is not labels else labels.copy()
