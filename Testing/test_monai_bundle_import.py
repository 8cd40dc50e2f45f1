"""Importing MONAI bundles as packages (`unetseg models import`), and running every supported step as MONAI does.

The reference for the runs is MONAI itself executing the bundle's own config (the test wrote it, so it is trusted
here): ConfigParser instantiates its preprocessing, inferer and postprocessing, as ``monai.bundle run`` does
(test_monai_bundle_parity runs that command itself on a trained bundle).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fed_windows import FedWindows

from unetseg import cli
from unetseg.image import Image
from unetseg.inference.onnx_backend import export_onnx
from unetseg.inference.predictor import segment
from unetseg.jobs.runner import EXIT_OK
from unetseg.models.catalog import Catalog
from unetseg.models.formats.monai_convert import convert_bundle
from unetseg.models.importers import import_any
from unetseg.models.manifest import PackageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from make_monai_bundle_fixture import NETWORK_DEFS, inference_config, metadata, write_bundle, write_ct_phantom

torch.set_num_threads(1)
TRAINED = Path(__file__).resolve().parent / "fixtures" / "monai" / "tiny_trained_bundle"


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog(bundled_dir=tmp_path / "none", user_dir=tmp_path / "models")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    rotated = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return write_ct_phantom(tmp_path_factory.mktemp("ct") / "ct.nii.gz", (40, 36, 20), (0.9, 1.1, 2.5), 3, rotated)


def test_an_imported_bundle_is_a_package_that_says_what_it_is(tmp_path, catalog):
    folder = write_bundle(tmp_path / "spleen_ct", "unet")
    name = import_any(folder, catalog)
    pkg = catalog.get(name)
    m = pkg.manifest
    assert name == "spleen_ct" and name in catalog.names() and (m["variant"], m["modality"]) == ("monai", "CT")
    assert m["preprocessing"]["kind"] == "monai" and [s["op"] for s in m["preprocessing"]["monai"]["steps"]] == [
        "orientation", "spacing", "scale_intensity_range"]  # fmt: skip
    ct = {"scheme": "ct", "mean": -57.0, "std": 221.0, "clip": [-57.0, 164.0]}
    assert m["preprocessing"]["normalization"] == [ct]
    assert m["inference"]["monai"]["inferer"]["roi_size"] == [32, 32, 32]
    assert [(lab["value"], lab["name"]) for lab in m["labels"]] == [(1, "liver"), (2, "spleen")]
    assert "^Liver~" in m["labels"][0]["terminology"] and "^Spleen~" in m["labels"][1]["terminology"]
    assert m["labels"][0]["color"] != m["labels"][1]["color"]
    prov = m["provenance"]
    assert prov["format"] == "monai" and prov["source"] == "spleen_ct"
    assert set(prov["files_sha256"]) == {"configs/metadata.json", "configs/inference.json", "models/model.pt"}
    assert sorted(p.name for p in pkg.path.iterdir()) == ["model.json", "weights.safetensors"]  # no pickle kept


def test_dynunet_stores_each_tensor_once_and_runs(tmp_path, catalog, image_path):
    from safetensors import safe_open

    pkg = catalog.get(import_any(write_bundle(tmp_path / "dyn", "dynunet"), catalog))
    with safe_open(pkg.weights_path, "pt") as f:
        stored = set(f.keys())
    aliases = pkg.network_config["aliases"]
    assert aliases and not stored & set(aliases) and set(aliases.values()) <= stored
    result = segment(Image.from_sitk(sitk.ReadImage(str(image_path))), pkg, device="cpu")
    assert result.image.array.shape == Image.from_sitk(sitk.ReadImage(str(image_path))).shape


def test_a_zip_or_the_folder_above_imports_like_the_folder(tmp_path, catalog):
    folder = write_bundle(tmp_path / "outer" / "tiny", "unet")
    archive = shutil.make_archive(str(tmp_path / "tiny"), "zip", tmp_path / "outer")
    first = catalog.get(import_any(archive, catalog)).manifest
    second = catalog.get(import_any(tmp_path / "outer", catalog, name="from-parent")).manifest
    assert first["provenance"]["files_sha256"] == second["provenance"]["files_sha256"]
    assert first["provenance"]["archive_sha256"] and folder.is_dir()


def test_the_modality_is_asked_for_when_the_metadata_is_silent(tmp_path, catalog):
    meta = metadata()
    image = meta["network_data_format"]["inputs"]["image"]
    image.pop("modality"), image.pop("format")
    folder = write_bundle(tmp_path / "silent", meta=meta)
    with pytest.raises(PackageError, match="--modality"):
        import_any(folder, catalog)
    assert not any(catalog.user_dir.iterdir())
    assert catalog.get(import_any(folder, catalog, modality="mri")).modality == "MR"


def test_names_clashes_and_nnunet_options(tmp_path, catalog):
    folder = write_bundle(tmp_path / "b", "unet")
    assert import_any(folder, catalog, name="my-spleen") == "my-spleen"
    with pytest.raises(PackageError, match="already in the catalog"):
        import_any(folder, catalog, name="my-spleen")
    assert import_any(folder, catalog, name="my-spleen", replace=True) == "my-spleen"
    with pytest.raises(PackageError, match="cannot name a model"):
        import_any(folder, catalog, name="../escape")
    with pytest.raises(PackageError, match="folds"):
        import_any(folder, catalog, folds=["0"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c["network_def"].update({"_target_": "os.system"}), "not one of the networks"),
        (lambda c: c["preprocessing"]["transforms"][3].update({"align_corners": True}), "align_corners"),
        (lambda c: c["postprocessing"]["transforms"][1].update({"nearest_interp": True}) or
         c["postprocessing"]["transforms"].insert(1, c["postprocessing"]["transforms"].pop(2)) or
         c["postprocessing"]["transforms"][2].update({"nearest_interp": False}), "label map with linear"),
    ],
)  # fmt: skip
def test_a_refused_bundle_leaves_the_user_folder_as_it_was(tmp_path, catalog, change, match):
    import_any(write_bundle(tmp_path / "kept", "unet"), catalog)
    before = sorted(p.relative_to(catalog.user_dir) for p in catalog.user_dir.rglob("*"))
    config = inference_config()
    change(config)
    folder = write_bundle(tmp_path / "refused", config=config, weights_for=NETWORK_DEFS["unet"])
    with pytest.raises(PackageError, match=match):
        import_any(folder, catalog)
    assert sorted(p.relative_to(catalog.user_dir) for p in catalog.user_dir.rglob("*")) == before


def test_the_command_line_imports_with_a_modality(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNETSEG_MODELS_DIR", str(tmp_path / "models"))
    meta = metadata()
    meta["network_data_format"]["inputs"]["image"].pop("modality")
    meta["network_data_format"]["inputs"]["image"]["format"] = "magnitude"
    folder = write_bundle(tmp_path / "mr_bundle", meta=meta)
    assert cli.main(["models", "import", str(folder)]) != EXIT_OK
    assert "--modality" in capsys.readouterr().err
    assert cli.main(["models", "import", str(folder), "--modality", "MR", "--name", "mr-one"]) == EXIT_OK
    assert "mr-one" in Catalog(user_dir=tmp_path / "models").names("MR")


# ------------------------------------------------------------------------------------------ runs against MONAI


def _monai_reference(folder: Path, image: Path) -> np.ndarray:
    """MONAI running the bundle's own config (without SaveImaged): the label channels on the input grid."""
    from monai.bundle import ConfigParser

    config = json.loads((folder / "configs" / "inference.json").read_text(encoding="utf-8"))
    post = config["postprocessing"]["transforms"]
    config["postprocessing"]["transforms"] = [t for t in post if "SaveImage" not in t["_target_"]]
    parser = ConfigParser(config)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = parser.get_parsed_content("preprocessing")({"image": str(image)})
        with torch.no_grad():
            data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network.eval())[0]
        return parser.get_parsed_content("postprocessing")(data)["pred"].numpy()


