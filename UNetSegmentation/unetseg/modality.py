"""Which imaging modality a volume is: from its DICOM Modality tag, else from its voxels.

The panel's "Auto" modality uses this to pick models, and shows the guess with its reason so the user can
override it. Pure numpy (no Slicer, no torch): the logic and the widget both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unetseg.vocabulary import MODALITY_TITLES

# DICOM (0008,0060) Modality values that the catalog's codes cover. Radiographic families all map to XR.
_DICOM_TO_MODALITY = {
    "CT": "CT",
    "MR": "MR",
    "CR": "XR",  # computed radiography
    "DX": "XR",  # digital radiography
    "DR": "XR",  # retired "digital radiography", still written by some devices
    "RG": "XR",  # radiographic imaging (conventional film/screen)
    "RF": "XR",  # radio fluoroscopy
    "XA": "XR",  # X-ray angiography
    "MG": "XR",  # mammography
    "PX": "XR",  # panoramic X-ray
    "IO": "XR",  # intra-oral radiography
}

# At most this many voxels are looked at: percentiles of a regular subsample are stable and fast.
_MAX_SAMPLES = 1_000_000
# A 0.5th intensity percentile at or below this (HU) means CT: only fat (−100) and air (−1000) get there.
_CT_NEGATIVE_HU = -50.0


@dataclass(frozen=True)
class ModalityGuess:
    """A modality code ("CT", "MR", "XR", or None when unknown) and a sentence saying why."""

    modality: str | None
    reason: str

    @property
    def title(self) -> str:
        """The name the panel shows ("MRI" for "MR"), or "unknown"."""
        return MODALITY_TITLES.get(self.modality, "unknown") if self.modality else "unknown"


def modality_from_dicom(tag: str | None) -> str | None:
    """The catalog modality of a DICOM Modality value ("MR" → "MR", "DX" → "XR"); None if not covered."""
    if not tag:
        return None
    return _DICOM_TO_MODALITY.get(tag.strip().upper())


def guess_modality(array: np.ndarray | None, dicom_modality: str | None = None) -> ModalityGuess:
    """Guess the modality of a (z, y, x) voxel array, trusting a DICOM Modality tag when there is one.

    Without a usable tag: a single slice is a radiograph (XR); an intensity range reaching down to air in
    Hounsfield units (−1000) is CT; non-negative intensities are MR. Anything else is unknown.
    """
    tag_modality = modality_from_dicom(dicom_modality)
    if tag_modality:
        return ModalityGuess(tag_modality, f"DICOM Modality is {dicom_modality.strip().upper()}")
    tag_note = f" (DICOM Modality {dicom_modality.strip().upper()} is not supported)" if dicom_modality else ""
    if array is None or array.size == 0:
        return ModalityGuess(None, "the volume has no voxels" + tag_note)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[0] == 1):
        return ModalityGuess("XR", "a single-slice (2D) image" + tag_note)
    return _guess_from_intensities(array, tag_note)


def _guess_from_intensities(array: np.ndarray, tag_note: str) -> ModalityGuess:
    """CT when the darkest voxels are air in HU, MR when nothing is negative, unknown otherwise."""
    samples = _subsample(array)
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return ModalityGuess(None, "the volume has no finite voxel values" + tag_note)
    low, high = np.percentile(finite, [0.5, 99.5])
    low_min = float(finite.min())
    value_range = f"[{low:.0f}, {high:.0f}]"
    # Fat is about −100 HU and air −1000; scanners pad outside the field of view down to −3024. MRI
    # magnitudes are never negative, and z-scored images span a few units only.
    if low <= _CT_NEGATIVE_HU and low_min >= -3100 and high <= 32767 and high - low >= 100:
        what = "air" if low <= -500 else "fat"
        return ModalityGuess("CT", f"intensities {value_range} reach {what} in Hounsfield units" + tag_note)
    if low_min >= 0 and high > 0:
        return ModalityGuess("MR", f"intensities {value_range} are non-negative, unlike CT" + tag_note)
    return ModalityGuess(None, f"intensities {value_range} look like neither CT (HU) nor MRI" + tag_note)


def _subsample(array: np.ndarray) -> np.ndarray:
    """A regular subsample of at most `_MAX_SAMPLES` voxels, as float."""
    flat = np.asarray(array).ravel()
    step = max(1, flat.size // _MAX_SAMPLES)
    return flat[::step].astype(np.float64, copy=False)
