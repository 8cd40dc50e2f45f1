"""Training augmentation: image and label stay aligned, shapes and seeding behave, labels are never blended."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional
from torch_threads import one_thread  # noqa: F401  (autouse: torch on one thread)

from unetseg.training import augmentation
from unetseg.training.augment_settings import AugmentationSettings
from unetseg.training.augmentation import build_train_transforms, sampling_size, spatial_params

PATCHES = [(24, 32, 32), (6, 40, 40), (48, 40)]  # isotropic 3D, anisotropic ("dummy 2D") 3D, 2D


def _blocky_label(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A (1, *shape) label of random values 0–3 in blocks of 12 voxels (large constant regions)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=tuple(-(-n // 12) for n in shape))
    fine = coarse
    for axis in range(len(shape)):
        fine = np.repeat(fine, 12, axis=axis)
    fine = fine[tuple(slice(0, n) for n in shape)]
    return torch.from_numpy(fine.astype(np.float32))[None]


def _interior(label: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Voxels whose (2·radius+1)-neighbourhood holds a single label value."""
    pool = functional.max_pool3d if label.ndim == 4 else functional.max_pool2d
    k, pad = 2 * radius + 1, radius
    hi = pool(label[None], k, stride=1, padding=pad)[0]
    lo = -pool(-label[None], k, stride=1, padding=pad)[0]
    return hi == lo


