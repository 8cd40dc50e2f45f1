"""MONAI bundles: what is read from a bundle (network, labels, transforms, inferer, postprocessing, manifest fields).

Transforms outside what is reproduced are refused by name; the description alone reproduces ``python -m monai.bundle
run`` voxel for voxel (slow). The tiny bundles are written by monai_fakes.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from monai_fakes import NETWORK_DEFS, config_with, metadata, reference_command, sha256, write_bundle, write_ct_phantom

from unetseg.models.formats.monai_bundle import MonaiBundle, project_normalization, read_bundle
from unetseg.models.formats.monai_files import BundleError

# ---------------------------------------------------------------------------------------------- what is read


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory) -> tuple[Path, MonaiBundle]:
    folder = write_bundle(tmp_path_factory.mktemp("unet") / "tiny_ct_bundle", "unet")
    return folder, read_bundle(folder)


def test_unet_bundle_description(unet_bundle):
    folder, b = unet_bundle
    assert b.network_target == "monai.networks.nets.UNet"
    assert b.network_args == {k: v for k, v in NETWORK_DEFS["unet"].items() if k != "_target_"}
    assert (b.spatial_dims, b.in_channels, b.out_channels) == (3, 1, 3)
    assert b.modality == "CT"
    assert b.inputs == [{"name": "image"}]
    assert b.labels == [{"value": 1, "name": "liver"}, {"value": 2, "name": "spleen"}]
    assert b.preprocessing == [
        {"op": "orientation", "transform": "Orientationd", "axcodes": "RAS"},
        {
            "op": "spacing",
            "transform": "Spacingd",
            "pixdim": [1.5, 1.5, 2.0],
            "mode": "bilinear",
            "padding_mode": "border",
            "align_corners": False,
        },
        {
            "op": "scale_intensity_range",
            "transform": "ScaleIntensityRanged",
            "a_min": -57.0,
            "a_max": 164.0,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
    ]
    assert b.inferer == {
        "kind": "sliding_window",
        "inferer": "SlidingWindowInferer",
        "roi_size": [32, 32, 32],
        "overlap": 0.5,
        "sw_batch_size": 4,
        "mode": "gaussian",
        "sigma_scale": 0.125,
        "padding_mode": "constant",
        "cval": 0.0,
    }
    assert [s["op"] for s in b.postprocessing] == ["activation", "invert", "discretize"]
    assert b.postprocessing[0]["function"] == "softmax" and b.activation == "softmax"
    assert b.postprocessing[1]["nearest_interp"] is False  # probabilities are resampled back, then argmax
    assert b.postprocessing[2] == {"op": "discretize", "transform": "AsDiscreted", "argmax": True, "threshold": None}
    ignored = " ".join(i["what"] for i in b.ignored)
    for what in ("$import glob", "$import os", "LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "SaveImaged"):
        assert what in ignored
    prov = b.provenance
    assert prov["format"] == "monai" and prov["bundle_version"] == "0.1.0"
    assert prov["files_sha256"] == {
        rel: sha256(folder / rel) for rel in ("configs/inference.json", "configs/metadata.json", "models/model.pt")
    }
    assert b.name == "tiny_ct_bundle" and b.aliases == {}
    json.dumps(b.to_dict())  # plain data throughout


def test_manifest_fields_map_the_intensity_window_exactly(unet_bundle):
    _, b = unet_bundle
    fields = json.loads(json.dumps(b.to_manifest_fields()))
    assert fields["variant"] == fields["network"]["variant"] == "monai"
    assert fields["network"]["num_classes"] == 3 and fields["network"]["in_channels"] == 1
    pre = fields["preprocessing"]
    assert pre["orientation"] == "RAS" and pre["target_spacing"] == [1.5, 1.5, 2.0]
    assert pre["kind"] == "monai" and pre["monai"]["steps"] == b.preprocessing
    assert fields["inference"]["monai"] == {"inferer": b.inferer, "postprocessing": b.postprocessing}
    assert fields["inference"]["patch_size"] == [32, 32, 32] and fields["inference"]["overlap"] == 0.5
    (ct,) = pre["normalization"]
    assert ct["scheme"] == "ct" and ct["clip"] == [-57.0, 164.0]
    hu = torch.linspace(-1200, 1500, 301)
    monai_window = (hu.clip(-57, 164) - -57) / (164 - -57) * (1 - 0) + 0
    torch.testing.assert_close((hu.clip(*ct["clip"]) - ct["mean"]) / ct["std"], monai_window)


def test_project_normalization_only_where_exact():
    z = {"op": "normalize_intensity", "subtrahend": None, "divisor": None, "nonzero": False, "channel_wise": True}
    minmax = {"op": "scale_intensity", "minv": 0.0, "maxv": 1.0, "factor": None, "channel_wise": False}
    assert project_normalization([]) == {"scheme": "none"}
    assert project_normalization([z]) == {"scheme": "zscore"}
    assert project_normalization([minmax, z]) == {"scheme": "zscore"}  # prostate_mri_anatomy: z-score cancels it
    assert project_normalization([minmax]) == {"scheme": "rescale01"}
    assert project_normalization([{**z, "nonzero": True}]) is None
    window = {"op": "scale_intensity_range", "a_min": 0.0, "a_max": 10.0, "b_min": 0.0, "b_max": 1.0, "clip": False}
    assert project_normalization([window]) is None  # no clip: not the project's ct scheme


# ---------------------------------------------------------------------------------------------- transforms and labels


@pytest.mark.parametrize(
    ("transform", "name"),
    [
        ({"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}, "CropForegroundd"),
        ({"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"}, "Lambdad"),
        ({"_target_": "scripts.my_transforms.ConcatImages", "keys": "image"}, "scripts.my_transforms.ConcatImages"),
    ],
)
def test_unsupported_transforms_are_refused_by_name(tmp_path, transform, name):
    config = config_with()
    config["preprocessing"]["transforms"].insert(3, transform)
    with pytest.raises(BundleError, match=f"uses '{name}'") as info:
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))
    assert "Spacing" in str(info.value)  # the message lists what is supported


def test_unsupported_argument_is_refused(tmp_path):
    config = config_with()
    config["preprocessing"]["transforms"][3]["diagonal"] = True
    with pytest.raises(BundleError, match="diagonal=True is not supported"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))


def test_transforms_on_other_keys_are_skipped(tmp_path):
    config = config_with()
    config["preprocessing"]["transforms"].append({"_target_": "CropForegroundd", "keys": "label", "source_key": "x"})
    b = read_bundle(write_bundle(tmp_path / "b", config=config))
    assert any("CropForegroundd" in i["what"] and "does not touch" in i["why"] for i in b.ignored)


def test_references_and_key_expressions_as_the_template_writes_them(tmp_path):
    """The model zoo's segmentation_template: keys through ``$monai.utils.CommonKeys``, the transform list
    through ``$@transforms``, numbers through references and arithmetic."""
    config = config_with(
        image="$monai.utils.CommonKeys.IMAGE",
        pred="$monai.utils.CommonKeys.PRED",
        num_classes=3,
        patch=16,
        transforms=[
            {"_target_": "LoadImaged", "keys": "@image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "@image"},
            {"_target_": "ScaleIntensityd", "keys": "@image"},
            {"_target_": "NormalizeIntensityd", "keys": "@image", "nonzero": "$1 > 2", "channel_wise": True},
        ],
        preprocessing={"_target_": "Compose", "transforms": "$@transforms"},
        inferer={"_target_": "SlidingWindowInferer", "roi_size": "$[@patch * 2] * 3", "sw_batch_size": 1},
        postprocessing={
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "@pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "@pred", "argmax": True},
                {"_target_": "KeepLargestConnectedComponentd", "keys": "@pred", "applied_labels": [1, 2]},
            ],
        },
        network_def={**NETWORK_DEFS["unet"], "out_channels": "@num_classes", "channels": "$[4, 8, @patch]"},
    )
    b = read_bundle(write_bundle(tmp_path / "b", config=config, weights_for=NETWORK_DEFS["unet"]))
    assert b.network_args["out_channels"] == 3 and b.network_args["channels"] == [4, 8, 16]
    assert [s["op"] for s in b.preprocessing] == ["scale_intensity", "normalize_intensity"]
    assert b.preprocessing[1]["nonzero"] is False and b.preprocessing[1]["channel_wise"] is True
    assert b.inferer["roi_size"] == [32, 32, 32] and b.inferer["overlap"] == 0.25 and b.inferer["mode"] == "constant"
    assert b.postprocessing[-1]["op"] == "keep_largest_component" and b.postprocessing[-1]["applied_labels"] == [1, 2]
    assert b.to_manifest_fields()["preprocessing"]["normalization"] == [{"scheme": "zscore"}]


def test_metadata_that_disagrees_with_the_network_is_refused(tmp_path):
    meta = metadata()
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    with pytest.raises(BundleError, match="1 input channel"):
        read_bundle(write_bundle(tmp_path / "b", meta=meta))


def test_postprocessing_without_labels_is_refused(tmp_path):
    config = config_with()
    del config["postprocessing"]["transforms"][2]  # no AsDiscreted: scores, not labels
    with pytest.raises(BundleError, match="no AsDiscrete"):
        read_bundle(write_bundle(tmp_path / "b", config=config))


def test_sigmoid_bundle_labels_every_channel(tmp_path):
    config = config_with()
    post = config["postprocessing"]["transforms"]
    post[0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
    post[2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
    meta = metadata()
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "TC", "1": "WT", "2": "ET"}
    b = read_bundle(write_bundle(tmp_path / "b", config=config, meta=meta))
    assert b.activation == "sigmoid" and b.postprocessing[-1]["threshold"] == 0.5
    assert [(lab["value"], lab["name"]) for lab in b.labels] == [(1, "TC"), (2, "WT"), (3, "ET")]
    assert b.to_manifest_fields()["network"]["num_classes"] == 4


def test_2d_network_over_slices(tmp_path):
    """ventricular_short_axis_3label's form: a 2D UNet run slice by slice by MONAI's SliceInferer."""
    net = {**NETWORK_DEFS["unet"], "spatial_dims": 2}
    config = config_with(network_def=net, inferer={"_target_": "SliceInferer", "roi_size": [64, 64], "spatial_dim": 2})
    b = read_bundle(write_bundle(tmp_path / "b", config=config))
    assert b.spatial_dims == 2 and b.inferer["kind"] == "slices" and b.inferer["spatial_dim"] == 2
    assert b.inferer["roi_size"] == [64, 64] and b.inferer["overlap"] == 0.25
    fields = b.to_manifest_fields()
    assert fields["preprocessing"]["slice_wise"] is True and fields["inference"]["patch_size"] == [64, 64]


def _monai_pipeline_from_description(b: MonaiBundle, image_path: Path):
    """MONAI's transforms and sliding window driven by the description alone (not by the bundle's config)."""
    from monai import transforms as mt
    from monai.inferers import sliding_window_inference

    steps = [mt.LoadImaged("image"), mt.EnsureChannelFirstd("image")]
    for s in b.preprocessing:
        args = {k: v for k, v in s.items() if k not in ("op", "transform")}
        make = {
            "orientation": mt.Orientationd,
            "spacing": mt.Spacingd,
            "scale_intensity_range": mt.ScaleIntensityRanged,
        }
        steps.append(make[s["op"]]("image", **args))
    pre = mt.Compose(steps)
    data = pre({"image": str(image_path)})
    inf = b.inferer
    with torch.no_grad():
        logits = sliding_window_inference(
            data["image"][None],
            inf["roi_size"],
            inf["sw_batch_size"],
            b.build(),
            overlap=inf["overlap"],
            mode=inf["mode"],
            sigma_scale=inf["sigma_scale"],
        )
    data["pred"] = logits[0]
    for s in b.postprocessing:
        if s["op"] == "activation":
            data = mt.Activationsd("pred", softmax=s["function"] == "softmax", sigmoid=s["function"] == "sigmoid")(data)
        elif s["op"] == "invert":
            data = mt.Invertd("pred", transform=pre, orig_keys="image", nearest_interp=s["nearest_interp"])(data)
        elif s["op"] == "discretize":
            data = mt.AsDiscreted("pred", argmax=s["argmax"], threshold=s["threshold"])(data)
    return data["pred"][0].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("network", ["unet", "dynunet"])
def test_description_reproduces_monai_bundle_run(tmp_path, network):
    """The parity reference: `python -m monai.bundle run` on the bundle writes
    reference/<case>/<case>_trans.nii.gz; the description alone gives the same labels, voxel for voxel."""
    for module in ("fire", "ignite", "nibabel"):
        pytest.importorskip(module, reason="`python -m monai.bundle run` needs fire, pytorch-ignite and nibabel")
    import subprocess

    import nibabel as nib

    bundle = write_bundle(tmp_path / "bundle", network)
    image = write_ct_phantom(tmp_path / "data" / "imagesTs" / "case_0000.nii.gz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        reference_command(bundle, tmp_path / "data", tmp_path / "reference"), check=True, env=env, capture_output=True
    )
    written = sorted(p.relative_to(tmp_path / "reference").as_posix() for p in (tmp_path / "reference").rglob("*.*"))
    assert written == ["case_0000/case_0000_trans.nii.gz"]
    reference = nib.load(tmp_path / "reference" / "case_0000" / "case_0000_trans.nii.gz")
    ours = _monai_pipeline_from_description(read_bundle(bundle), image)
    assert ours.shape == reference.shape == (48, 40, 24)
    assert (ours == reference.get_fdata()).all()
