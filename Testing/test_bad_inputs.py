"""Every malformed input ends in one clear message and exit code 1 (EXIT_FAILED), never a traceback.

One table of hostile or broken inputs to `unetseg predict`, each paired with the words its message must hold.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_models import write_tiny_package

from unetseg import cli, phantoms
from unetseg.jobs.runner import EXIT_FAILED


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny model and a CT it can segment."""
    root = tmp_path_factory.mktemp("bad-inputs")
    package = write_tiny_package(root / "model")
    image, _ = phantoms.ct_phantom(shape=(4, 32, 32), spacing=(1.0, 1.0, 3.0))
    sitk.WriteImage(image.to_sitk(), str(root / "ct.nrrd"))
    return root, package


def _write_image(path, array, spacing=(1.0, 1.0, 3.0), direction=None):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def _garbage(path, root):
    path.write_bytes(b"NRRD0004\nthis is not an image\n" + bytes(range(256)))


def _empty(path, root):
    path.write_bytes(b"")


def _nan(path, root):
    array = np.zeros((4, 32, 32), np.float32)
    array[1, 2, 3] = np.nan
    _write_image(path, array)


def _sheared(path, root):
    _write_image(path, np.zeros((4, 32, 32), np.float32), direction=(1, 0.4, 0, 0, 1, 0, 0, 0, 1))


def _colour(path, root):
    rgb = np.zeros((4, 32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red differs from green and blue: not grey stored as RGB
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))


def _time_series(path, root):
    frames = [sitk.GetImageFromArray(np.full((4, 16, 16), t, np.float32)) for t in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))  # 4D: three time points


def _huge_spacing(path, root):
    array = np.full((4, 24, 24), 40.0, np.float32)
    array[:, :, :3] = -1000.0
    array[:, 10:14, 10:14] = 100.0
    _write_image(path, array, spacing=(300.0, 300.0, 1.0))


BAD_IMAGES = {
    "not an image": (_garbage, "Cannot read image"),
    "an empty file": (_empty, "Cannot read image"),
    "NaN voxels": (_nan, "NaN"),
    "a sheared grid": (_sheared, "not orthonormal"),
    "a colour image": (_colour, "RGB"),
    "a time series": (_time_series, "time series"),
    "a spacing that makes a huge grid": (_huge_spacing, "voxel grid"),
}


def _predict(args, capsys) -> tuple[int, str]:
    code = cli.main(["predict", *args, "--device", "cpu", "--max-memory-gb", "2"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_one_clear_message(base, tmp_path, capsys, case):
    root, package = base
    make, words = BAD_IMAGES[case]
    image = tmp_path / "input.nrrd"
    make(image, root)
    code, text = _predict(["-i", str(image), "-m", str(package.path), "-o", str(tmp_path / "out.nrrd")], capsys)
    assert code == EXIT_FAILED, text
    assert words in text and "Traceback" not in text
    assert not (tmp_path / "out.nrrd").exists()


def _no_manifest(model):
    (model / "model.json").unlink()


def _manifest_not_json(model):
    (model / "model.json").write_text("{ this is not json", encoding="utf-8")


def _manifest_wrong_field(model):
    doc = json.loads((model / "model.json").read_text(encoding="utf-8"))
    doc["spatial_dims"] = 7
    (model / "model.json").write_text(json.dumps(doc), encoding="utf-8")


def _truncated_weights(model):
    weights = model / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _weights_missing(model):
    (model / "weights.safetensors").unlink()


BAD_MODELS = {
    "no model.json": (_no_manifest, "model.json"),
    "model.json that is not JSON": (_manifest_not_json, "model.json"),
    "a manifest field out of range": (_manifest_wrong_field, "spatial_dims"),
    "truncated weights": (_truncated_weights, "weights"),
    "missing weights": (_weights_missing, "weights"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_a_broken_model_is_one_clear_message(base, tmp_path, capsys, case):
    root, package = base
    model = tmp_path / "model"
    shutil.copytree(package.path, model)
    breaker, words = BAD_MODELS[case]
    breaker(model)
    code, text = _predict(["-i", str(root / "ct.nrrd"), "-m", str(model), "-o", str(tmp_path / "out.nrrd")], capsys)
    assert code == EXIT_FAILED, text
    assert words in text and "Traceback" not in text


def test_bad_paths_and_arguments_are_one_clear_message_each(base, tmp_path, capsys):
    root, package = base
    ct, model = str(root / "ct.nrrd"), str(package.path)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["-i", str(tmp_path / "absent.nrrd"), "-m", model, "-o", str(tmp_path / "o.nrrd")], "not found"),
        (["-i", ct, "-m", str(tmp_path / "no-model"), "-o", str(tmp_path / "o.nrrd")], "no-model"),
        (["-i", ct, "-m", model, "-o", str(tmp_path / "o.png")], "Unsupported output extension"),
        (["-i", ct, "-m", model, "-o", str(tmp_path / "missing" / "o.nrrd")], "does not exist"),
        (["-i", ct, "-i", ct, "-m", model, "-o", str(tmp_path / "o.nrrd")], "Give one image per input"),
        (["-i", str(empty), "-m", model, "-o", str(tmp_path / "out")], "holds no DICOM series, no image files"),
        (["-i", str(empty), "-m", model, "-o", str(tmp_path / "o.nrrd")], "-o names the output folder"),
    ]
    for args, words in cases:
        code, text = _predict(args, capsys)
        assert code == EXIT_FAILED and words in text and "Traceback" not in text, (args, text)
