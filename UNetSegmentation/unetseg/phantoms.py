"""Synthetic CT, MRI and X-ray phantoms with ground-truth label maps, deterministic by seed.

Used by the tests, the benchmarks and the demo when no real data is at hand. Shapes are drawn in voxel
space scaled by the spacing (so in millimetres), then placed on a grid that may be oblique and flipped, so
that every geometry path of the pipeline is exercised.
"""

from __future__ import annotations

import math

import numpy as np

from unetseg.image import Image, Label

CT_LABELS = [
    Label(1, "organ", (0.85, 0.35, 0.25)),
    Label(2, "lesion", (0.9, 0.9, 0.2)),
    Label(3, "lung", (0.4, 0.6, 0.9)),
    Label(4, "bone", (0.95, 0.95, 0.85)),
]
MRI_LABELS = [Label(1, "lesion", (0.9, 0.3, 0.3)), Label(2, "ventricle", (0.3, 0.5, 0.9))]
XRAY_LABELS = [Label(1, "right lung", (0.4, 0.6, 0.9)), Label(2, "left lung", (0.3, 0.8, 0.6))]

# Per-sequence tissue intensities (brain, lesion, ventricle) of the MRI phantom.
_MRI_CONTRASTS = {
    "T1": (600.0, 300.0, 200.0),
    "T2": (400.0, 900.0, 1200.0),
    "FLAIR": (500.0, 1000.0, 100.0),
}


def oblique_direction(degrees: float = 20.0, flip_x: bool = True) -> tuple[float, ...]:
    """A direction matrix rotated about the superior axis, optionally with the first axis flipped."""
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    if flip_x:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    return tuple(rot.ravel())