def _painted(channels: np.ndarray, sigmoid: bool) -> np.ndarray:
    if channels.shape[0] == 1:
        return channels[0]
    labels = np.zeros(channels.shape[1:])
    for c, mask in enumerate(channels):
        if c or sigmoid:
            labels[mask > 0.5] = c + 1 if sigmoid else c
    return labels


def _variant(kind: str) -> tuple[dict, dict]:
    config, meta = inference_config(), metadata()
    pre, post = config["preprocessing"]["transforms"], config["postprocessing"]["transforms"]
    if kind == "zscore_constant":
        pre[4] = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}
        config["inferer"].update({"mode": "constant", "overlap": 0.25})
    elif kind == "argmax_then_nearest_invert":
        post[1:3] = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}, {**post[1], "nearest_interp": True}]
    elif kind == "keep_largest":
        post.insert(3, {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1, 2]})
    elif kind == "sigmoid":
        post[0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
        post[2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
        meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "TC", "1": "WT", "2": "ET"}
    elif kind == "slices":
        config["network_def"] = {**NETWORK_DEFS["unet"], "spatial_dims": 2}
        config["inferer"] = {"_target_": "SliceInferer", "roi_size": [32, 32], "spatial_dim": 2, "sw_batch_size": 4}
    return config, meta


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "onnx"),
    [("zscore_constant", True), ("argmax_then_nearest_invert", False), ("keep_largest", False),
     ("sigmoid", False), ("slices", True)],
)  # fmt: skip
def test_each_supported_step_runs_as_monai_runs_it(tmp_path, image_path, kind, onnx, monkeypatch):
    if kind == "keep_largest":
        pytest.importorskip("skimage", reason="MONAI's KeepLargestConnectedComponent needs scikit-image")
    config, meta = _variant(kind)
    folder = write_bundle(tmp_path / kind, config=copy.deepcopy(config), meta=meta, seed=5)  # seed 5: 3 labels
    if kind != "slices":  # the trained 3D network: scores that are not all on one side of a threshold
        shutil.copy(TRAINED / "models" / "model.pt", folder / "models" / "model.pt")
    reference = _painted(_monai_reference(folder, image_path), kind == "sigmoid").transpose(2, 1, 0)
    package = convert_bundle(folder, tmp_path / "package")
    image = Image.from_sitk(sitk.ReadImage(str(image_path)))
    backends = ["torch", "onnx"] if onnx else ["torch"]
    if onnx:
        export_onnx(package)
    windows = FedWindows(monkeypatch)
    for backend in backends:
        ours = segment(image, package, device="cpu", backend=backend).image.array
        if backend == "onnx":  # the session was opened for the windows it ran on: 4 slices a call, or one box
            assert windows.check()[0] == (4 if kind == "slices" else 1)
        assert ours.shape == reference.shape
        values = [v for v in np.unique(reference) if v]
        dice = {v: 2 * ((ours == v) & (reference == v)).sum() / ((ours == v).sum() + (reference == v).sum())
                for v in values}  # fmt: skip
        assert values and min(dice.values()) >= 0.99, (kind, backend, dice)
        if kind != "slices":  # the trained network: the same labels voxel for voxel (the random 2D one has near-ties)
            assert (ours == reference).all(), (kind, backend, (ours == reference).mean())


