"""The predictor: window geometry, slab-wise return, geometry round trips, 2D, progress, cancel, OOM, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from echo_model import echo_image, echo_package, echo_state_dict
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from unetseg import phantoms
from unetseg.image import Image
from unetseg.inference import torch_backend
from unetseg.inference.linear_resampling import ArrayOps, argmax_on_grid, resample_linear
from unetseg.inference.postprocessing import keep_largest_component
from unetseg.inference.predictor import SegmentationCancelled, segment
from unetseg.inference.prepare import Preparation, default_crop, normalise
from unetseg.inference.preprocessing import resample
from unetseg.inference.windows import count_windows, gaussian_weights, sliding_window, window_slices
from unetseg.models.package import save_package

TORCH_OPS = ArrayOps(asarray=torch.as_tensor, to_numpy=lambda t: t.numpy())


def _labels_up_to_3(labels: Image) -> Image:
    return labels.with_array(np.minimum(labels.array, 3).astype(np.uint8))


# ------------------------------------------------------------------------------------------ shared geometry


@pytest.mark.parametrize(
    ("size", "roi"),
    [((128, 128, 200), (128, 128, 80)), ((129, 129, 200), (128, 128, 80)), ((50, 70, 33), (32, 32, 32)),
     ((20, 40, 33), (32, 32, 32)), ((64, 64), (32, 16))],
)  # fmt: skip
def test_windows_are_monai_windows(size, roi):
    padded = tuple(max(s, r) for s, r in zip(size, roi, strict=True))
    expected = dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, len(roi), (0.5,) * len(roi)))
    assert window_slices(size, roi) == expected
    assert count_windows(size, roi) == len(expected)


def test_one_voxel_overhang_doubles_windows_per_axis():
    assert count_windows((128, 128, 200), (128, 128, 80)) == 4
    assert count_windows((129, 129, 200), (128, 128, 80)) == 16


def test_gaussian_is_monais_nnunet_gaussian():
    expected = compute_importance_map((32, 20, 17), mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(gaussian_weights((32, 20, 17)), expected, rtol=1e-5, atol=1e-7)


def test_numpy_sliding_window_matches_monai():
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = np.random.default_rng(0).normal(size=(2, 1, 20, 45, 37)).astype(np.float32)
    with torch.no_grad():
        expected = sliding_window_inference(
            torch.from_numpy(x), (16, 32, 48), 3, conv, overlap=0.5, mode="gaussian"
        ).numpy()
        got = sliding_window(x, (16, 32, 48), 3, lambda a: conv(torch.from_numpy(a)).numpy())
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(("source", "target"), [((7, 9, 11), (13, 5, 11)), ((20, 30, 25), (41, 61, 49))])
def test_linear_resampling_is_torch_trilinear(source, target):
    x = np.random.default_rng(1).normal(size=(3, *source)).astype(np.float32)
    expected = resample(torch.from_numpy(x), target, "linear").numpy()
    np.testing.assert_allclose(resample_linear(x, target), expected, atol=1e-5)
    np.testing.assert_allclose(resample_linear(torch.from_numpy(x), target, TORCH_OPS).numpy(), expected, atol=1e-5)


def test_slab_argmax_equals_full_resolution_argmax():
    scores = np.random.default_rng(2).normal(size=(4, 9, 12, 10)).astype(np.float32)
    shape, values = (23, 30, 17), [0, 2, 5, 7]
    full = np.asarray(values)[resample(torch.from_numpy(scores), shape, "linear").numpy().argmax(0)]
    budget = 4 * 30 * 17 * 3  # three output slices per slab
    np.testing.assert_array_equal(argmax_on_grid(scores, shape, values, budget_values=budget), full)
    torch_labels = argmax_on_grid(torch.from_numpy(scores), shape, values, TORCH_OPS, budget_values=budget)
    np.testing.assert_array_equal(torch_labels, full)


# ------------------------------------------------------------------------------------------ geometry round trips


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """Echo models: reoriented and cropped (exact), resampled, 2D, 2D slice-wise, two-input."""
    root = tmp_path_factory.mktemp("models")
    return {
        "exact": echo_package(root / "exact", orientation="RAS", crop="nonzero"),
        "resampled": echo_package(root / "resampled", orientation="LPS", target_spacing=[1.1, 1.3, 1.7]),
        "2d": echo_package(root / "2d", spatial_dims=2),
        "slice_wise": echo_package(root / "slice_wise", spatial_dims=2, slice_wise=True, crop="nonzero"),
        "two_inputs": echo_package(root / "two_inputs", inputs=2, orientation="RAS"),
    }


GEOMETRIES = {
    "oblique, flipped": {},
    "LPS-flipped": {"direction": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)},
    "anisotropic, axes permuted": {
        "spacing": (0.7, 3.5, 0.9),
        "direction": (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    },
}


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_echo_comes_back_voxel_for_voxel(echo, geometry):
    _, labels = phantoms.ct_phantom(shape=(20, 36, 30), **geometry)
    labels = _labels_up_to_3(labels)
    result = segment(echo_image(labels), echo["exact"], device="cpu")
    assert result.image.same_grid(labels) and result.image.shape == labels.shape
    np.testing.assert_array_equal(result.image.array, labels.array)
    assert [label.name for label in result.labels] == ["one", "two", "three"]


def test_resampled_model_returns_the_input_grid(echo):
    _, labels = phantoms.ct_phantom(shape=(20, 36, 30), spacing=(0.8, 0.9, 2.5))
    organ = labels.with_array((labels.array == 1).astype(np.uint8))  # one label: interpolation makes no others
    result = segment(echo_image(organ).to_sitk(), echo["resampled"], device="cpu")  # a SimpleITK input
    assert result.image.same_grid(organ)
    got, expected = result.image.array == 1, organ.array == 1
    assert 2 * np.count_nonzero(got & expected) / (got.sum() + expected.sum()) > 0.95
    assert set(np.unique(result.image.array)) == {0, 1}


def test_mirror_tta_keeps_the_echo(echo):
    _, labels = phantoms.ct_phantom(shape=(16, 24, 20))
    labels = _labels_up_to_3(labels)
    result = segment(echo_image(labels), echo["exact"], device="cpu", tta=True)
    np.testing.assert_array_equal(result.image.array, labels.array)


def test_two_sequences_on_one_grid(echo):
    images, labels = phantoms.mri_phantom(shape=(12, 24, 20))
    result = segment([echo_image(labels), images[1]], echo["two_inputs"], device="cpu")
    np.testing.assert_array_equal(result.image.array, labels.array)


def test_2d_model_on_a_radiograph(echo):
    _, labels = phantoms.xray_phantom(shape=(70, 52))
    result = segment(echo_image(labels), echo["2d"], device="cpu")
    assert result.image.same_grid(labels)
    np.testing.assert_array_equal(result.image.array, labels.array)


def test_2d_model_slice_by_slice_on_a_volume(echo):
    _, labels = phantoms.ct_phantom(shape=(6, 40, 36))
    labels = _labels_up_to_3(labels)
    result = segment(echo_image(labels), echo["slice_wise"], device="cpu")
    np.testing.assert_array_equal(result.image.array, labels.array)


def test_postprocessing_follows_the_manifest_unless_switched_off(tmp_path):
    package = echo_package(tmp_path / "pp", orientation="RAS")
    manifest = {**package.manifest, "inference": {**package.manifest["inference"],
                                                  "postprocessing": {"largest_component": [1]}}}  # fmt: skip
    package = save_package(tmp_path / "pp", manifest, echo_state_dict(manifest["network"]))
    _, labels = phantoms.ct_phantom(shape=(16, 30, 24))
    labels = _labels_up_to_3(labels)
    island = labels.array.copy()
    island[1, 1, 1] = 1  # a stray voxel far from the organ
    image = echo_image(labels.with_array(island))
    expected = keep_largest_component(labels.array, [1])  # the phantom's own organ label, largest part only
    assert np.count_nonzero(expected != island) > 1
    np.testing.assert_array_equal(segment(image, package, device="cpu").image.array, expected)
    np.testing.assert_array_equal(segment(image, package, device="cpu", postprocess=False).image.array, island)


def test_dense_crf_runs_on_the_network_grid(echo):
    _, labels = phantoms.ct_phantom(shape=(16, 30, 24))
    block = np.zeros(labels.shape, np.uint8)
    block[3:13, 6:24, 5:19] = 1  # big enough to survive the CRF's smoothing of the echo's weak scores
    organ = labels.with_array(block)
    refined = segment(echo_image(organ), echo["exact"], device="cpu", postprocess={"crf": True}).image.array
    assert 2 * np.count_nonzero(refined & organ.array) / (refined.sum() + organ.array.sum()) > 0.95
    with pytest.raises(ValueError, match="CRF post-processing step needs PyTorch"):
        segment(echo_image(organ), echo["exact"], device="cpu", postprocess={"crf": True}, backend="onnx")


def test_masked_zscore_as_in_training(tmp_path):
    package = echo_package(tmp_path / "mr", normalization=[{"scheme": "zscore", "use_mask": True}])
    array = np.zeros((4, 10, 10), np.float32)
    array[1:3, 2:8, 2:8] = np.random.default_rng(3).normal(500.0, 80.0, size=(2, 6, 6))
    volume = normalise([array], Preparation.from_package(package))[0]
    inside = array != 0
    assert not volume[~inside].any()
    assert abs(volume[inside].mean()) < 1e-4 and abs(volume[inside].std() - 1) < 1e-3


def test_crop_defaults_to_the_body_for_ct_and_nonzero_otherwise(echo):
    assert default_crop(echo["resampled"]) == "body"  # CT, no crop in the manifest
    assert default_crop(echo["two_inputs"]) == "nonzero"  # MR
    assert default_crop(echo["exact"]) == "nonzero"  # as declared


# ------------------------------------------------------------------------------------------ progress and cancel


def test_progress_counts_windows_and_is_monotone(echo):
    _, labels = phantoms.ct_phantom(shape=(20, 36, 30))
    reports = []
    segment(echo_image(_labels_up_to_3(labels)), echo["exact"], device="cpu", window_batch_size=2,
            progress=lambda fraction, stage: reports.append((fraction, stage)))  # fmt: skip
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 < fractions[len(fractions) // 2] < 1.0
    window_reports = [s for _, s in reports if s.startswith("sliding window:")]
    total = int(window_reports[0].split("/")[1].split()[0])
    assert total > 2 and window_reports[-1] == f"sliding window: {total}/{total} windows"
    assert len(window_reports) == 1 + -(-total // 2)  # the start, then one report per batch of two windows


def test_cancel_between_window_batches(echo):
    _, labels = phantoms.ct_phantom(shape=(20, 36, 30))
    cancel, seen = threading.Event(), []

    def progress(fraction, stage):
        seen.append(stage)
        if stage.startswith("sliding window: 1/"):
            cancel.set()

    with pytest.raises(SegmentationCancelled):
        segment(echo_image(_labels_up_to_3(labels)), echo["exact"], device="cpu", progress=progress, cancel=cancel)
    assert seen[-1].startswith("sliding window: 1/")  # stopped right after the batch that saw the request


# ------------------------------------------------------------------------------------------ out of memory


def test_out_of_memory_ladder():
    cuda = torch.device("cuda")
    ladder = torch_backend.fallback_attempts(torch_backend.Attempt(cuda, cuda, 4))
    assert [(a.compute.type, a.storage.type, a.batch_size) for a in ladder] == [
        ("cuda", "cuda", 4), ("cuda", "cuda", 2), ("cuda", "cuda", 1), ("cuda", "cpu", 1), ("cpu", "cpu", 1),
    ]  # fmt: skip
    assert torch_backend.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not torch_backend.is_out_of_memory(RuntimeError("shape mismatch"))


def test_injected_out_of_memory_retries_with_smaller_batches(echo, monkeypatch):
    real_call = torch_backend.WindowNetwork.__call__

    def fails_on_big_batches(self, windows):
        if windows.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, windows)

    monkeypatch.setattr(torch_backend.WindowNetwork, "__call__", fails_on_big_batches)
    _, labels = phantoms.ct_phantom(shape=(20, 36, 30))
    labels = _labels_up_to_3(labels)
    reports = []
    result = segment(echo_image(labels), echo["exact"], device="cpu", window_batch_size=4,
                     progress=lambda f, s: reports.append((f, s)))  # fmt: skip
    np.testing.assert_array_equal(result.image.array, labels.array)
    assert [m for m in result.messages if "Out of memory" in m] == [
        "Out of memory; retrying with windows on cpu, volume on cpu, 2 window(s) per batch.",
        "Out of memory; retrying with windows on cpu, volume on cpu, 1 window(s) per batch.",
    ]
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_other_errors_are_not_retried(echo, monkeypatch):
    def broken(self, windows):
        raise RuntimeError("shape mismatch in layer 3")

    monkeypatch.setattr(torch_backend.WindowNetwork, "__call__", broken)
    _, labels = phantoms.ct_phantom(shape=(16, 30, 24))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        segment(echo_image(_labels_up_to_3(labels)), echo["exact"], device="cpu", window_batch_size=4)


# ------------------------------------------------------------------------------------------ bad input


def test_constant_image_gives_a_warning_and_an_empty_segmentation(echo):
    image = Image(np.zeros((10, 20, 20), np.float32), (1.0, 1.0, 2.0))
    result = segment(image, echo["exact"], device="cpu")
    assert result.image.same_grid(image) and not result.image.array.any()
    assert any("constant" in m for m in result.messages)


def test_one_constant_input_among_several_warns_but_still_segments(echo):
    images, labels = phantoms.mri_phantom(shape=(12, 24, 20))
    zeros = images[1].with_array(np.zeros_like(images[1].array))
    result = segment([echo_image(labels), zeros], echo["two_inputs"], device="cpu")
    np.testing.assert_array_equal(result.image.array, labels.array)
    assert len(result.messages) == 1
    assert "Input 'input1' is constant" in result.messages[0] and "input0" not in result.messages[0]
    both = segment([zeros, zeros], echo["two_inputs"], device="cpu")
    assert not both.image.array.any()
    assert any("Inputs 'input0', 'input1' are constant" in m and "empty" in m for m in both.messages)


def test_bad_inputs_are_clear_errors(echo):
    _, labels = phantoms.ct_phantom(shape=(12, 20, 20))
    image = echo_image(_labels_up_to_3(labels))
    nan = image.array.copy()
    nan[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        segment(image.with_array(nan), echo["exact"], device="cpu")
    with pytest.raises(ValueError, match=r"reads 2 image\(s\) \(input0, input1\)"):
        segment(image, echo["two_inputs"], device="cpu")
    shifted = Image(image.array, image.spacing, (0.0, 0.0, 5.0), image.direction)
    with pytest.raises(ValueError, match="not on the same grid"):
        segment([image, shifted], echo["two_inputs"], device="cpu")
    with pytest.raises(ValueError, match="3D model but the image is a single slice"):
        segment(Image(image.array[:1], image.spacing, image.origin, image.direction), echo["exact"], device="cpu")
    with pytest.raises(ValueError, match="2D model for single-slice images"):
        segment(image, echo["2d"], device="cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        segment(image, echo["exact"], device="tpu")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
        segment(image, echo["exact"], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["exact", "resampled", "2d"])
def test_cuda_with_mixed_precision_gives_the_cpu_labels(echo, model):
    """The GPU path (fp16 autocast, windows batched on the device) returns the CPU's label map; where the model
    resamples, fp16-rounded logits interpolated back to the input grid may flip near-ties, on label borders only
    (seen on an H200: 8 of 21 600 voxels)."""
    if model == "2d":
        _, labels = phantoms.xray_phantom(shape=(70, 52))
    else:
        labels = _labels_up_to_3(phantoms.ct_phantom(shape=(20, 36, 30))[1])
    cpu = segment(echo_image(labels), echo[model], device="cpu")
    gpu = segment(echo_image(labels), echo[model], device="cuda")
    differ = gpu.image.array != cpu.image.array
    if model != "resampled":
        assert not differ.any()
    assert differ.mean() < 1e-3
    ref = cpu.image.array
    border = np.zeros_like(differ)
    for axis in range(ref.ndim):
        step = np.diff(ref, axis=axis) != 0
        border |= np.pad(step, [(0, 1) if a == axis else (0, 0) for a in range(ref.ndim)])
        border |= np.pad(step, [(1, 0) if a == axis else (0, 0) for a in range(ref.ndim)])
    assert not (differ & ~border).any()