def _run(pipeline, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    pipeline.set_random_state(seed)
    out = pipeline({"image": image.clone(), "label": label.clone()})
    return torch.Tensor(out["image"]).as_subclass(torch.Tensor), torch.Tensor(out["label"]).as_subclass(torch.Tensor)


@pytest.mark.parametrize("patch", PATCHES)
def test_spatial_transforms_move_label_with_image(patch):
    """With the image a copy of the label, every spatial transform keeps the label a function of the image."""
    crop = sampling_size(patch)
    label = _blocky_label(crop, seed=1)
    image = torch.cat([label, 2.0 * label + 1.0])
    pipeline = build_train_transforms(patch, AugmentationSettings({"elastic"}))
    resampled = 0
    for seed in range(12):
        img, lab = _run(pipeline, image, label, seed)
        assert tuple(img.shape) == (2, *patch) and tuple(lab.shape) == (1, *patch)
        inside = _interior(lab)[0]
        assert inside.float().mean() > 0.2
        # Away from label borders the bilinear image rounds to the nearest-neighbour label (a few voxels may
        # straddle a border the zoom skipped); a mismatched flip or rotation would break most of them.
        assert ((img[0] - lab[0]).abs() < 0.5)[inside].float().mean() > 0.99
        assert ((img[1] - 2.0 * lab[0] - 1.0).abs() < 1.0)[inside].float().mean() > 0.99
        # Nearest-neighbour labels: only the input's values, never blends.
        assert set(torch.unique(lab).tolist()) <= {0.0, 1.0, 2.0, 3.0}
        assert ((img[0] - lab[0]).abs() < 0.5).float().mean() > 0.85
        resampled += int(not torch.equal(img[0], img[0].round()))
    assert resampled > 0  # some seeds really rotated/scaled/deformed (bilinear values between labels)


@pytest.mark.parametrize("patch", PATCHES)
def test_intensity_transforms_change_image_not_label(patch):
    """The label depends only on the seed, not on the image; the intensity stage really alters the image."""
    crop = sampling_size(patch)
    label = _blocky_label(crop, seed=2)
    pipeline = build_train_transforms(patch, AugmentationSettings({"intensity"}))
    altered = 0
    for seed in range(10):
        img_a, lab_a = _run(pipeline, label * 100.0, label, seed)
        _, lab_b = _run(pipeline, torch.randn((1, *crop)), label, seed)
        assert torch.equal(lab_a, lab_b)
        assert set(torch.unique(lab_a).tolist()) <= {0.0, 1.0, 2.0, 3.0}
        assert torch.isfinite(img_a).all()
        inside = _interior(lab_a)[0]
        altered += int(not torch.allclose(img_a[0][inside], 100.0 * lab_a[0][inside]))
    assert altered >= 3


def test_seeding_reproduces_and_varies():
    patch = (16, 24, 24)
    crop = sampling_size(patch)
    label = _blocky_label(crop, seed=3)
    image = torch.randn((1, *crop))
    pipeline = build_train_transforms(patch)
    a = _run(pipeline, image, label, 7)
    b = _run(build_train_transforms(patch), image, label, 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [_run(pipeline, image, label, s)[0] for s in range(8, 12)]
    assert any(not torch.equal(a[0], o) for o in others)


def test_sampling_size_covers_rotation_and_keeps_even_margins():
    for patch in PATCHES:
        crop = sampling_size(patch)
        assert all(c >= p and (c - p) % 2 == 0 for c, p in zip(crop, patch, strict=True))
    # 2D: ±180° in-plane rotation needs the diagonal (√2) times the zoom-out margin.
    assert sampling_size((64, 64))[0] >= int(64 * np.sqrt(2))
    # Anisotropic 3D: rotation is in-plane only, so the slice axis keeps its size.
    assert spatial_params((6, 40, 40)).dummy_2d
    assert sampling_size((6, 40, 40))[0] == 6
    assert not spatial_params((24, 32, 32)).dummy_2d
    assert sampling_size((24, 32, 32))[0] > 24


def test_elastic_is_opt_in():
    names = [type(t).__name__ for t in build_train_transforms((16, 16, 16)).transforms]
    assert not any("Elastic" in n for n in names)
    elastic = AugmentationSettings({"intensity", "elastic"})
    names = [type(t).__name__ for t in build_train_transforms((16, 16, 16), elastic).transforms]
    assert "Rand3DElasticd" in names
    names = [type(t).__name__ for t in build_train_transforms((32, 32), elastic).transforms]
    assert "Rand2DElasticd" in names


def test_mirror_axes_restrict_flips():
    flips = [t for t in build_train_transforms((16, 16, 16), mirror_axes=(1, 2)).transforms
             if type(t).__name__ == "RandFlipd"]
    assert [f.flipper.spatial_axis for f in flips] == [1, 2]


def test_bad_patch_size_is_a_clear_error():
    with pytest.raises(ValueError, match="patch_size"):
        spatial_params((8, 8, 8, 8))


def _sides_swapped(patch: tuple[int, ...], mirror: tuple[int, ...], seeds: int = 40,
                   settings: AugmentationSettings | None = None) -> int:
    """How many of `seeds` augmented patches show a 'left' blob (lower x) right of a 'right' one (patches where a
    field-of-view or slab crop removed a blob are not counted)."""
    crop = sampling_size(patch, mirror)
    label = torch.zeros((1, *crop))
    mid_y, mid_x = crop[-2] // 2, crop[-1] // 2
    label[..., mid_y - 6:mid_y + 6, mid_x - 14:mid_x - 4] = 1.0
    label[..., mid_y - 6:mid_y + 6, mid_x + 4:mid_x + 14] = 2.0
    pipeline = build_train_transforms(patch, settings or AugmentationSettings(set()), mirror_axes=mirror)
    x = torch.arange(patch[-1], dtype=torch.float32)
    swapped = 0
    for seed in range(seeds):
        _, lab = _run(pipeline, label.clone(), label, seed)
        if not ((lab == 1.0).any() and (lab == 2.0).any()):
            continue
        centre = [((lab[0] == v).float().sum(dim=tuple(range(len(patch) - 1))) @ x) / (lab[0] == v).sum()
                  for v in (1.0, 2.0)]
        swapped += int(centre[0] > centre[1])
    return swapped


@pytest.mark.parametrize("patch", [(48, 40), (6, 40, 40)])
def test_left_stays_left_when_the_left_right_axis_is_not_mirrored(patch, monkeypatch):
    """Excluding the left-right flip must not be undone by a half-turn rotation: in-plane rotation is capped,
    so a 'left' blob stays left of a 'right' one in every augmented patch."""
    lateral = len(patch) - 1
    mirror = tuple(a for a in range(len(patch)) if a != lateral)
    assert max(spatial_params(patch, mirror).rotation) == pytest.approx(np.radians(30))
    assert max(spatial_params(patch).rotation) == pytest.approx(np.pi)  # all axes mirrored: nnU-Net's range
    assert _sides_swapped(patch, mirror) == 0
    monkeypatch.setattr(augmentation, "_LATERAL_ROTATION_LIMIT", np.pi)  # nnU-Net's ±180°: sides do swap
    assert _sides_swapped(patch, mirror) > 0