@pytest.mark.slow
def test_a_2d_bundle_segments_a_single_slice_image_as_monai(tmp_path):
    """A 2D network with a plain sliding window on a 2D image (rotated, anisotropic): MONAI drops the axis codes
    and spacings beyond the image's two axes, and so does the import."""
    from make_monai_bundle_fixture import ct_phantom

    hu, _ = ct_phantom((48, 40, 3), seed=4)
    image_2d = sitk.GetImageFromArray(hu[1])
    image_2d.SetSpacing((0.9, 1.1))
    image_2d.SetDirection((0.0, -1.0, 1.0, 0.0))
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(image_2d, str(path))
    config = inference_config()
    config["network_def"] = {**NETWORK_DEFS["unet"], "spatial_dims": 2}
    config["inferer"]["roi_size"] = [32, 32]
    folder = write_bundle(tmp_path / "bundle_2d", config=config, seed=5)
    reference = _monai_reference(folder, path)[0].T  # (y, x)
    ours = segment(Image.from_sitk(sitk.ReadImage(str(path))), convert_bundle(folder, tmp_path / "pkg"), device="cpu")
    assert ours.image.array.shape == (1, *reference.shape) and len(np.unique(reference)) > 1
    np.testing.assert_array_equal(ours.image.array[0], reference)
