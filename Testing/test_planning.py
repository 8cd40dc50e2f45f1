"""Tests for the nnU-Net-style planner: fingerprints of known datasets give nnU-Net's published plans."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg import cli, phantoms
from unetseg.training import planning, topology
from unetseg.training.fingerprint import Fingerprint, IntensityStats, compute_fingerprint

STATS = IntensityStats(mean=80.0, std=40.0, median=85.0, min=-100.0, max=300.0, p00_5=-50.0, p99_5=250.0)


def fingerprint(spacings, shapes, channels=("MRI",), labels=3, modality="MR", crop_ratio=1.0) -> Fingerprint:
    """A hand-built fingerprint: spacings (x, y, z) and cropped shapes (z, y, x), one pair per case."""
    return Fingerprint(
        spacings=tuple(tuple(s) for s in spacings),
        shapes_after_crop=tuple(tuple(s) for s in shapes),
        intensity_stats=(STATS,) * len(channels),
        class_voxel_counts={v: 100 for v in range(labels)},
        median_relative_size_after_crop=crop_ratio,
        modality=modality,
        channel_names=tuple(channels),
        labels={v: f"class {v}" for v in range(labels)},
    )


def test_isotropic_dataset_gives_nnunet_published_hippocampus_plans():
    # MSD Hippocampus: 260 cases at 1 mm, median cropped shape 36×50×35. nnU-Net v2 plans 3d_fullres
    # patch [40, 56, 40], batch 9 (the 5 % cap) and 2d patch [56, 40], batch 366.
    fp = fingerprint([(1.0, 1.0, 1.0)] * 260, [(36, 50, 35)] * 260)
    plans = planning.plan_configurations(fp)
    full, flat = plans["3d_fullres"], plans["2d"]
    assert full.patch_size == (40, 56, 40) and full.batch_size == 9
    assert full.pool_strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert all(k == (3, 3, 3) for k in full.conv_kernel_sizes)
    assert full.features == (32, 64, 128, 256)
    assert flat.patch_size == (56, 40) and flat.batch_size == 366
    assert flat.batch_dice and not full.batch_dice


def test_memory_budget_shrinks_the_patch_like_nnunet_heart_plans():
    # MSD Heart: 20 cases at 1.25×1.25×1.37 mm, median 115×320×232: nnU-Net v2 plans patch [80, 192, 160],
    # batch 2, six stages with features capped at 320; 2d patch [320, 256], batch 40, features capped at 512.
    fp = fingerprint([(1.25, 1.25, 1.37)] * 20, [(115, 320, 232)] * 20, labels=2)
    plans = planning.plan_configurations(fp, gpu_memory_gb=8)
    full = plans["3d_fullres"]
    assert full.patch_size == (80, 192, 160) and full.batch_size == 2
    assert full.features == (32, 64, 128, 256, 320, 320)
    assert full.estimated_memory / planning.REFERENCE_BATCH[3] * 2 <= full.memory_budget
    assert plans["2d"].patch_size == (320, 256) and plans["2d"].batch_size == 40
    assert max(plans["2d"].features) == 512


def test_anisotropic_thick_slices_get_in_plane_kernels_and_pooling_first():
    fp = fingerprint([(0.8, 0.8, 5.0)] * 10, [(60, 512, 512)] * 10, channels=("CT",), modality="CT")
    plan = planning.plan_experiment(fp)
    assert plan.spatial_dims == 3 and plan.target_spacing == pytest.approx((0.8, 0.8, 5.0))
    assert plan.conv_kernel_sizes[0] == (1, 3, 3)
    assert plan.pool_strides[1] == (1, 2, 2)
    assert plan.conv_kernel_sizes[-1] == (3, 3, 3)
    assert any(s[0] == 2 for s in plan.pool_strides), "z is pooled once the in-plane spacing has caught up"
    z_mm, y_mm = plan.patch_size[0] * 5.0, plan.patch_size[1] * 0.8
    assert 0.25 < z_mm / y_mm < 4, "the patch is roughly isotropic in millimetres"
    assert plan.normalization[0] == {"scheme": "ct", "mean": 80.0, "std": 40.0, "clip": [-50.0, 250.0]}


def test_anisotropy_rule_takes_tenth_percentile_only_for_few_thick_slices():
    spacings = [(0.8, 0.8, 5.0)] * 8 + [(0.8, 0.8, 1.5)] * 2
    few_slices = planning.plan_experiment(fingerprint(spacings, [(40, 512, 512)] * 10))
    assert few_slices.target_spacing[2] == pytest.approx(1.5)
    many_slices = planning.plan_experiment(fingerprint(spacings, [(400, 512, 512)] * 10))
    assert many_slices.target_spacing[2] == pytest.approx(5.0)
    coarse = [(0.8, 0.8, 5.0)] * 8 + [(0.8, 0.8, 0.5)] * 2
    clamped = planning.plan_experiment(fingerprint(coarse, [(40, 512, 512)] * 10))
    assert clamped.target_spacing[2] == pytest.approx(0.8, abs=1e-4), "never finer than in-plane"


def test_single_slice_data_plan_only_2d():
    fp = fingerprint([(0.14, 0.14, 1.0)] * 30, [(1, 2000, 2000)] * 30, channels=("XR",), modality="XR")
    plans = planning.plan_configurations(fp)
    assert list(plans) == ["2d"]
    plan = planning.plan_experiment(fp)
    assert plan.spatial_dims == 2 and len(plan.patch_size) == 2 and len(plan.pool_strides[0]) == 2
    assert max(plan.features) == 512 and plan.batch_dice
    with pytest.raises(ValueError, match="single slices"):
        planning.plan_experiment(fp, force_2d=False)


def test_force_2d_on_volumes_and_mask_normalisation_for_cropped_mri():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 4, [(140, 170, 140)] * 4, channels=("T1", "FLAIR"), crop_ratio=0.6)
    plan = planning.plan_experiment(fp, force_2d=True)
    assert plan.configuration == "2d" and plan.spatial_dims == 2
    assert plan.normalization == ({"scheme": "zscore", "use_mask": True},) * 2
    uncropped = planning.plan_experiment(fingerprint([(1.0, 1.0, 1.0)] * 4, [(140, 170, 140)] * 4, crop_ratio=0.9))
    assert uncropped.normalization == ({"scheme": "zscore", "use_mask": False},)


def test_batch_size_has_floor_two_and_smaller_budget_gives_smaller_patch():
    fp = fingerprint([(1.0, 1.0, 1.0)], [(160, 160, 160)])
    small, large = planning.plan_experiment(fp, gpu_memory_gb=2), planning.plan_experiment(fp, gpu_memory_gb=24)
    assert small.batch_size == large.batch_size == 2  # one case: the 5 % cap would give 0, the floor wins
    assert np.prod(small.patch_size) < np.prod(large.patch_size)
    assert small.estimated_memory < large.estimated_memory
    with pytest.raises(ValueError, match="gpu_memory_gb"):
        planning.plan_experiment(fp, gpu_memory_gb=0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (5.0, 0.8, 0.8)])
def test_memory_estimate_is_monotone_in_patch_size(spacing):
    fixed = topology.pool_and_conv_props(spacing, (64, 128, 128))
    features = topology.features_per_stage(len(fixed.pool_strides), 3)
    previous_fixed = previous_derived = 0.0
    for edge in range(16, 257, 8):
        patch = (edge // 2, edge, edge)
        value = topology.estimate_memory(patch, fixed.pool_strides, features, 3)
        assert value >= previous_fixed
        previous_fixed = value
        topo = topology.pool_and_conv_props(spacing, patch)
        derived = topology.estimate_memory(
            topo.patch_size, topo.pool_strides, topology.features_per_stage(len(topo.pool_strides), 3), 3)
        assert derived >= previous_derived
        previous_derived = derived


def test_plans_round_trip_through_json(tmp_path):
    fp = fingerprint([(0.7, 0.7, 2.5)] * 3, [(50, 200, 180)] * 3, channels=("T2", "ADC"), labels=4)
    plans = planning.plan_configurations(fp, gpu_memory_gb=6)
    path = planning.save_plans(tmp_path / "plans.json", plans, fp)
    assert planning.load_plans(path) == plans
    assert planning.load_plan(path) == plans["3d_fullres"]
    assert planning.load_plan(path, "2d") == plans["2d"]
    assert Fingerprint.from_dict(fp.to_dict()) == fp
    with pytest.raises(ValueError, match="no configuration"):
        planning.load_plan(path, "3d_lowres")


def test_plan_network_config_builds_and_runs_one_patch():
    torch = pytest.importorskip("torch")
    networks = pytest.importorskip("unetseg.networks.factory")
    fp = fingerprint([(1.0, 1.0, 2.0)] * 2, [(16, 48, 40)] * 2, channels=("T1", "T2"), labels=3)
    plan = planning.plan_experiment(fp)
    config = plan.network_config
    assert config["variant"] == "nnunet" and config["in_channels"] == 2 and config["num_classes"] == 3
    net = networks.build_network(config).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 2, *plan.patch_size))
    assert tuple(out.shape) == (1, 3, *plan.patch_size)


def test_fingerprint_of_a_real_dataset_counts_classes_and_samples_foreground(tmp_path):
    from unetseg.training import datasets

    cases = [phantoms.ct_phantom(shape=(12, 32, 32), seed=s) for s in range(2)]
    labels = {label.value: label.name for label in phantoms.CT_LABELS}
    ds = datasets.write_nnunet_dataset(tmp_path / "ct", [([im], lab) for im, lab in cases], ["CT"], labels)
    fp = compute_fingerprint(ds, max_foreground_samples=20_000)
    assert fp.spacings == ((1.5, 1.5, 3.0),) * 2 and fp.shapes_after_crop == ((12, 32, 32),) * 2
    all_labels = np.concatenate([lab.array.ravel() for _, lab in cases])
    assert fp.class_voxel_counts == {v: int((all_labels == v).sum()) for v in range(5)}
    foreground = np.concatenate([im.array[lab.array > 0] for im, lab in cases])
    assert fp.intensity_stats[0].mean == pytest.approx(foreground.mean(), rel=0.1, abs=10)
    assert fp.intensity_stats[0].p99_5 <= foreground.max()
    assert fp.modality == "CT" and fp.labels == {0: "background", **labels}


def test_cli_plan_writes_plans_next_to_the_dataset(tmp_path, capsys):
    from unetseg.training import datasets

    image, label = phantoms.mri_phantom(shape=(12, 32, 28), sequences=("T1",))
    labels = {lab.value: lab.name for lab in phantoms.MRI_LABELS}
    datasets.write_nnunet_dataset(tmp_path / "mr", [(image, label)], ["T1"], labels)
    assert cli.main(["plan", str(tmp_path / "mr"), "--gpu-memory-gb", "4"]) == 0
    plan = planning.load_plan(tmp_path / "mr" / "plans.json")
    assert plan.gpu_memory_gb == 4 and plan.num_input_channels == 1
    assert "3d_fullres" in capsys.readouterr().out
    (tmp_path / "mr" / "labelsTr" / "case_000.nii.gz").unlink()
    assert cli.main(["plan", str(tmp_path / "mr"), "--out", str(tmp_path / "p.json")]) == 1  # EXIT_FAILED
    assert "label file not found" in capsys.readouterr().err
