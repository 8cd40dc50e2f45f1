"""Build the training folders of the bundled models from ../shared/data, outside the repository.

One nnU-Net-v2-raw-format folder per bundled model (``dataset.json``, ``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``), plus ``imagesTs``/``labelsTs`` with the held-out cases where any exist. Every
folder is rebuilt deterministically from the shared data, so the model cards can be recomputed anywhere.

    python benchmarks/bundled_datasets.py [--data ../shared/data] [--out /work/bundled-data] [NAME ...]

What each folder holds, and how honest its held-out data is, is stated in ``BUNDLES`` (it goes into the cards).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = Path("/work/bundled-data")
SAMPLE_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "SampleData"

_ANATOMY = "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
_REGION = "~Anatomic codes - DICOM master list~^^~^^"
_RIGHT, _LEFT = "SCT^24028007^Right", "SCT^7771000^Left"


def _term(code: str, meaning: str, modifier: str = "^^") -> str:
    """A Slicer terminology string for an anatomical structure (7 `~`-separated parts)."""
    return f"{_ANATOMY}SCT^{code}^{meaning}~{modifier}{_REGION}"


@dataclass(frozen=True)
class LabelSpec:
    """One output class: its value, name, RGB colour (0-1) and Slicer terminology string."""

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str

    def to_dict(self) -> dict:
        """The manifest entry (the `Label.to_dict` layout)."""
        return {"value": self.value, "name": self.name, "color": list(self.color), "terminology": self.terminology}


@dataclass(frozen=True)
class Bundle:
    """A bundled model's data: where it comes from, its licence, labels, and how its held-out cases were made."""

    name: str
    title: str
    modality: str
    channel: str
    source: str
    licence: str
    attribution: str
    labels: tuple[LabelSpec, ...]
    training_data: str
    heldout_data: str
    build: Callable[[Path, Path], tuple[list[Case], list[Case]]] = field(repr=False)


@dataclass
class Case:
    """One image/label pair to write (SimpleITK images on one grid)."""

    name: str
    image: sitk.Image
    label: sitk.Image


# ----------------------------------------------------------------------------------------------- helpers


def _read(path: Path, pixel: int = sitk.sitkFloat32) -> sitk.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: point --data at the shared data folder (../shared/data).")
    return sitk.Cast(sitk.ReadImage(str(path)), pixel)


def _remap(label: sitk.Image, mapping: dict[int, int]) -> sitk.Image:
    """Label map with each source value in `mapping` replaced by its new value and everything else 0."""
    src = sitk.GetArrayFromImage(label).astype(np.int64)
    out = np.zeros(src.shape, np.uint8)
    for old, new in mapping.items():
        out[src == old] = new
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(label)
    return img


