"""The numpy re-implementation of a MONAI bundle's transforms against MONAI itself, and the pipeline's checks.

`unetseg.inference.monai_geometry` (Orientation, Spacing's grid, grid_sample resampling, Invertd) and
`monai_intensity` (intensity scaling, activations, AsDiscrete) must compute what MONAI 1.x computes, since the
ONNX path runs them without torch; the windows' constant blending must be MONAI's too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from unetseg.inference import monai_geometry as geometry
from unetseg.inference import monai_intensity as intensity
from unetseg.inference.monai_pipeline import check_pipeline
from unetseg.inference.windows import sliding_window

RAS = (("L", "R"), ("P", "A"), ("I", "S"))


def _affine(rng: np.random.Generator, oblique: bool) -> np.ndarray:
    if oblique:
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    else:
        rotation = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(rng.uniform(0.5, 3.0, 3))
    affine[:3, 3] = rng.normal(0, 50, 3)
    return affine


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("mode", "padding"), [("bilinear", "border"), ("nearest", "border"), ("bilinear", "zeros")])
def test_orientation_spacing_and_their_inverse_are_monais(seed, mode, padding):
    rng = np.random.default_rng(seed)
    affine = _affine(rng, oblique=seed >= 4)
    shape = tuple(int(n) for n in rng.integers(7, 20, 3))
    array = rng.normal(size=(2, *shape)).astype(np.float32)
    pixdim = [1.5, 1.1, 2.0] if seed % 2 else [0.9, 1.3, 0.7]
    monai = mt.Compose([mt.Orientation("RAS", labels=RAS), mt.Spacing(pixdim, mode=mode, padding_mode=padding)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = monai(MetaTensor(torch.from_numpy(array.copy()), affine=torch.from_numpy(affine)))
        inverted = monai.inverse(reference)

    oriented_affine, reorder = geometry.orientation(affine, shape, "RAS")
    oriented = reorder.apply(array)
    new_affine, grid = geometry.spacing_grid(oriented_affine, oriented.shape[1:], pixdim)
    ours = geometry.resample(oriented, oriented_affine, new_affine, grid, mode, padding)
    assert ours.shape == tuple(reference.shape)
    np.testing.assert_allclose(new_affine, reference.affine.numpy(), atol=1e-9)
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-5)
    back = reorder.undo(geometry.resample(ours, new_affine, oriented_affine, oriented.shape[1:], mode, padding))
    np.testing.assert_allclose(back, inverted.numpy(), atol=1e-5)


def test_nearest_ties_go_where_monai_sends_them():
    """Round spacing ratios put source coordinates exactly on k + 0.5; MONAI's floating point decides each tie
    (torch's affine_grid base, grid_sample's unnormalisation), and so must the numpy path, forward and inverse."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(6, 40, 3))
        affine = np.diag([*rng.choice([0.5, 0.78125, 0.8, 1.0, 1.25, 2.0, 2.5], 3), 1.0])
        affine[:3, 3] = rng.normal(0, 30, 3)
        target = list(rng.choice([0.5, 0.75, 1.0, 1.25, 1.5, 2.0], 3))
        index = np.indices(shape)
        coded = (index[0] * 10_000 + index[1] * 100 + index[2])[None].astype(np.float32)  # each voxel says where
        spacing = mt.Spacing(target, mode="nearest")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forward = spacing(MetaTensor(torch.from_numpy(coded.copy()), affine=torch.from_numpy(affine)))
            back = spacing.inverse(forward)
        new_affine, grid = geometry.spacing_grid(affine, shape, target)
        ours = geometry.resample(coded, affine, new_affine, grid, "nearest")
        tracked = geometry.tracked_affine(affine, new_affine, shape, grid)
        np.testing.assert_array_equal(ours, forward.numpy())
        np.testing.assert_array_equal(tracked, forward.affine.numpy())
        np.testing.assert_array_equal(geometry.resample(ours, tracked, affine, shape, "nearest"), back.numpy())


