"""The MRI bundles' groups: mr-spinalcord-t2 (Spinal Cord Toolbox subject) and mr-brain-tissue-t1 (MNI152 template).

The cord model trains on every SCT volume with a cord label, each contrast a group (``T2w``, ``T1w``), as stored
(T2w PSR, T1w RAS: the trainer takes arrays as stored, so both axis orders are seen). A leave-one-contrast-out
build tests on axial slabs of the left-out contrast: ``CORD_SLAB`` slices of 1 mm, on an axial (``AXIAL``) grid as
an axial acquisition is stored, i.e. a contrast and a field of view the model never saw. The T2* volumes are not
used (``CORD_NOT_USED`` says why; the card states it). ``brain_template`` is also the source of the bundled
MNI152 sample (``bundled_datasets.write_samples``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bundled_cases import Case, Group, LabelSpec, Source, read_image, slicer_term  # a sibling script

# ------------------------------------------------------------------------------------ MRI spinal cord

SCT = "spinalcord-mri-sct"
SCT_SOURCE = Source(
    SCT, "MIT", "Spinal Cord Toolbox testing data, subject errsm_30, manual label. Copyright (c) 2014 NeuroPoly, MIT.",
)
CORD_LABELS = (LabelSpec(1, "spinal cord", (1.0, 0.96, 0.66), slicer_term("2748008", "Spinal cord")),)
CORD_FILES = {"T2w": ("t2.nii.gz", "t2_seg-manual.nii.gz"), "T1w": ("t1w.nii.gz", "t1w_seg-manual.nii.gz")}
CORD_SLAB = 16  # slices (1 mm) of each axial test slab, as in the user's case of issue 16
AXIAL = "LPS"  # how an axial acquisition is stored: slices along the body axis (ITK's identity direction)
CORD_NOT_USED = (
    "the T2* volumes (t2s, t2s_uncropped): their manual labels are grey matter only (11-21 mm2 a slice against "
    "70-78 mm2 of cord), so as 'spinal cord' they would teach the cord's white matter as background; "
    "t2_seg-manual_labeled: the T2w cord label again, split by vertebral level"
)


def axial_slabs(image: sitk.Image, label: sitk.Image, name: str) -> list[Case]:
    """As many non-overlapping CORD_SLAB-slice slabs as fit (centred along the body axis, superior first), each
    reoriented to the AXIAL grid (axis permutation and flips only: no interpolation)."""
    image, label = sitk.DICOMOrient(image, AXIAL), sitk.DICOMOrient(label, AXIAL)
    n = image.GetSize()[2]
    count = n // CORD_SLAB
    first = (n - count * CORD_SLAB) // 2
    starts = [first + i * CORD_SLAB for i in reversed(range(count))]  # LPS: the index grows towards superior
    return [Case(f"{name}_axial{i + 1}", image[:, :, s:s + CORD_SLAB], label[:, :, s:s + CORD_SLAB])
            for i, s in enumerate(starts)]


def spinalcord_groups(data: Path) -> list[Group]:
    """One group per contrast with a manual cord label: the whole volume trains, its axial slabs test."""
    groups = []
    for key, (image_file, label_file) in CORD_FILES.items():
        image = read_image(data / SCT / image_file, sitk.sitkInt16)
        label = read_image(data / SCT / label_file, sitk.sitkUInt8)
        stored = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        size = " x ".join(str(n) for n in image.GetSize())
        slabs = axial_slabs(image, label, key.lower())
        groups.append(Group(
            key, SCT_SOURCE, f"the {key} volume of SCT subject errsm_30 ({size} at 1 mm, stored {stored}) with its "
            "manual cord label", [Case(key.lower(), image, label)], slabs,
            f"{len(slabs)} axial slabs of the {key} volume of SCT errsm_30 ({CORD_SLAB} slices of 1 mm each, "
            f"on an axial {AXIAL} grid): a contrast and field of view the model never saw (same subject: the "
            "only one with a cord label)",
        ))
    return groups


# ------------------------------------------------------------------------------------ MRI brain tissue T1

MNI = "mni152-icbm2009a-nilearn"
MNI_SOURCE = Source(
    MNI, "MNI/McGill permissive notice (ICBM 2009a)",
    "MNI ICBM152 2009a nonlinear symmetric template (as shipped in nilearn), McConnell Brain Imaging Centre. "
    "Fonov et al., NeuroImage 2011; Collins et al. 1999.",
)
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


def brain_groups(data: Path) -> list[Group]:
    """MNI152 2009a T1 at 2 mm, GM/WM from its probability maps (threshold 0.5), with intensity-perturbed copies;
    one more copy with an unseen bias field is held out (same anatomy: a robustness check, not generalisation)."""
    t1, label = brain_template(data)
    t1_array = sitk.GetArrayFromImage(t1)

    def case(name: str, array: np.ndarray) -> Case:
        img = sitk.GetImageFromArray(array.astype(np.float32))
        img.CopyInformation(t1)
        return Case(name, img, label)

    train = [case("mni152_t1", t1_array)]
    train += [case(f"mni152_t1_perturbed{s}", _perturbed(t1_array, np.random.default_rng(s)))
              for s in range(1, BRAIN_TRAIN_VARIANTS)]
    unseen = case("mni152_t1_unseen_bias", _perturbed(t1_array, np.random.default_rng(BRAIN_HELDOUT_SEED)))
    return [
        Group("mni152", MNI_SOURCE, f"the MNI152 T1 template at {BRAIN_SPACING:g} mm and {BRAIN_TRAIN_VARIANTS - 1} "
              "copies with random bias field, gamma and noise; labels = GM/WM probability maps thresholded at 0.5 "
              "(the larger of the two)", train, []),
        Group("unseen-bias", MNI_SOURCE, "", [], [unseen],
              "none: the only held-out case is the template with an unseen bias field (same anatomy)"),
    ]