def write_dataset(folder: Path, bundle: Bundle, train: list[Case], heldout: list[Case]) -> Path:
    """Write an nnU-Net v2 raw folder (the project's writer) plus imagesTs/labelsTs and provenance keys.

    Replaces `folder`; the extra dataset.json keys (licence, label colours and terminology, how the held-out
    cases were made) are ignored by nnU-Net and read by `bundled_models.py`.
    """
    from unetseg.image import Image
    from unetseg.training.dataset_checks import ensure_valid
    from unetseg.training.datasets import write_nnunet_dataset

    if folder.exists():
        shutil.rmtree(folder)
    dataset = write_nnunet_dataset(
        folder, [([Image.from_sitk(c.image)], Image.from_sitk(c.label)) for c in train], [bundle.channel],
        {label.value: label.name for label in bundle.labels}, names=[c.name for c in train],
    )
    ensure_valid(dataset)
    for case in heldout:
        for sub, img, file in (("imagesTs", case.image, f"{case.name}_0000"), ("labelsTs", case.label, case.name)):
            (folder / sub).mkdir(exist_ok=True)
            sitk.WriteImage(img, str(folder / sub / f"{file}.nii.gz"), True)
    doc = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    doc.update(
        name=bundle.name, description=bundle.title, licence=bundle.licence, reference=bundle.attribution,
        source=bundle.source, training_data=bundle.training_data, heldout_data=bundle.heldout_data,
        label_details=[label.to_dict() for label in bundle.labels],
    )
    (folder / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------- CT abdomen (3 mm)

TS = "totalsegmentator-examples"
TS_LICENCE = "Apache-2.0"
TS_ATTRIBUTION = (
    "TotalSegmentator test reference files (github.com/wasserth/TotalSegmentator, tests/reference_files, "
    "Apache-2.0). Labels are TotalSegmentator model outputs, not manual ground truth. Wasserthal J. et al., "
    "Radiology: AI 2023."
)
# TotalSegmentator `total` class -> (our value, name, colour, terminology)
CT_ABDOMEN_LABELS = (
    LabelSpec(1, "spleen", (0.62, 0.31, 0.64), _term("78961009", "Spleen")),
    LabelSpec(2, "right kidney", (0.72, 0.48, 0.32), _term("64033007", "Kidney", _RIGHT)),
    LabelSpec(3, "left kidney", (0.80, 0.58, 0.38), _term("64033007", "Kidney", _LEFT)),
    LabelSpec(4, "liver", (0.87, 0.51, 0.40), _term("10200004", "Liver")),
    LabelSpec(5, "stomach", (0.85, 0.74, 0.50), _term("69695003", "Stomach")),
    LabelSpec(6, "urinary bladder", (0.85, 0.80, 0.30), _term("89837001", "Bladder")),
)
_TS_TOTAL_IDS = {1: 1, 2: 2, 3: 3, 5: 4, 6: 5, 21: 6}


def build_ct_abdomen(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """example_ct (3 mm) with 6 organs of TotalSegmentator's `--fast -fs` output; no held-out CT of another patient.

    The held-out check is the spleen of the MSD spleen2 crop (another patient, manual label; see the card).
    """
    ct = _read(data / TS / "example_ct.nii.gz", sitk.sitkInt16)
    seg = _remap(_read(data / TS / "example_seg_fast_force_split.nii.gz", sitk.sitkUInt16), _TS_TOTAL_IDS)
    spleen_ct = _read(data / SPLEEN / "spleen2_ct.nii.gz", sitk.sitkInt16)
    spleen_seg = _read(data / SPLEEN / "spleen2_seg-manual.nii.gz", sitk.sitkUInt8)
    return [Case("example_ct", ct, seg)], [Case("spleen2", spleen_ct, spleen_seg)]


# --------------------------------------------------------------------------------------------- CT spleen

SPLEEN = "msd-spleen-ct-crop"
SPLEEN_LABELS = (LabelSpec(1, "spleen", (0.62, 0.31, 0.64), _term("78961009", "Spleen")),)
SPLEEN_SPACING = (1.6, 1.6, 5.0)  # twice the crop's in-plane voxel size: a 2-core CPU trains 4x more patches


def _resampled(img: sitk.Image, spacing: tuple[float, float, float], label: bool = False) -> sitk.Image:
    """`img` on a grid of `spacing` covering the same extent (a label map: linear on its mask, then > 0.5)."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing, strict=True)]
    out = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        spacing, img.GetDirection(), -1024.0 if not label else 0.0, sitk.sitkFloat32)
    return sitk.Cast(out > 0.5, sitk.sitkUInt8) if label else sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def build_ct_spleen(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """spleen2 (manual label) at 1.6 x 1.6 x 5 mm for training; TotalSegmentator's spleen as held-out check."""
    ct = _resampled(_read(data / SPLEEN / "spleen2_ct.nii.gz"), SPLEEN_SPACING)
    seg = _resampled(_read(data / SPLEEN / "spleen2_seg-manual.nii.gz"), SPLEEN_SPACING, label=True)
    ts_ct = _read(data / TS / "example_ct_sm.nii.gz", sitk.sitkInt16)
    ts_seg = _remap(_read(data / TS / "example_seg.nii.gz", sitk.sitkUInt16), {1: 1})
    return [Case("spleen2", ct, seg)], [Case("ts_example_ct_sm", ts_ct, ts_seg)]


# ------------------------------------------------------------------------------------ MRI spinal cord T2

SCT = "spinalcord-mri-sct"
CORD_LABELS = (LabelSpec(1, "spinal cord", (1.0, 0.96, 0.66), _term("2748008", "Spinal cord")),)
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
    t2 = _read(data / SCT / "t2.nii.gz", sitk.sitkInt16)
    seg = _read(data / SCT / "t2_seg-manual.nii.gz", sitk.sitkUInt8)
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
    LabelSpec(1, "grey matter", (0.50, 0.68, 0.50), _term("40146001", "Cerebral Grey Matter")),
    LabelSpec(2, "white matter", (0.98, 0.98, 0.88), _term("68523003", "Cerebral White Matter")),
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
    t1 = _resample_iso(_read(data / MNI / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), BRAIN_SPACING,
                       sitk.sitkLinear)
    gm, wm = (
        sitk.GetArrayFromImage(_resample_iso(_read(data / MNI / f"mni_icbm152_{c}_tal_nlin_sym_09a_converted.nii.gz"),
                                             BRAIN_SPACING, sitk.sitkLinear)) / 255.0
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


# ----------------------------------------------------------------------------- X-ray lung fields (DRR, 2D)

XR_LABELS = (
    LabelSpec(1, "right lung", (0.40, 0.60, 0.90), _term("39607008", "Lung", _RIGHT)),
    LabelSpec(2, "left lung", (0.30, 0.80, 0.60), _term("39607008", "Lung", _LEFT)),
)
_LUNG_IDS = {1: (12, 13, 14), 2: (10, 11)}  # TotalSegmentator `total` lobes: right (upper, middle, lower), left
XR_TRAIN_ANGLES = (-20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
XR_HELDOUT_ANGLES = (-7.5, 12.5)
XR_SAMPLE_ANGLE = 12.5
XR_SCALE = 100.0  # stored grey value = 100 × line integral of attenuation in water-equivalent cm


def _rotated_grid(ct: sitk.Image, degrees: float) -> sitk.Image:
    """An empty 3 mm grid centred on `ct`, rotated by `degrees` about the superior (LPS z) axis.

    Its j axis is then the (rotated) anterior-posterior ray direction, whatever the CT's own orientation; it is
    long enough to hold the CT's diagonal, so no ray leaves the body early.
    """
    spacing = 3.0
    last = np.array(ct.GetSize()) - 1
    corners = np.array([ct.TransformContinuousIndexToPhysicalPoint((np.array(c) * last).tolist())
                        for c in np.ndindex(2, 2, 2)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre = (lo + hi) / 2
    extent = hi - lo
    diagonal = math.hypot(extent[0], extent[1])
    size = [math.ceil(extent[0] / spacing) + 1, math.ceil(diagonal / spacing) + 1, math.ceil(extent[2] / spacing) + 1]
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    origin = centre - rot @ (np.array(size) - 1) * spacing / 2
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((spacing,) * 3)
    grid.SetDirection(rot.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def _radiograph_image(array_kji: np.ndarray, spacing: float) -> sitk.Image:
    """A single-slice image (rows = superior to inferior, columns = patient right to left) with identity direction."""
    img = sitk.GetImageFromArray(array_kji[::-1][np.newaxis])  # k goes up: flip so row 0 is superior
    img.SetSpacing((spacing, spacing, 1.0))
    return img


def drr(ct: sitk.Image, lobes: sitk.Image, degrees: float) -> Case:
    """A digitally reconstructed AP radiograph of `ct` and its projected lung masks, rotated about the body axis.

    Attenuation relative to water, mu = max(0, (HU + 1000) / 1000), is summed along the rays (anterior-posterior
    axis of the rotated grid); a pixel is lung where any lung-lobe voxel lies on its ray.
    """
    grid = _rotated_grid(ct, degrees)
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0,
                                              sitk.sitkFloat32))
    mu = np.maximum(0.0, (hu + 1000.0) / 1000.0)
    spacing = grid.GetSpacing()[0]
    integral_cm = mu.sum(axis=1) * spacing / 10.0  # numpy (k, j, i): j is the ray axis
    image = _radiograph_image(np.round(integral_cm * XR_SCALE).astype(np.uint16), spacing)
    lobe_array = sitk.GetArrayFromImage(sitk.Resample(lobes, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                      sitk.sitkUInt8))
    projected = np.zeros(integral_cm.shape, np.uint8)
    for value in sorted(_LUNG_IDS):
        projected[(lobe_array == value).any(axis=1) & (projected == 0)] = value
    label = _radiograph_image(projected, spacing)
    return Case(f"drr_{degrees:+05.1f}deg".replace(".", "p").replace("+", "p").replace("-", "m"), image, label)


def build_xray(data: Path, _out: Path) -> tuple[list[Case], list[Case]]:
    """DRRs of TotalSegmentator's example CT at several rotations; two unseen rotations held out (same CT)."""
    ct, lobes = _read(data / TS / "example_ct.nii.gz"), _lung_lobes(data)
    return [drr(ct, lobes, a) for a in XR_TRAIN_ANGLES], [drr(ct, lobes, a) for a in XR_HELDOUT_ANGLES]


def _lung_lobes(data: Path) -> sitk.Image:
    seg = _read(data / TS / "example_seg_fast_force_split.nii.gz", sitk.sitkUInt16)
    return _remap(seg, {old: new for new, olds in _LUNG_IDS.items() for old in olds})


def write_samples(data: Path, sample_dir: Path = SAMPLE_DIR) -> list[Path]:
    """(Re)write the generated samples: the DRR at XR_SAMPLE_ANGLE (2D NRRD) and the 2 mm MNI152 T1 (NIfTI)."""
    case = drr(_read(data / TS / "example_ct.nii.gz"), _lung_lobes(data), XR_SAMPLE_ANGLE)
    t1, tissue = brain_template(data)
    files = [
        (case.image[:, :, 0], "xr_drr_lungs.nrrd"),
        (case.label[:, :, 0], "xr_drr_lungs_seg.nrrd"),
        (sitk.Cast(sitk.Clamp(sitk.Round(t1), sitk.sitkFloat32, 0, 255), sitk.sitkUInt8), "mni152_t1_2mm.nii.gz"),
        (tissue, "mni152_t1_2mm_tissue.nii.gz"),
    ]
    for img, name in files:
        sitk.WriteImage(img, str(sample_dir / name), True)
    return [sample_dir / name for _, name in files]


# ------------------------------------------------------------------------------------------------ registry

SPLEEN_ATTRIBUTION = (
    "Medical Segmentation Decathlon Task09_Spleen, case spleen2 (MSKCC), cropped by the ivadomed team; manual "
    "label. Simpson et al. 2019, arXiv:1902.09063. CC BY-SA 4.0: derivatives are shared under the same licence."
)

BUNDLES: dict[str, Bundle] = {
    b.name: b
    for b in (
        Bundle(
            "ct-abdomen-fast", "CT abdomen, fast (3 mm): spleen, kidneys, liver, stomach, urinary bladder", "CT",
            "CT", TS, TS_LICENCE, TS_ATTRIBUTION, CT_ABDOMEN_LABELS,
            "1 CT (example_ct, abdomen and pelvis, 3 mm) with TotalSegmentator `--fast -fs` labels (model output, "
            "not manual)",
            "spleen only: MSD spleen2 crop (another patient, manual label, 0.8 x 0.8 x 5 mm); no held-out CT for "
            "the other organs",
            build_ct_abdomen,
        ),
        Bundle(
            "ct-spleen", "CT spleen", "CT", "CT", SPLEEN, "CC BY-SA 4.0", SPLEEN_ATTRIBUTION, SPLEEN_LABELS,
            "1 CT crop (MSD spleen2, 0.8 x 0.8 x 5 mm, resampled to 1.6 x 1.6 x 5 mm for training) with its manual "
            "spleen label",
            "TotalSegmentator example_ct_sm (another patient, upper abdomen, 3 mm) with TotalSegmentator's spleen "
            "(model output, not manual)",
            build_ct_spleen,
        ),
        Bundle(
            "mr-spinalcord-t2", "MRI spinal cord (T2)", "MR", "T2", SCT, "MIT",
            "Spinal Cord Toolbox testing data, subject errsm_30, manual label. Copyright (c) 2014 NeuroPoly, MIT.",
            CORD_LABELS,
            f"1 T2 volume (SCT errsm_30, 1 mm) without its most inferior {CORD_HELDOUT_SLICES} mm",
            f"the most inferior {CORD_HELDOUT_SLICES} mm of the same T2 volume (same subject, other vertebral "
            "levels, never seen in training)",
            build_spinalcord,
        ),
        Bundle(
            "mr-brain-tissue-t1", "MRI brain tissue (T1): grey and white matter", "MR", "T1", MNI, MNI_LICENCE,
            "MNI ICBM152 2009a nonlinear symmetric template (as shipped in nilearn), McConnell Brain Imaging Centre. "
            "Fonov et al., NeuroImage 2011; Collins et al. 1999.",
            BRAIN_LABELS,
            f"the MNI152 T1 template at {BRAIN_SPACING:g} mm and {BRAIN_TRAIN_VARIANTS - 1} copies with random bias "
            "field, gamma and noise; labels = GM/WM probability maps thresholded at 0.5 (the larger of the two)",
            "none: the only held-out case is the template with an unseen bias field (same anatomy)",
            build_brain,
        ),
        Bundle(
            "xr-lungs-drr", "X-ray lung fields (2D), trained on synthetic radiographs", "XR", "XR", TS, TS_LICENCE,
            TS_ATTRIBUTION, XR_LABELS,
            f"{len(XR_TRAIN_ANGLES)} digitally reconstructed radiographs of ONE CT (TotalSegmentator example_ct, "
            f"rotations {', '.join(f'{a:g}' for a in XR_TRAIN_ANGLES)} degrees about the body axis); labels = "
            "projected TotalSegmentator lung lobes. The CT covers only the lung bases.",
            f"{len(XR_HELDOUT_ANGLES)} radiographs of the same CT at unseen rotations "
            f"({', '.join(f'{a:g}' for a in XR_HELDOUT_ANGLES)} degrees)",
            build_xray,
        ),
    )
}


def build(name: str, data: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT) -> Path:
    """Build one bundled model's training folder `out/name` from the shared data; returns the folder."""
    if name not in BUNDLES:
        raise ValueError(f"Unknown bundled model {name!r}; choose from {', '.join(BUNDLES)}.")
    bundle = BUNDLES[name]
    train, heldout = bundle.build(data, out)
    return write_dataset(out / name, bundle, train, heldout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"which folders (default all: {', '.join(BUNDLES)})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the dataset folders")
    parser.add_argument("--samples", action="store_true", help="also (re)write the generated samples in SampleData")
    args = parser.parse_args(argv)
    for name in args.names or BUNDLES:
        folder = build(name, args.data, args.out)
        ds = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        print(f"{name}: {folder} ({ds['numTraining']} training cases, "
              f"{len(list((folder / 'imagesTs').glob('*.nii.gz')))} held out)")
    if args.samples:
        print("Samples:", *write_samples(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