def _grid_mm(shape: tuple[int, ...], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Millimetre coordinates (z, y, x) of each voxel, centred on the volume."""
    sz, sy, sx = spacing[2], spacing[1], spacing[0]
    z, y, x = (np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape)
    return np.meshgrid(z * sz, y * sy, x * sx, indexing="ij")


def _ellipsoid(z, y, x, centre, radii) -> np.ndarray:
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def ct_phantom(
    shape: tuple[int, int, int] = (40, 64, 64),
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    origin: tuple[float, float, float] = (-40.0, 25.0, -110.0),
    direction: tuple[float, ...] | None = None,
    seed: int = 0,
) -> tuple[Image, Image]:
    """A CT-like body in Hounsfield units and its labels (`CT_LABELS`): organ, lesion, lungs, spine.

    Air −1000, fat −100, soft tissue 40, contrast-enhanced organ 150, lesion 60, lung −850, bone 700+.
    """
    rng = np.random.default_rng(seed)
    z, y, x = _grid_mm(shape, spacing)
    extent = np.array([n * s for n, s in zip(shape, (spacing[2], spacing[1], spacing[0]), strict=True)])
    jitter = rng.uniform(-0.03, 0.03, size=3) * extent
    body_r = (1e9, 0.42 * extent[1], 0.45 * extent[2])
    body = _ellipsoid(z, y, x, (0, 0, 0), body_r)
    inner = _ellipsoid(z, y, x, (0, 0, 0), (1e9, body_r[1] - 6, body_r[2] - 6))
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0
    hu[inner] = 40.0
    labels = np.zeros(shape, dtype=np.uint8)
    lung_r = (0.3 * extent[0], 0.22 * extent[1], 0.14 * extent[2])
    for side in (-1, 1):
        lung = _ellipsoid(z, y, x, (0.2 * extent[0], -0.05 * extent[1], side * 0.2 * extent[2]), lung_r) & inner
        hu[lung], labels[lung] = -850.0, 3
    organ_c = (-0.15 * extent[0] + jitter[0], 0.02 * extent[1] + jitter[1], 0.1 * extent[2] + jitter[2])
    organ = _ellipsoid(z, y, x, organ_c, (0.25 * extent[0], 0.16 * extent[1], 0.14 * extent[2])) & inner
    hu[organ], labels[organ] = 150.0, 1
    lesion_r = max(2.5 * max(spacing), 0.04 * extent[2])
    lesion = _ellipsoid(z, y, x, (organ_c[0], organ_c[1], organ_c[2] + 0.05 * extent[2]), (lesion_r,) * 3)
    lesion &= organ
    hu[lesion], labels[lesion] = 60.0, 2
    spine = _ellipsoid(z, y, x, (0, 0.3 * extent[1], 0), (1e9, 0.07 * extent[1], 0.07 * extent[2])) & inner
    hu[spine] = rng.uniform(700.0, 1000.0, size=int(spine.sum()))
    labels[spine] = 4
    hu += rng.normal(0.0, 10.0, size=shape).astype(np.float32)
    direction = direction if direction is not None else oblique_direction()
    return Image(hu, spacing, origin, direction), Image(labels, spacing, origin, direction)


def _bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """A smooth multiplicative field, like an MRI coil's inhomogeneity."""
    grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    coeffs = rng.uniform(-1, 1, size=(len(shape), 2))
    log_field = sum(a * g + b * g**2 for (a, b), g in zip(coeffs, grids, strict=True))
    return np.exp(strength * log_field / len(shape)).astype(np.float32)


def mri_phantom(
    shape: tuple[int, int, int] = (32, 64, 56),
    spacing: tuple[float, float, float] = (1.2, 1.2, 2.5),
    origin: tuple[float, float, float] = (30.0, -60.0, 15.0),
    direction: tuple[float, ...] | None = None,
    sequences: tuple[str, ...] = ("T1", "T2"),
    seed: int = 0,
) -> tuple[list[Image], Image]:
    """A head-like MRI phantom: one `Image` per sequence (different contrasts, bias field) and the labels."""
    unknown = set(sequences) - set(_MRI_CONTRASTS)
    if unknown:
        raise ValueError(f"Unknown MRI sequence(s) {sorted(unknown)}; allowed: {sorted(_MRI_CONTRASTS)}.")
    rng = np.random.default_rng(seed)
    z, y, x = _grid_mm(shape, spacing)
    extent = np.array([n * s for n, s in zip(shape, (spacing[2], spacing[1], spacing[0]), strict=True)])
    brain = _ellipsoid(z, y, x, (0, 0, 0), 0.45 * extent)
    ventricle = _ellipsoid(z, y, x, (0, -0.05 * extent[1], 0), (0.15 * extent[0], 0.08 * extent[1], 0.1 * extent[2]))
    centre = rng.uniform(0.12, 0.2, size=3) * extent * np.array([1, 1, rng.choice([-1, 1])])
    lesion = _ellipsoid(z, y, x, centre, (max(0.1 * extent[0], 2 * spacing[2]),) * 3) & brain & ~ventricle
    labels = np.zeros(shape, dtype=np.uint8)
    labels[lesion], labels[ventricle] = 1, 2
    direction = direction if direction is not None else oblique_direction(-12.0, flip_x=False)
    images = []
    for name in sequences:
        tissue, les, ven = _MRI_CONTRASTS[name]
        arr = np.zeros(shape, dtype=np.float32)
        arr[brain], arr[lesion], arr[ventricle] = tissue, les, ven
        arr *= _bias_field(shape, rng)
        arr = np.abs(arr + rng.normal(0.0, 0.03 * tissue, size=shape).astype(np.float32))
        images.append(Image(arr, spacing, origin, direction))
    return images, Image(labels, spacing, origin, direction)


def xray_phantom(
    shape: tuple[int, int] = (128, 112),
    spacing: tuple[float, float] = (0.7, 0.7),
    origin: tuple[float, float] = (-40.0, -45.0),
    seed: int = 0,
) -> tuple[Image, Image]:
    """A 2D chest-radiograph-like image (one slice) with two lung fields (`XRAY_LABELS`)."""
    rng = np.random.default_rng(seed)
    full_spacing = (spacing[0], spacing[1], 1.0)
    _, y, x = _grid_mm((1, *shape), full_spacing)
    h, w = shape[0] * spacing[1], shape[1] * spacing[0]
    body = _ellipsoid(0, y, x, (0, 0, 0), (1, 0.55 * h, 0.45 * w))
    img = np.where(body, 0.55, 0.05).astype(np.float32)
    labels = np.zeros((1, *shape), dtype=np.uint8)
    shift = rng.uniform(-0.03, 0.03, size=2) * np.array([h, w])
    for value, side in ((1, -1), (2, 1)):
        lung = _ellipsoid(0, y, x, (0, -0.05 * h + shift[0], side * 0.2 * w + shift[1]), (1, 0.3 * h, 0.13 * w))
        img[lung], labels[lung] = 0.2, value
    spine = body & (np.abs(x) < 0.05 * w)
    img[spine] = 0.9
    img += rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)
    return Image(img, full_spacing, (*origin, 0.0)), Image(labels, full_spacing, (*origin, 0.0))
