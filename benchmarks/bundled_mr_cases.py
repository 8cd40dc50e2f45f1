"""The MRI bundles' cases: mr-spinalcord-t2 (Spinal Cord Toolbox T2) and mr-brain-tissue-t1 (MNI152 template).

Each builder returns (training cases, held-out cases) from the shared data folder; ``brain_template`` is also the
source of the bundled MNI152 sample (``bundled_datasets.write_samples``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bundled_cases import Case, LabelSpec, read_image, slicer_term  # a sibling script

# ------------------------------------------------------------------------------------ MRI spinal cord T2

SCT = "spinalcord-mri-sct"
CORD_LABELS = (LabelSpec(1, "spinal cord", (1.0, 0.96, 0.66), slicer_term("2748008", "Spinal cord")),)
CORD_HELDOUT_SLICES = 15  # the most inferior 15 mm of the T2 volume are held out


def _superior_axis(img: sitk.Image) -> tuple[int, int]:
    """The index axis (ITK order) closest to the physical superior direction, and its sign (+1: index goes up)."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(d[2])))
    return axis, int(np.sign(d[2, axis]))


def _slab(img: sitk.Image, axis: int, start: int, stop: int) -> sitk.Image:
    """Indices [start, stop) along ITK axis `axis`, keeping the physical position (origin) of the slab."""
    index = [0, 0, 0]
    size = list(img.GetSize())
    index[axis], size[axis] = start, stop - start
    return sitk.RegionOfInterest(img, size, index)


def build_spinalcord(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """T2 with its manual cord label, split along the cord: the inferior 15 mm held out, the rest for training."""
    t2 = read_image(data / SCT / "t2.nii.gz", sitk.sitkInt16)
    seg = read_image(data / SCT / "t2_seg-manual.nii.gz", sitk.sitkUInt8)
    axis, sign = _superior_axis(t2)
    n = t2.GetSize()[axis]
    inferior = (0, CORD_HELDOUT_SLICES) if sign > 0 else (n - CORD_HELDOUT_SLICES, n)
    superior = (CORD_HELDOUT_SLICES, n) if sign > 0 else (0, n - CORD_HELDOUT_SLICES)
    train = Case("t2_superior", _slab(t2, axis, *superior), _slab(seg, axis, *superior))
    test = Case("t2_inferior", _slab(t2, axis, *inferior), _slab(seg, axis, *inferior))
    return [train], [test]


# ------------------------------------------------------------------------------------ MRI brain tissue T1

MNI = "mni152-icbm2009a-nilearn"
MNI_LICENCE = "MNI/McGill permissive notice (ICBM 2009a)"
BRAIN_LABELS = (
    LabelSpec(1, "grey matter", (0.50, 0.68, 0.50), slicer_term("40146001", "Cerebral Grey Matter")),
    LabelSpec(2, "white matter", (0.98, 0.98, 0.88), slicer_term("68523003", "Cerebral White Matter")),
)
BRAIN_SPACING = 2.0
BRAIN_TRAIN_VARIANTS = 4  # template + 3 copies with random bias field, gamma and noise
BRAIN_HELDOUT_SEED = 1000  # a further copy with an unseen bias field: same anatomy, so not generalisation


def _resample_iso(img: sitk.Image, spacing: float, interpolator: int) -> sitk.Image:
    size = [max(1, round(sz * sp / spacing)) for sz, sp in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    return sitk.Resample(img, size, sitk.Transform(), interpolator, img.GetOrigin(), (spacing,) * 3,
                         img.GetDirection(), 0.0, sitk.sitkFloat32)


def brain_tissue_label(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """1 = grey matter, 2 = white matter where that class's probability is the highest and above 0.5."""
    label = np.zeros(gm.shape, np.uint8)
    label[(gm > 0.5) & (gm >= wm)] = 1
    label[(wm > 0.5) & (wm > gm)] = 2
    return label


def _perturbed(t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The T1 with a smooth multiplicative bias field (up to about ±30 %), a gamma change and Rician-like noise."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in t1.shape], indexing="ij")
    log_field = sum(rng.uniform(-0.3, 0.3) * g for g in grids)
    log_field += sum(rng.uniform(-0.2, 0.2) * g * h for g in grids for h in grids)
    scaled = (t1 / max(float(t1.max()), 1e-6)) ** rng.uniform(0.7, 1.5) * np.exp(log_field)
    noisy = np.abs(scaled + rng.normal(0, rng.uniform(0.01, 0.04), t1.shape))
    return (noisy * rng.uniform(200, 1500)).astype(np.float32)


def brain_template(data: Path) -> tuple[sitk.Image, sitk.Image]:
    """The MNI152 2009a T1 at 2 mm and its GM/WM label map (probability maps resampled, then thresholded)."""
    t1 = _resample_iso(read_image(data / MNI / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), BRAIN_SPACING,
                       sitk.sitkLinear)
    gm, wm = (
        sitk.GetArrayFromImage(_resample_iso(
            read_image(data / MNI / f"mni_icbm152_{c}_tal_nlin_sym_09a_converted.nii.gz"), BRAIN_SPACING,
            sitk.sitkLinear)) / 255.0
        for c in ("gm", "wm")
    )
    label = sitk.GetImageFromArray(brain_tissue_label(gm, wm))
    label.CopyInformation(t1)
    return t1, label


def build_brain(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """MNI152 2009a T1 at 2 mm, GM/WM from its probability maps (threshold 0.5), with intensity-perturbed copies."""
    t1, label = brain_template(data)
    t1_array = sitk.GetArrayFromImage(t1)

    def case(name: str, array: np.ndarray) -> Case:
        img = sitk.GetImageFromArray(array.astype(np.float32))
        img.CopyInformation(t1)
        return Case(name, img, label)

    train = [case("mni152_t1", t1_array)]
    train += [case(f"mni152_t1_perturbed{s}", _perturbed(t1_array, np.random.default_rng(s)))
              for s in range(1, BRAIN_TRAIN_VARIANTS)]
    heldout = [case("mni152_t1_unseen_bias", _perturbed(t1_array, np.random.default_rng(BRAIN_HELDOUT_SEED)))]
    return train, heldout
