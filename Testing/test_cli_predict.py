"""`unetseg predict`: file formats, JSON progress, atomic output, cancel by SIGTERM, and every bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series
from echo_model import echo_image, echo_package, echo_state_dict
from safetensors.torch import save as safetensors_save

from unetseg import cli, phantoms
from unetseg.image import Image
from unetseg.io import read_label_image
from unetseg.jobs.progress import parse_progress_line
from unetseg.jobs.runner import EXIT_CANCELLED, EXIT_FAILED

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "echo": echo_package(root / "echo", orientation="RAS", crop="nonzero"),
        "two_inputs": echo_package(root / "two_inputs", inputs=2),
    }


@pytest.fixture(scope="module")
def case():
    """An echo image on an oblique right-handed grid (DICOM stores that exactly) and its labels."""
    _, labels = phantoms.ct_phantom(shape=(14, 32, 28), direction=phantoms.oblique_direction(20.0, flip_x=False))
    labels = labels.with_array(np.minimum(labels.array, 3).astype(np.uint8))
    return echo_image(labels).with_array(labels.array.astype(np.int16)), labels


def _events(out: str) -> list[dict]:
    return [e for e in (parse_progress_line(line) for line in out.splitlines()) if e is not None]


def _predict(capsys, inputs, model, output, *extra) -> tuple[int, list[dict]]:
    args = ["predict", *(a for i in inputs for a in ("-i", str(i))), "-m", str(model), "-o", str(output)]
    code = cli.main([*args, "--device", "cpu", "--progress", "json", *extra])
    return code, _events(capsys.readouterr().out)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.slow
def test_nrrd_nifti_and_dicom_inputs_give_identical_labels(models, case, tmp_path, capsys):
    image, labels = case
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "ct.nii.gz"))
    inputs = {"nrrd": tmp_path / "ct.nrrd", "nifti": tmp_path / "ct.nii.gz",
              "dicom": write_dicom_series(image, tmp_path / "dicom")}  # fmt: skip
    results = {}
    for name, path in inputs.items():
        out = tmp_path / f"out-{name}.seg.nrrd"
        code, events = _predict(capsys, [path], models["echo"].path, out)
        assert code == 0, events
        results[name] = read_label_image(out)
    for name, result in results.items():
        assert result.image.same_grid(labels, tolerance=1e-3), name
        np.testing.assert_array_equal(result.image.array, labels.array, err_msg=name)
    assert [label.name for label in results["dicom"].labels] == ["one", "two", "three"]


def test_json_progress_and_label_map_output(models, case, tmp_path, capsys):
    image, labels = case
    sitk.WriteImage(image.to_sitk(), str(tmp_path / "ct.nrrd"))
    out = tmp_path / "labels.nii.gz"
    code, events = _predict(capsys, [tmp_path / "ct.nrrd"], models["echo"].path, out, "--no-postprocess")
    assert code == 0
    fractions = [e["fraction"] for e in events if e["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(e["stage"].startswith("sliding window:") for e in events if e["type"] == "progress")
    assert events[-1] == {"type": "result", "output": str(out), "messages": []}
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels.array)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(("flags", "tta"), [([], None), (["--tta"], True), (["--no-tta"], False)])
def test_tta_flags_reach_segment(flags, tta, models, case, tmp_path, capsys, monkeypatch):
    from unetseg.jobs import predict_case as predict_job

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["tta"])
        return segment(*args, **kwargs)

    segment = predict_job.segment
    monkeypatch.setattr(predict_job, "segment", spy)
    sitk.WriteImage(case[0].to_sitk(), str(tmp_path / "ct.nrrd"))
    code, _ = _predict(capsys, [tmp_path / "ct.nrrd"], models["echo"].path, tmp_path / "out.nrrd", *flags)
    assert code == 0 and seen == [tta]


def test_tta_and_no_tta_exclude_each_other(models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _predict(capsys, [tmp_path / "ct.nrrd"], models["echo"].path, tmp_path / "out.nrrd", "--tta", "--no-tta")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_constant_image_warns_and_writes_an_empty_segmentation(models, tmp_path, capsys):
    sitk.WriteImage(Image(np.zeros((8, 20, 20), np.int16)).to_sitk(), str(tmp_path / "zeros.nrrd"))
    code, events = _predict(capsys, [tmp_path / "zeros.nrrd"], models["echo"].path, tmp_path / "out.seg.nrrd")
    assert code == 0
    assert any(e["type"] == "log" and "constant" in e["message"] for e in events)
    assert not read_label_image(tmp_path / "out.seg.nrrd").image.array.any()


# ---------------------------------------------------------------------------------------------- cancel


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_leaves_no_file_and_no_traceback(signum, models, tmp_path):
    """SIGTERM (how the panel stops a run) and SIGINT (Ctrl-C) end the same way: exit code 3, one error event."""
    _, labels = phantoms.ct_phantom(shape=(48, 96, 96))
    sitk.WriteImage(echo_image(labels.with_array(np.minimum(labels.array, 3))).to_sitk(), str(tmp_path / "ct.nrrd"))
    out = tmp_path / "out.seg.nrrd"
    command = [sys.executable, "-m", "unetseg", "predict", "-i", str(tmp_path / "ct.nrrd"),
               "-m", str(models["echo"].path), "-o", str(out), "--device", "cpu", "--tta",
               "--progress", "json"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", cwd=REPO
    )
    try:
        for line in process.stdout:
            event = parse_progress_line(line)
            if event and event.get("stage", "").startswith("sliding window: 1/"):
                process.send_signal(signum)
                break
        rest, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == EXIT_CANCELLED
    assert _events(rest)[-1]["type"] == "error" and "cancelled" in _events(rest)[-1]["message"]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- bad input


def _bad_model(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / f"model-{kind}"
    package = echo_package(folder, name=f"bad-{kind}")
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    if kind == "corrupt":
        (folder / "model.json").write_text('{"format": "unetseg-model/1", "name": ')
    elif kind == "schema":
        (folder / "model.json").write_text(json.dumps({**manifest, "modality": "PET"}))
    elif kind == "no-weights":
        package.weights_path.unlink()
    elif kind == "misfit":  # weights of a wider network under this manifest
        wider = {**manifest["network"], "features": [4, 4, 4, 4, 4]}
        package.weights_path.write_bytes(safetensors_save(echo_state_dict(wider)))
    return folder


def _image_file(tmp_path: Path, name: str, img: sitk.Image) -> Path:
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


BAD_INPUTS = {
    "missing file": ("missing", "echo", "Image not found"),
    "unreadable file": ("garbage", "echo", "Cannot read image"),
    "NaN voxels": ("nan", "echo", "NaN or infinite"),
    "4D image": ("4d", "echo", "time series or a multi-channel"),
    "RGB image": ("rgb", "echo", "RGB or vector"),
    "wrong number of sequences": ("two", "echo", r"reads 1 image\(s\)"),
    "images on different grids": ("shifted", "two_inputs", "not on the same grid"),
    "3D model on a single slice": ("slice", "echo", "3D model but the image is a single slice"),
    "corrupt manifest": ("ok", "corrupt", "not valid JSON"),
    "schema-invalid manifest": ("ok", "schema", "Invalid model manifest"),
    "missing weights": ("ok", "no-weights", "is missing"),
    "weights that do not fit": ("ok", "misfit", "do not fit the network"),
    "missing output folder": ("ok", "echo", "Output folder does not exist"),
    "output path under a file": ("ok", "echo", "Output folder does not exist"),
    "unknown output extension": ("ok", "echo", "Unsupported output extension"),
}


def _inputs(kind: str, tmp_path: Path, case) -> list[Path]:
    image, _ = case
    ok = _image_file(tmp_path, "ok.nrrd", image.to_sitk())
    if kind == "missing":
        return [tmp_path / "nowhere.nrrd"]
    if kind == "garbage":
        (tmp_path / "garbage.nrrd").write_bytes(b"NRRD0004\nnot really an image\n")
        return [tmp_path / "garbage.nrrd"]
    if kind == "nan":
        array = image.array.astype(np.float32)
        array[2, 3, 4] = np.nan
        return [_image_file(tmp_path, "nan.nrrd", image.with_array(array).to_sitk())]
    if kind == "4d":
        return [_image_file(tmp_path, "4d.nrrd", sitk.JoinSeries([image.to_sitk(), image.to_sitk()]))]
    if kind == "rgb":
        rgb = np.stack([image.array, image.array * 2, image.array * 3], axis=-1).astype(np.uint8)
        return [_image_file(tmp_path, "rgb.nrrd", sitk.GetImageFromArray(rgb, isVector=True))]
    if kind == "two":
        return [ok, ok]
    if kind == "shifted":
        shifted = image.to_sitk()
        shifted.SetOrigin((0.0, 0.0, 50.0))
        return [ok, _image_file(tmp_path, "shifted.nrrd", shifted)]
    if kind == "slice":
        return [_image_file(tmp_path, "slice.nrrd", image.to_sitk()[:, :, 3])]
    return [ok]


def _output(name: str, tmp_path: Path) -> Path:
    if name == "missing output folder":
        return tmp_path / "no" / "such" / "folder" / "out.seg.nrrd"
    if name == "output path under a file":
        (tmp_path / "a-file").write_text("x")
        return tmp_path / "a-file" / "out.seg.nrrd"
    if name == "unknown output extension":
        return tmp_path / "out.png"
    return tmp_path / "out.seg.nrrd"


@pytest.mark.parametrize("name", BAD_INPUTS, ids=BAD_INPUTS.keys())
def test_bad_input_is_a_clear_error_and_writes_nothing(name, models, case, tmp_path, capsys):
    input_kind, model_kind, message = BAD_INPUTS[name]
    model = models[model_kind].path if model_kind in models else _bad_model(tmp_path, model_kind)
    output = _output(name, tmp_path)
    code, events = _predict(capsys, _inputs(input_kind, tmp_path, case), model, output)
    assert code == EXIT_FAILED
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert re.search(message, errors[0]["message"]), errors[0]["message"]
    assert not output.exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- data loss


def _same_file_as(input_path: Path, how: str) -> Path:
    """An output path that names ``input_path`` itself: plainly, spelled another way, or through a link."""
    if how == "same path":
        return input_path
    if how == "spelled differently":
        return input_path.parent / "sub" / ".." / input_path.name
    if how == "symlink":
        link = input_path.parent / "link.nrrd"
        link.symlink_to(input_path)
        return link
    link = input_path.parent / "hard.nrrd"
    os.link(input_path, link)
    return link


@pytest.mark.parametrize("how", ["same path", "spelled differently", "symlink", "hard link"])
def test_an_output_that_is_an_input_is_refused(how, models, case, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    ct = _image_file(tmp_path, "ct.nrrd", case[0].to_sitk())
    before = ct.read_bytes()
    code, events = _predict(capsys, [ct], models["echo"].path, _same_file_as(ct, how))
    assert code == EXIT_FAILED and events[-1]["type"] == "error"
    assert "would destroy the image" in events[-1]["message"] and "ct-segmentation.seg.nrrd" in events[-1]["message"]
    assert ct.read_bytes() == before and _leftovers(tmp_path) == []


def test_an_output_next_to_the_input_is_fine(models, case, tmp_path, capsys):
    ct = _image_file(tmp_path, "ct.nrrd", case[0].to_sitk())
    code, _ = _predict(capsys, [ct], models["echo"].path, tmp_path / "ct.seg.nrrd")
    assert code == 0 and (tmp_path / "ct.seg.nrrd").is_file()


def test_errors_without_json_go_to_stderr(models, tmp_path, capsys):
    code = cli.main(["predict", "-i", str(tmp_path / "nowhere.nrrd"), "-m", str(models["echo"].path),
                     "-o", str(tmp_path / "out.seg.nrrd"), "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == EXIT_FAILED and captured.out == ""
    assert captured.err.startswith("unetseg predict: Image not found")
