"""Augmentations for the unseen case: each does what it says on a small phantom, keeps labels aligned, and is
switched by the plan's settings (defaults per modality, round trip through the plans file, the CLI's --augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_augmentation import _blocky_label, _run, _sides_swapped
from test_planning import fingerprint
from torch_threads import one_thread  # noqa: F401  (autouse: torch on one thread)

from unetseg import cli
from unetseg.training import augment_acquisition, augment_intensity, planning
from unetseg.training.augment_acquisition import RandThickSlicesd, thick_slices
from unetseg.training.augment_intensity import RandIntensityRemapd, RandLabelIntensitiesd, RandSignalBiasFieldd
from unetseg.training.augment_settings import AugmentationSettings
from unetseg.training.augmentation import build_train_transforms, sampling_size
from unetseg.training.setup import TrainOptions, augmentation
from unetseg.vocabulary import AUGMENTATIONS, DEFAULT_AUGMENTATIONS

MR = AugmentationSettings.for_modality("MR")


def _apply(transform, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    transform.set_random_state(seed)
    out = transform({"image": image.clone(), "label": label.clone()})
    return tuple(torch.as_tensor(out[key]).as_subclass(torch.Tensor) for key in ("image", "label"))


def _kept_box(mask: torch.Tensor) -> tuple[int, ...]:
    """Edge lengths of the box a mask fills exactly (asserting it is one box)."""
    index = torch.nonzero(mask)
    edges = tuple(int(e) for e in (index.max(0).values - index.min(0).values + 1))
    assert int(mask.sum()) == int(np.prod(edges))
    return edges


# ------------------------------------------------------------------------------------------------ acquisition


def test_fov_keeps_one_off_centre_box_of_image_and_label(monkeypatch):
    monkeypatch.setattr(augment_acquisition, "FOV_PROB", 1.0)
    patch = (16, 24, 24)
    label = _blocky_label(patch, seed=4)
    image = 10.0 + label  # never zero
    starts = set()
    for seed in range(8):
        img, lab = _apply(augment_acquisition.fov_transform(patch, dummy_2d=False), image, label, seed)
        kept = img[0] != 0
        edges = _kept_box(kept)
        assert all(e >= n // 2 for e, n in zip(edges, patch, strict=True))
        assert torch.equal(img[0][kept], image[0][kept]) and torch.equal(lab[0][kept], label[0][kept])
        assert not lab[0][~kept].any()
        starts.add(tuple(torch.nonzero(kept).min(0).values.tolist()))
    assert len(starts) > 1  # the box moves: off-centre crops
    # Dummy-2D patches keep every slice; the box is in-plane.
    img, _ = _apply(augment_acquisition.fov_transform((6, 24, 24), dummy_2d=True), torch.ones(1, 6, 24, 24),
                    torch.zeros(1, 6, 24, 24), 0)
    assert _kept_box(img[0] != 0)[0] == 6


@pytest.mark.parametrize(("patch", "dummy_2d"), [((24, 32, 32), False), ((6, 40, 40), True)])
def test_slab_keeps_a_few_slices_along_one_axis(monkeypatch, patch, dummy_2d):
    monkeypatch.setattr(augment_acquisition, "SLAB_PROB", 1.0)
    label = _blocky_label(patch, seed=5)
    image = 10.0 + label
    axes = set()
    for seed in range(10):
        img, lab = _apply(augment_acquisition.slab_transform(patch, dummy_2d), image, label, seed)
        kept = img[0] != 0
        edges = _kept_box(kept)
        cut = [a for a, (e, n) in enumerate(zip(edges, patch, strict=True)) if e < n]
        assert len(cut) <= 1
        axis = cut[0] if cut else 0
        assert max(1, patch[axis] // 8) <= edges[axis] <= max(1, patch[axis] // 2)
        assert torch.equal(lab[0][kept], label[0][kept]) and not lab[0][~kept].any()
        axes.add(axis)
    assert axes == {0} if dummy_2d else len(axes) > 1


def test_thick_slices_blur_one_axis_and_keep_the_shape():
    z = torch.arange(32.0)
    through = torch.sin(np.pi / 2 * z)[None, :, None, None].expand(1, 32, 16, 16)  # period 4 along z
    thick = thick_slices(through, axis=0, factor=4.0)
    assert thick.shape == through.shape
    assert thick.diff(dim=1).abs().mean() < 0.2 * through.diff(dim=1).abs().mean()
    in_plane = torch.sin(np.pi / 2 * torch.arange(16.0))[None, None, None, :].expand(1, 32, 16, 16)
    assert torch.allclose(thick_slices(in_plane, axis=0, factor=4.0), in_plane, atol=1e-5)  # other axes untouched
    label = _blocky_label((32, 16, 16), seed=6)
    img, lab = _apply(RandThickSlicesd(keys="image", axes=(0, 1, 2), prob=1.0), through.contiguous(), label, 0)
    assert img.shape == through.shape and torch.equal(lab, label)


# ------------------------------------------------------------------------------------------------ intensity


def test_label_intensities_make_each_structure_a_random_gaussian():
    label = torch.zeros(1, 12, 20, 20)
    label[:, 2:8, 2:10, 2:10] = 1.0
    label[:, 4:10, 11:18, 10:18] = 2.0
    image = torch.randn(1, 12, 20, 20, generator=torch.Generator().manual_seed(0))
    transform = RandLabelIntensitiesd(keys="image", prob=1.0)
    means = {1.0: [], 2.0: []}
    for seed in range(8):
        img, lab = _apply(transform, image, label, seed)
        assert torch.equal(lab, label)
        assert torch.equal(img[label == 0], image[label == 0])  # the background is kept
        for value in means:
            region = img[label == value]
            assert region.std() < 0.3 * image.std()  # near-constant, against the image's spread
            means[value].append(float(region.mean()))
    for value, drawn in means.items():
        assert np.std(drawn) > 0.5, value  # a different intensity per draw
    assert not np.allclose(means[1.0], means[2.0], atol=0.1)  # and per structure


def test_intensity_remap_reorders_tissue_contrasts_and_keeps_mean_and_spread():
    # Three "tissues" as three intensity levels: a sequence change may put the middle one brightest or darkest.
    levels = torch.tensor([-1.0, 0.0, 1.0])
    tissue = torch.arange(3 * 8 * 8 * 8).reshape(1, 24, 8, 8) % 3
    image = levels[tissue]
    label = (tissue == 1).float()
    transform = RandIntensityRemapd(keys="image", prob=1.0)
    orders = set()
    for seed in range(20):
        img, lab = _apply(transform, image, label, seed)
        assert torch.equal(lab, label)
        assert abs(float(img.mean() - image.mean())) < 1e-4 and abs(float(img.std() - image.std())) < 1e-3
        mapped = [float(img[tissue == t].mean()) for t in range(3)]
        assert all(torch.allclose(img[tissue == t], torch.tensor(mapped[t]), atol=1e-4) for t in range(3))
        orders.add(tuple(np.argsort(mapped)))
    assert (0, 2, 1) in orders or (1, 0, 2) in orders  # the middle tissue left the middle: not monotonic
    assert (0, 1, 2) in orders  # and the original order happens too


def test_inversion_flips_the_order_of_intensities(monkeypatch):
    monkeypatch.setattr(augment_intensity, "INVERSION_PROB", 1.0)
    image = torch.linspace(-2.0, 3.0, 64).reshape(1, 4, 4, 4)
    img, _ = _apply(augment_intensity.inversion(), image, torch.zeros_like(image), 0)
    assert torch.equal(torch.argsort(img.flatten()), torch.argsort(image.flatten(), descending=True))
    assert torch.allclose(img, -image)


def test_bias_field_scales_the_signal_above_the_floor_smoothly():
    image = torch.full((1, 16, 16, 16), -1.0)  # air at the floor
    image[:, 4:12, 4:12, 4:12] = 2.0
    img, _ = _apply(RandSignalBiasFieldd(keys="image", prob=1.0), image, torch.zeros_like(image), 3)
    assert torch.equal(img[image == -1.0], image[image == -1.0])  # air stays air
    gain = (img[0, 4:12, 4:12, 4:12] + 1.0) / 3.0
    assert (gain > 0).all() and gain.max() / gain.min() > 1.05  # a varying, positive gain …
    assert gain.diff(dim=0).abs().max() < 0.25  # … that changes smoothly


# ------------------------------------------------------------------------------------------------ pipelines


@pytest.mark.parametrize("patch", [(24, 32, 32), (6, 40, 40), (48, 40)])
def test_every_augmentation_keeps_labels_aligned(patch):
    """With every augmentation on: the label depends on the seed only, holds only label values, and where the field
    of view or slab zeroed the image the label is background."""
    crop = sampling_size(patch)
    label = _blocky_label(crop, seed=7)
    everything = build_train_transforms(patch, AugmentationSettings(AUGMENTATIONS))
    for seed in range(6):
        img_a, lab_a = _run(everything, 100.0 * label + 50.0, label, seed)
        _, lab_b = _run(everything, torch.randn((1, *crop)), label, seed)
        assert torch.equal(lab_a, lab_b) and tuple(img_a.shape[1:]) == patch
        assert set(torch.unique(lab_a).tolist()) <= {0.0, 1.0, 2.0, 3.0} and torch.isfinite(img_a).all()
        assert not lab_a[img_a == 0].any()


@pytest.mark.parametrize("patch", [(48, 40), (6, 40, 40)])
def test_left_stays_left_with_the_mri_augmentations(patch):
    lateral = len(patch) - 1
    mirror = tuple(a for a in range(len(patch)) if a != lateral)
    assert _sides_swapped(patch, mirror, settings=MR) == 0


def _stages(patch: tuple[int, ...], settings: AugmentationSettings) -> list[str]:
    return [type(t).__name__ for t in build_train_transforms(patch, settings).transforms]


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_switching_one_off_removes_it_from_the_pipeline(name):
    everything = AugmentationSettings(AUGMENTATIONS)
    without = everything.switched({name: False})
    assert name not in without and len(_stages((16, 24, 24), without)) < len(_stages((16, 24, 24), everything))
    if name in ("slab", "thick_slices"):  # 3D only: a 2D pipeline is the same either way
        assert _stages((32, 32), without) == _stages((32, 32), everything)
    else:
        assert len(_stages((32, 32), without)) < len(_stages((32, 32), everything))


# ------------------------------------------------------------------------------------------------ settings


def test_defaults_per_modality():
    assert AugmentationSettings().enabled == {"intensity"}  # nnU-Net v2's own
    ct, xr = AugmentationSettings.for_modality("CT"), AugmentationSettings.for_modality("XR")
    assert {"fov", "slab", "thick_slices", "label_intensities", "intensity_remap"} <= ct.enabled
    assert not {"inversion", "bias_field"} & ct.enabled  # CT has neither
    assert {"gamma", "inversion", "bias_field", "label_intensities", "slab", "fov"} <= MR.enabled
    assert "slab" not in xr and "thick_slices" not in xr and "fov" in xr
    assert not any("elastic" in settings for settings in (MR, ct, xr))  # nnU-Net v2 leaves it off
    assert set(DEFAULT_AUGMENTATIONS) == {"CT", "MR", "XR"}
    with pytest.raises(ValueError, match="augmentation"):
        AugmentationSettings({"sharpen"})


def test_settings_round_trip_through_the_plans_file(tmp_path):
    plan = planning.plan_experiment(fingerprint([(1.0, 1.0, 1.0)] * 4, [(40, 48, 40)] * 4))
    assert plan.augmentation == MR  # the dataset's modality decides the plan's defaults
    plan = planning.Plan.from_dict({**plan.to_dict(), "augmentation": MR.switched({"inversion": False}).to_dict()})
    path = planning.save_plans(tmp_path / "plans.json", {plan.configuration: plan})
    loaded = planning.load_plan(path)
    assert loaded == plan and "inversion" not in loaded.augmentation and "bias_field" in loaded.augmentation
    older = {k: v for k, v in plan.to_dict().items() if k != "augmentation"}
    assert planning.Plan.from_dict(older).augmentation is None  # a plan from before: the trainer decides
    unnamed = planning.plan_experiment(fingerprint([(1.0, 1.0, 1.0)] * 4, [(40, 48, 40)] * 4, modality="other"))
    assert unnamed.augmentation is None


def test_options_switch_over_the_plan_and_the_run_records_them():
    plan = planning.plan_experiment(fingerprint([(1.0, 1.0, 1.0)] * 4, [(40, 48, 40)] * 4, modality="other"))
    opts = TrainOptions(augment=[("inversion", False), ("elastic", True)])
    assert opts.augment == {"inversion": False, "elastic": True}
    settings = augmentation(plan, "MR", opts, lambda _: None)
    assert settings == MR.switched({"inversion": False, "elastic": True})
    ct = AugmentationSettings.for_modality("CT")
    ct_plan = planning.Plan.from_dict({**plan.to_dict(), "augmentation": ct.to_dict()})
    assert augmentation(ct_plan, "MR", TrainOptions(), lambda _: None) == ct  # the plan's settings win
    with pytest.raises(ValueError, match="augmentation"):
        TrainOptions(augment={"mixup": True})


def test_cli_augment_flag():
    args = cli.build_parser().parse_args(["train", "data", "--out", "model", "--augment", "fov=off", "inversion=ON",
                                          "--augment", "elastic=on"])
    assert args.augment == [("fov", False), ("inversion", True), ("elastic", True)]
    for bad in ("fov", "mixup=on", "fov=maybe"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["train", "data", "--out", "model", "--augment", bad])
