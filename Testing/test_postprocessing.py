"""Largest component, hole filling, small islands, the options wrapper and the mean-field CRF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetseg import phantoms
from unetseg.inference import crf
from unetseg.inference import postprocessing as post


def _blobs() -> np.ndarray:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[8:10, 8:10, 8:10] = 1  # 8 voxels, separate
    labels[5:7, 1:3, 8:10] = 2  # 8 voxels
    labels[10, 1, 1] = 2  # 1 voxel
    return labels


def test_keep_largest_component_only_touches_the_given_labels():
    labels = _blobs()
    out = post.keep_largest_component(labels, [1])
    assert np.count_nonzero(out == 1) == 27 and out[8, 8, 8] == 0
    np.testing.assert_array_equal(out == 2, labels == 2)
    assert np.count_nonzero(post.keep_largest_component(labels, [1, 2]) == 2) == 8


def test_keep_largest_component_is_26_connected():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[3, 3, 3] = 1  # touches the cube at a corner only
    np.testing.assert_array_equal(post.keep_largest_component(labels, [1]), labels)


def test_fill_holes_fills_enclosed_background_but_keeps_other_labels():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[2:7, 2:7, 2:7] = 0  # an enclosed cavity...
    labels[4, 4, 4] = 2  # ...holding a lesion
    out = post.fill_holes(labels, [1])
    assert out[4, 4, 4] == 2
    assert np.count_nonzero(out == 1) == 7**3 - 1


def test_fill_holes_is_3d_so_an_open_tube_keeps_its_lumen_and_a_single_slice_is_2d():
    tube = np.zeros((8, 9, 9), np.uint8)
    tube[:, 2:7, 2:7] = 1
    tube[:, 3:6, 3:6] = 0  # open at both ends along z
    np.testing.assert_array_equal(post.fill_holes(tube, [1]), tube)
    ring = tube[3:4]  # one slice: a closed ring in 2D
    assert np.all(post.fill_holes(ring, [1])[0, 2:7, 2:7] == 1)


def test_remove_small_islands_uses_millimetres():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1, 1, 1:4] = 1  # 3 voxels = 6 mm³
    labels[5, 5, 1:5] = 1  # 4 voxels = 8 mm³: exactly the threshold, kept
    labels[8, 1:6, 8] = 2  # 5 voxels = 10 mm³
    out = post.remove_small_islands(labels, (2.0, 1.0, 1.0), 8.0)
    assert out[1, 1, 1:4].sum() == 0
    np.testing.assert_array_equal(out[5:], labels[5:])
    np.testing.assert_array_equal(post.remove_small_islands(labels, (1.0, 1.0, 1.0), 1.0), labels)


def test_postprocess_runs_the_enabled_steps_without_touching_the_input():
    _, labels = phantoms.ct_phantom(shape=(12, 32, 28))
    noisy = labels.array.copy()
    rng = np.random.default_rng(0)
    noisy[rng.integers(0, 12, 15), rng.integers(0, 32, 15), rng.integers(0, 28, 15)] = 2  # stray lesion voxels
    before = noisy.copy()
    out = post.postprocess(noisy, (3.0, 1.5, 1.5), {"min_island_mm3": 10.0, "largest_component": [2]})
    np.testing.assert_array_equal(noisy, before)
    lesion = labels.array == 2
    assert np.count_nonzero((out == 2) & ~lesion) == 0
    assert np.count_nonzero(out == 2) >= 0.9 * np.count_nonzero(lesion)
    unchanged = post.postprocess(noisy, (3.0, 1.5, 1.5), {"largest_component": False, "fill_holes": False})
    np.testing.assert_array_equal(unchanged, noisy)
    assert unchanged is not noisy


def test_postprocess_rejects_unknown_options_and_crf_without_probabilities():
    labels = _blobs()
    with pytest.raises(ValueError, match="largest_componnent"):
        post.postprocess(labels, (1.0, 1.0, 1.0), {"largest_componnent": True})
    with pytest.raises(ValueError, match="pass `probabilities` and `image`"):
        post.postprocess(labels, (1.0, 1.0, 1.0), {"crf": True})


def _toy_case(shape=(12, 16, 16), seed=0):
    """A bright box on a dark background, confident probabilities matching it, and a noisy copy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(shape, dtype=torch.long)
    labels[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 1
    image = labels.float() * 100 + torch.randn(shape, generator=g) * 5
    foreground = torch.where(labels.bool(), 0.9, 0.1)
    clean = torch.stack([1 - foreground, foreground])
    # Isolated confident mistakes, two voxels or more from any border (where a mistake is ambiguous); the image
    # there is unchanged.
    as_volume = labels.float()[None, None] if shape[0] > 1 else labels.float()[None]
    pool = torch.nn.functional.max_pool3d if shape[0] > 1 else torch.nn.functional.max_pool2d
    uniform = (pool(as_volume, 5, 1, 2) == -pool(-as_volume, 5, 1, 2)).reshape(-1)
    candidates = uniform.nonzero()[:, 0]
    picks = candidates[torch.randperm(candidates.numel(), generator=g)[:20]]
    noisy = clean.clone()
    flat = noisy.view(2, -1)
    flat[:, picks] = 1 - flat[:, picks]
    return labels, image, clean, noisy


def test_dense_crf_removes_isolated_noise_in_3d():
    labels, image, _, noisy = _toy_case()
    assert (noisy.argmax(0) != labels).sum() >= 15
    refined = crf.dense_crf(noisy, image, (2.0, 1.0, 1.0))
    assert refined.shape == noisy.shape
    torch.testing.assert_close(refined.sum(0), torch.ones(labels.shape))
    assert torch.equal(refined.argmax(0), labels)


def test_dense_crf_keeps_a_clean_segmentation():
    labels, image, clean, _ = _toy_case(seed=1)
    assert torch.equal(crf.dense_crf(clean, image, (2.0, 1.0, 1.0)).argmax(0), labels)


def test_dense_crf_in_2d_and_through_postprocess():
    labels, image, _, noisy = _toy_case(shape=(1, 32, 32), seed=2)
    refined = crf.dense_crf(noisy[:, 0], image[0], (1.0, 1.0))
    assert torch.equal(refined.argmax(0), labels[0])
    out = post.postprocess(noisy.argmax(0).numpy().astype(np.uint8), (1.0, 1.0, 1.0), {"crf": True},
                           probabilities=noisy, image=image)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels.numpy())


def test_dense_crf_rejects_mismatched_inputs():
    _, image, clean, _ = _toy_case(shape=(6, 8, 8))
    with pytest.raises(ValueError, match="one spacing per spatial axis"):
        crf.dense_crf(clean, image[1:], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="one spacing per spatial axis"):
        crf.dense_crf(clean, image, (1.0, 1.0))
    with pytest.raises(ValueError, match="odd number"):
        crf.dense_crf(clean, image, (1.0, 1.0, 1.0), window=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dense_crf_on_cuda_matches_cpu():
    labels, image, _, noisy = _toy_case(seed=3)
    refined = crf.dense_crf(noisy.cuda(), image.cuda(), (2.0, 1.0, 1.0))
    assert refined.is_cuda
    assert torch.equal(refined.argmax(0).cpu(), labels)
