"""Reorientation, resampling, normalisation, HU priors and crops (preprocessing.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from unetseg import phantoms
from unetseg.image import Image
from unetseg.inference import preprocessing as pp

DIRECTIONS = {
    "oblique, x flipped": phantoms.oblique_direction(20.0, flip_x=True),
    "oblique right-handed": phantoms.oblique_direction(-35.0, flip_x=False),
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "permuted and flipped (sagittal)": (0, 0, -1, 1, 0, 0, 0, -1, 0),
}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR"])
def test_reorient_matches_simpleitk_dicomorient_and_undoes_exactly(direction, code):
    image, labels = phantoms.ct_phantom(shape=(10, 16, 14), spacing=(1.5, 1.2, 3.0), direction=direction)
    reoriented, how = pp.reorient(image, code)
    reference = sitk.DICOMOrient(image.to_sitk(), code)
    np.testing.assert_array_equal(reoriented.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(reoriented.spacing, reference.GetSpacing())
    np.testing.assert_allclose(reoriented.origin, reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(reoriented.direction, reference.GetDirection(), atol=1e-12)
    back = how.undo_image(reoriented.with_array(how.apply(labels.array)))
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.same_grid(image, tolerance=1e-9)


def test_reorient_undo_works_on_channel_first_tensors():
    image, _ = phantoms.ct_phantom(shape=(6, 8, 10))
    reoriented, how = pp.reorient(image, "RAS")
    probs = torch.from_numpy(np.stack([reoriented.array, -reoriented.array]))
    undone = how.undo(probs)
    assert isinstance(undone, torch.Tensor)
    np.testing.assert_array_equal(undone[1].numpy(), -image.array)


def test_reorient_none_and_bad_codes():
    image, _ = phantoms.ct_phantom(shape=(4, 5, 6))
    same, how = pp.reorient(image, None)
    assert same is image
    np.testing.assert_array_equal(how.undo(image.array), image.array)
    for bad in ("RAX", "RRS", "RA"):
        with pytest.raises(ValueError, match="each body axis once"):
            pp.reorient(image, bad)


def test_target_shape_uses_nnunet_rounding():
    # The notes' benchmark case: nnU-Net gets 128, MONAI's Spacingd 129 in-plane.
    assert pp.target_shape((200, 256, 256), (2.0, 0.8, 0.8), (2.0, 1.6, 1.6)) == (200, 128, 128)
    assert pp.target_shape((10, 11, 3), (1.0, 1.0, 1.0), (3.0, 2.0, 10.0)) == (3, 6, 1)
    with pytest.raises(ValueError, match="same length"):
        pp.target_shape((10, 10), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("shape_in, shape_out", [((5, 7), (9, 4)), ((4, 6, 5), (7, 3, 10))])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_resample_shapes_and_constant_fields(shape_in, shape_out, mode):
    t = torch.full((2, *shape_in), 3.5)
    out = pp.resample(t, shape_out, mode)
    assert out.shape == (2, *shape_out)
    torch.testing.assert_close(out, torch.full_like(out, 3.5))
    assert pp.resample(t.unsqueeze(0), shape_out, mode).shape == (1, 2, *shape_out)


def test_resample_linear_reproduces_a_ramp_at_the_new_voxel_centres():
    ramp = torch.arange(10, dtype=torch.float32).reshape(1, 1, 1, 10).expand(1, 3, 4, 10)
    out = pp.resample(ramp, (3, 4, 25), "linear")[0, 0, 0]
    centres = (torch.arange(25) + 0.5) * 10 / 25 - 0.5  # align_corners=False: the field of view is kept
    inside = (centres >= 0) & (centres <= 9)
    torch.testing.assert_close(out[inside], centres[inside])


def test_resample_nearest_keeps_integer_dtype_and_values():
    labels = torch.randint(0, 4, (1, 6, 7, 8), dtype=torch.int16)
    out = pp.resample(labels, (12, 3, 9), "nearest")
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())


def test_resample_rejects_bad_mode_and_shape():
    with pytest.raises(ValueError, match="Unknown resampling mode"):
        pp.resample(torch.zeros(1, 4, 4, 4), (2, 2, 2), "spline")
    with pytest.raises(ValueError, match="tensor for a 3D shape"):
        pp.resample(torch.zeros(4, 4, 4), (2, 2, 2))


def test_resample_labels_up_then_down_is_exact_and_keeps_the_kind():
    _, labels = phantoms.ct_phantom(shape=(12, 32, 28))
    up = pp.resample_labels(labels.array, (24, 64, 56))
    assert isinstance(up, np.ndarray) and up.dtype == labels.array.dtype
    assert set(np.unique(up)) == set(np.unique(labels.array))
    np.testing.assert_array_equal(pp.resample_labels(up, labels.shape), labels.array)
    tensor = torch.from_numpy(labels.array)
    assert isinstance(pp.resample_labels(tensor, (6, 16, 14)), torch.Tensor)


def test_resample_image_geometry_keeps_physical_positions():
    """An image whose value is the physical L coordinate keeps that meaning after resampling."""
    direction = phantoms.oblique_direction(20.0)
    grid = Image(np.zeros((8, 20, 16), np.float32), (1.0, 0.7, 2.5), (-10.0, 4.0, 30.0), direction)
    k, j, i = np.indices(grid.shape)
    lps = np.einsum("ab,bzyx->azyx", grid.index_to_physical(), np.stack([i, j, k, np.ones_like(i)]))
    out = pp.resample_image(grid.with_array(lps[0].astype(np.float32)), (1.5, 1.5, 1.5), mode="linear")
    assert out.shape == pp.target_shape(grid.shape, (2.5, 0.7, 1.0), (1.5, 1.5, 1.5))
    k, j, i = np.indices(out.shape)
    expected = np.einsum("ab,bzyx->azyx", out.index_to_physical(), np.stack([i, j, k, np.ones_like(i)]))[0]
    interior = (slice(1, -1),) * 3  # edge voxels are extrapolated by clamping
    np.testing.assert_allclose(out.array[interior], expected[interior], atol=1e-3)


def test_resample_image_keeps_a_single_slice():
    xray, _ = phantoms.xray_phantom(shape=(20, 18), spacing=(0.7, 0.7))
    out = pp.resample_image(xray, (1.4, 1.4, 5.0))
    assert out.shape == (1, 10, 9) and out.spacing[2] == xray.spacing[2]


def test_normalize_ct_clips_then_standardises():
    hu = np.array([-2000.0, -50.0, 40.0, 3000.0], np.float32)
    params = {"mean": 50.0, "std": 100.0, "clip": (-100.0, 500.0)}
    np.testing.assert_allclose(pp.normalize(hu, "ct", params), [-1.5, -1.0, -0.1, 4.5], rtol=1e-6)
    from_fingerprint = {"mean": 50.0, "std": 100.0, "percentile_00_5": -100.0, "percentile_99_5": 500.0}
    np.testing.assert_allclose(pp.normalize(hu, "ct", from_fingerprint), [-1.5, -1.0, -0.1, 4.5], rtol=1e-6)
    with pytest.raises(ValueError, match=r"needs \['std', 'clip'\]"):
        pp.normalize(hu, "ct", {"mean": 0.0})


def test_normalize_zscore_whole_image_and_masked():
    rng = np.random.default_rng(1)
    image = rng.normal(300.0, 40.0, size=(6, 8, 8)).astype(np.float32)
    out = pp.normalize(image, "zscore")
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-4
    mask = np.zeros(image.shape, bool)
    mask[1:4, 2:6, 2:6] = True
    image[~mask] = 0.0
    masked = pp.normalize(image, "zscore", mask=mask)
    assert np.all(masked[~mask] == 0)
    assert abs(masked[mask].mean()) < 1e-4 and abs(masked[mask].std() - 1) < 1e-4
    assert np.all(pp.normalize(image, "zscore", mask=np.zeros_like(mask)) == 0)


def test_normalize_constant_image_gives_zeros_not_nan():
    for scheme in ("zscore", "rescale01"):
        out = pp.normalize(np.full((3, 4, 5), 7.0), scheme)
        assert np.all(out == 0)


def test_normalize_rescale_none_torch_and_unknown():
    t = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    torch.testing.assert_close(pp.normalize(t, "rescale01"), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    untouched = pp.normalize(t, "none")
    torch.testing.assert_close(untouched, t)
    assert untouched is not t
    with pytest.raises(ValueError, match="Unknown normalisation scheme"):
        pp.normalize(t, "percentile")


def test_ct_params_from_intensities():
    values = np.random.default_rng(2).normal(100.0, 30.0, size=5000)
    params = pp.ct_params_from_intensities(values)
    assert params["mean"] == pytest.approx(values.mean())
    assert params["std"] == pytest.approx(values.std())
    assert params["percentile_00_5"] == pytest.approx(np.percentile(values, 0.5))
    assert params["percentile_99_5"] == pytest.approx(np.percentile(values, 99.5))
    assert params["min"] <= params["percentile_00_5"] < params["median"] < params["percentile_99_5"] <= params["max"]
    with pytest.raises(ValueError, match="No foreground"):
        pp.ct_params_from_intensities(np.array([]))


def test_hu_prior_channels():
    hu = np.array([-1000.0, -700.0, -300.0, 0.0, 150.0, 400.0, 1200.0])
    priors = pp.hu_prior_channels(hu)
    assert priors.shape == (3, 7) and priors.dtype == np.float32
    np.testing.assert_array_equal(priors[0], [1, 1, 0, 0, 0, 0, 0])  # lung
    np.testing.assert_array_equal(priors[1], [0, 0, 0, 1, 0, 0, 0])  # soft tissue
    np.testing.assert_array_equal(priors[2], [0, 0, 0, 0, 0, 1, 1])  # bone
    torch.testing.assert_close(pp.hu_prior_channels(torch.from_numpy(hu)), torch.from_numpy(priors))


def test_nonzero_bbox_union_margin_and_empty():
    a = np.zeros((10, 12, 14))
    b = np.zeros_like(a)
    a[2:4, 3:5, 6:7] = 1
    b[5, 8, 1] = -2
    assert pp.nonzero_bbox([a, b]) == (slice(2, 6), slice(3, 9), slice(1, 7))
    assert pp.nonzero_bbox(a, margin=3) == (slice(0, 7), slice(0, 8), slice(3, 10))
    assert pp.nonzero_bbox(torch.from_numpy(b)) == (slice(5, 6), slice(8, 9), slice(1, 2))
    assert pp.nonzero_bbox(np.zeros((3, 4))) == (slice(0, 3), slice(0, 4))


def test_body_bbox_drops_only_air_and_crop_uncrop_round_trip():
    ct, _ = phantoms.ct_phantom(shape=(8, 48, 40))
    bbox = pp.body_bbox(ct.array)
    cropped = pp.crop(ct.array, bbox)
    assert cropped.size < 0.9 * ct.array.size
    restored = pp.uncrop(cropped, bbox, ct.shape, fill=-1000.0)
    inside = np.zeros(ct.shape, bool)
    inside[bbox] = True
    np.testing.assert_array_equal(restored[inside], ct.array[inside])
    assert np.all(restored[~inside] == -1000.0) and np.all(ct.array[~inside] < -500)
    channels = torch.from_numpy(np.stack([ct.array, ct.array]))
    back = pp.uncrop(pp.crop(channels, bbox), bbox, ct.shape)
    assert back.shape == (2, *ct.shape) and torch.equal(back[1][inside], channels[1][inside])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_preprocessing_on_cuda_matches_cpu():
    t = torch.rand(2, 6, 7, 8)
    gpu = t.cuda()
    out = pp.resample(gpu, (9, 5, 4))
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), pp.resample(t, (9, 5, 4)))
    labels = torch.randint(0, 3, (6, 7, 8))
    assert torch.equal(pp.resample_labels(labels.cuda(), (12, 14, 16)).cpu(), pp.resample_labels(labels, (12, 14, 16)))
    masked = pp.normalize(gpu[0], "zscore", mask=gpu[1] > 0.5)
    torch.testing.assert_close(masked.cpu(), pp.normalize(t[0], "zscore", mask=t[1] > 0.5))
    assert pp.nonzero_bbox(gpu[0] > 0.9) == pp.nonzero_bbox(t[0] > 0.9)