def test_spacing_grid_is_monais_including_its_extra_voxel_and_tolerance():
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for pixdim, shape in (([1.6, 1.6, 2.0], (256, 256, 200)), ([0.8004, 0.8, 2.0], (10, 10, 10))):
        _, grid = geometry.spacing_grid(affine, shape, pixdim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = MetaTensor(torch.zeros(1, *shape), affine=torch.from_numpy(affine))
            expected = mt.Spacing(pixdim)(image).shape[1:]
        assert grid == list(expected)
    # round((n - 1) * spacing / target + 1): with a NIfTI's float32 0.8 mm, 129 voxels where nnU-Net's rule gives 128
    f32 = float(np.float32(0.8))
    assert geometry.spacing_grid(np.diag([f32, f32, 2.0, 1.0]), (256, 256, 200), [1.6, 1.6, 2.0])[1] == [129, 129, 200]


def test_monai_volume_is_what_loadimage_gives(tmp_path):
    """The project's (z, y, x) LPS image becomes MONAI's channel-first (i, j, k) array with its RAS affine."""
    import SimpleITK as sitk

    from unetseg.image import Image

    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    image = Image(array, spacing=(0.5, 0.7, 2.0), origin=(10.0, -4.0, 3.0), direction=(0, -1, 0, 1, 0, 0, 0, 0, 1))
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = mt.Compose([mt.LoadImage(image_only=True), mt.EnsureChannelFirst()])(str(path))
    volume, affine = geometry.monai_volume([image], 3)
    np.testing.assert_array_equal(volume, loaded.numpy())
    np.testing.assert_allclose(affine, loaded.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(geometry.labels_to_image(volume[0]), array)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda x: intensity.scale_intensity_range(x, -57, 164, 0.0, 1.0, True),
         mt.ScaleIntensityRange(-57, 164, 0.0, 1.0, clip=True)),
        (lambda x: intensity.scale_intensity_range(x, 0, 200, None, None, False), mt.ScaleIntensityRange(0, 200)),
        (lambda x: intensity.normalize_intensity(x, None, None, False, False), mt.NormalizeIntensity()),
        (lambda x: intensity.normalize_intensity(x, None, None, True, True),
         mt.NormalizeIntensity(nonzero=True, channel_wise=True)),
        (lambda x: intensity.normalize_intensity(x, [10.0, 20.0], [2.0, 0.0], False, True),
         mt.NormalizeIntensity(subtrahend=[10.0, 20.0], divisor=[2.0, 0.0], channel_wise=True)),
        (lambda x: intensity.scale_intensity(x, 0.0, 1.0, False), mt.ScaleIntensity()),
        (lambda x: intensity.scale_intensity(x, -1.0, 1.0, True), mt.ScaleIntensity(-1.0, 1.0, channel_wise=True)),
        (lambda x: intensity.activation(x, "softmax"), mt.Activations(softmax=True)),
        (lambda x: intensity.activation(x, "sigmoid"), mt.Activations(sigmoid=True)),
        (lambda x: intensity.discretize(x, True, None), mt.AsDiscrete(argmax=True)),
        (lambda x: intensity.discretize(x, False, 0.5), mt.AsDiscrete(threshold=0.5)),
    ],
)  # fmt: skip
def test_intensity_and_output_steps_are_monais(ours, theirs):
    rng = np.random.default_rng(0)
    x = rng.normal(50, 80, (2, 9, 8, 7)).astype(np.float32)
    x[:, :2] = 0.0  # some zeros for nonzero=True
    np.testing.assert_allclose(ours(x.copy()), np.asarray(theirs(torch.from_numpy(x.copy()))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_numpy_windows_blend_as_monai(mode):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    volume = torch.randn(1, 1, 21, 17, 30)
    with torch.no_grad():
        expected = sliding_window_inference(volume, (8, 16, 12), 3, conv, overlap=0.25, mode=mode)

        def run(windows: np.ndarray) -> np.ndarray:
            return conv(torch.from_numpy(windows)).numpy()

        ours = sliding_window(volume.numpy(), (8, 16, 12), 3, run, 0.25, 0.125, mode)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)


def _pipeline(**changes) -> dict:
    pipeline = {
        "preprocessing": [
            {"op": "spacing", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear", "padding_mode": "border",
             "align_corners": False},
        ],
        "inferer": {"kind": "sliding_window", "roi_size": [32, 32, 32], "overlap": 0.5, "mode": "gaussian",
                    "sigma_scale": 0.125, "padding_mode": "constant", "cval": 0.0, "sw_batch_size": 1},
        "postprocessing": [
            {"op": "activation", "function": "softmax"},
            {"op": "invert", "nearest_interp": False},
            {"op": "discretize", "argmax": True, "threshold": None},
        ],
    }  # fmt: skip
    pipeline.update(changes)
    return pipeline


def test_check_pipeline_accepts_the_spleen_bundle_form():
    check_pipeline(_pipeline(), 3)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"preprocessing": [{"op": "spacing", "pixdim": [1, 1, 1], "mode": "bicubic", "padding_mode": "border"}]},
         "bilinear or nearest"),
        ({"preprocessing": [{"op": "spacing", "pixdim": [1, 1, 1], "mode": "bilinear", "padding_mode": "border",
                             "align_corners": True}]}, "align_corners"),
        ({"inferer": {**_pipeline()["inferer"], "overlap": [0.5, 0.5, 0.25]}}, "one number"),
        ({"inferer": {**_pipeline()["inferer"], "padding_mode": "replicate"}}, "zeros"),
        ({"postprocessing": [{"op": "discretize", "argmax": True, "threshold": None},
                             {"op": "invert", "nearest_interp": False}]}, "label map with linear"),
        ({"postprocessing": [{"op": "activation", "function": "sigmoid"},
                             {"op": "discretize", "argmax": True, "threshold": None}]}, "sigmoid"),
        ({"postprocessing": [{"op": "discretize", "argmax": True, "threshold": None},
                             {"op": "keep_largest_component", "connectivity": 1}]}, "KeepLargest"),
        ({"postprocessing": [{"op": "activation", "function": "softmax"}]}, "never turns scores into labels"),
    ],
)  # fmt: skip
def test_check_pipeline_refuses_what_it_cannot_reproduce(change, match):
    with pytest.raises(ValueError, match=match):
        check_pipeline(_pipeline(**change), 3)
