"""MONAI bundles: what is read from a bundle, the network allow-list, expressions, transforms, weights and zips.

The bundles are tiny versions of the model zoo's spleen_ct_segmentation (benchmarks/make_monai_bundle_fixture.py):
its inference.json with imports, ``$`` expressions, Orientationd/Spacingd/ScaleIntensityRanged, a
SlidingWindowInferer and softmax → Invertd → argmax → SaveImaged.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from unetseg.models.formats import FormatError
from unetseg.models.formats.monai_bundle import MonaiBundle, project_normalization, read_bundle
from unetseg.models.formats.monai_config import check_expression
from unetseg.models.formats.monai_files import BundleError
from unetseg.models.formats.monai_weights import NETWORKS, build_network, dedupe_state_dict, restore_aliases

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from make_monai_bundle_fixture import (  # noqa: E402
    NETWORK_DEFS,
    inference_config,
    metadata,
    reference_command,
    write_bundle,
    write_ct_phantom,
)

torch.set_num_threads(1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_output(bundle: MonaiBundle, folder: Path) -> None:
    """The imported network (rebuilt from the JSON description) computes what the bundle's own network does."""
    from monai.networks import nets

    config = json.loads((folder / "configs" / "inference.json").read_text(encoding="utf-8"))
    args = {k: v for k, v in config["network_def"].items() if not k.startswith("_")}
    reference = getattr(nets, config["network_def"]["_target_"])(**args)
    reference.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    described = json.loads(json.dumps(bundle.to_dict()))  # what a manifest keeps
    rebuilt = build_network(described["network_target"], described["network_args"])
    rebuilt.load_state_dict(restore_aliases(bundle.state_dict, described["aliases"]), strict=True)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))  # BasicUNet pools 4 times
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), reference.eval()(x))


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
        rel: _sha256(folder / rel) for rel in ("configs/inference.json", "configs/metadata.json", "models/model.pt")
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


def test_unet_network_loads_and_matches(unet_bundle):
    folder, b = unet_bundle
    _same_output(b, folder)


@pytest.mark.parametrize("network", ["basicunet", "attentionunet"])
def test_other_unet_family_networks(tmp_path, network):
    folder = write_bundle(tmp_path / network, network)
    b = read_bundle(folder)
    assert b.network_target == f"monai.networks.nets.{NETWORK_DEFS[network]['_target_']}"
    assert b.network_target in NETWORKS
    _same_output(b, folder)


def test_dynunet_aliases_are_stored_once_and_load(tmp_path):
    folder = write_bundle(tmp_path / "dyn", "dynunet")
    b = read_bundle(folder)
    saved = torch.load(folder / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("skip_layers.") for k in b.aliases)  # DynUNet lists its encoder twice
    assert len(b.state_dict) + len(b.aliases) == len(saved)
    assert set(b.aliases.values()) <= set(b.state_dict) and not set(b.aliases) & set(b.state_dict)
    storages = [t.untyped_storage().data_ptr() for t in b.state_dict.values() if t.numel()]
    assert len(storages) == len(set(storages)), "a tensor is stored twice"
    from safetensors.torch import load, save  # refuses shared tensors: the reason for the de-duplication

    with pytest.raises(RuntimeError):
        save(saved)
    reloaded = load(save(b.state_dict))
    network = build_network(b.network_target, b.network_args)
    network.load_state_dict(restore_aliases(reloaded, b.aliases), strict=True)
    b.state_dict = reloaded
    _same_output(b, folder)


def test_dedupe_refuses_copies_that_disagree():
    network = build_network("DynUNet", {k: v for k, v in NETWORK_DEFS["dynunet"].items() if k != "_target_"})
    state = {k: v.clone() for k, v in network.state_dict().items()}  # no storage sharing left
    unique, aliases = dedupe_state_dict(network, state)
    assert aliases and len(unique) + len(aliases) == len(state)
    alias, target = next(iter(aliases.items()))
    state[alias] = state[target] + 1
    with pytest.raises(BundleError, match="different values"):
        dedupe_state_dict(network, state)


def test_zip_reads_like_the_folder(tmp_path, unet_bundle):
    folder, b = unet_bundle
    archive = tmp_path / "tiny_ct_bundle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"tiny_ct_bundle/{path.relative_to(folder).as_posix()}")
    z = read_bundle(archive)
    assert z.provenance["files_sha256"] == b.provenance["files_sha256"]
    assert z.provenance["archive_sha256"] == _sha256(archive)
    assert z.name == b.name and z.preprocessing == b.preprocessing and z.labels == b.labels
    assert z.state_dict.keys() == b.state_dict.keys()


def _zip_with(tmp_path: Path, folder: Path, extra) -> Path:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
        extra(zf)
    return archive


def _symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("models/link.pt")
    info.external_attr = 0o120777 << 16
    zf.writestr(info, "/etc/passwd")


def _bomb(zf: zipfile.ZipFile) -> None:
    zf.writestr(zipfile.ZipInfo("docs/huge.bin"), b"\0" * (16 << 20), compress_type=zipfile.ZIP_BZIP2)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (lambda zf: zf.writestr("../evil.txt", "x"), r"\.\."),
        (lambda zf: zf.writestr("/abs/evil.txt", "x"), "absolute"),
        (_symlink, "symbolic link"),
        (_bomb, "zip bomb"),
    ],
    ids=["dotdot", "absolute", "symlink", "bomb"],
)
def test_unsafe_zips_are_refused(tmp_path, unet_bundle, extra, match):
    with pytest.raises(BundleError, match=match):
        read_bundle(_zip_with(tmp_path, unet_bundle[0], extra))


def test_zip_size_cap(tmp_path, unet_bundle):
    with pytest.raises(BundleError, match="cap"):
        read_bundle(_zip_with(tmp_path, unet_bundle[0], lambda zf: None), max_bytes=10_000)


def test_folder_file_linking_outside_is_refused(tmp_path, unet_bundle):
    folder = write_bundle(tmp_path / "b", weights=False)
    (folder / "models").mkdir()
    outside = tmp_path / "outside.pt"
    outside.write_bytes((unet_bundle[0] / "models" / "model.pt").read_bytes())
    os.symlink(outside, folder / "models" / "model.pt")
    with pytest.raises(BundleError, match="outside the bundle"):
        read_bundle(folder)


# ---------------------------------------------------------------------------------------------- code stays code


def _with(network: str = "unet", **changes) -> dict:
    config = inference_config(network)
    config.update(copy.deepcopy(changes))
    return config


def test_hostile_network_target_is_refused_without_being_called(tmp_path):
    marker = tmp_path / "pwned"
    config = _with(network_def={"_target_": "os.system", "command": f"touch {marker}"})
    folder = write_bundle(tmp_path / "b", config=config, weights=False)
    with pytest.raises(BundleError, match=r"'os\.system' is not one of the networks"):
        read_bundle(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    ["$__import__('os').system('touch {marker}')", "$open('{marker}', 'w')", "$[open('{marker}', 'w') for _ in [0]]"],
)
def test_hostile_expressions_are_refused_without_running(tmp_path, value):
    marker = tmp_path / "pwned"
    net = {**NETWORK_DEFS["unet"], "out_channels": value.format(marker=marker)}
    folder = write_bundle(tmp_path / "b", config=_with(network_def=net), weights=False)
    with pytest.raises(BundleError, match="Refusing the expression"):
        read_bundle(folder)
    assert not marker.exists()


def test_hostile_expression_behind_a_reference_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    config = _with(
        evil=f"$__import__('os').system('touch {marker}') or 3",
        network_def={**NETWORK_DEFS["unet"], "out_channels": "$@evil"},
    )
    with pytest.raises(BundleError, match="Refusing the expression"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))
    assert not marker.exists()


def test_nested_component_in_network_args_is_refused(tmp_path):
    net = {**NETWORK_DEFS["unet"], "act": {"_target_": "torch.nn.ReLU"}}
    with pytest.raises(BundleError, match="only plain values"):
        read_bundle(write_bundle(tmp_path / "b", config=_with(network_def=net), weights=False))


def test_imports_are_dropped_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_bundle_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = _with(imports=["$import evil_bundle_module", "$from evil_bundle_module import x"])
    b = read_bundle(write_bundle(tmp_path / "b", config=config))
    assert not marker.exists() and "evil_bundle_module" not in sys.modules
    assert sum("evil_bundle_module" in i["what"] for i in b.ignored) == 2


def test_hostile_transform_target_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    config = _with()
    config["preprocessing"]["transforms"].insert(
        2, {"_target_": "os.system", "keys": "image", "command": f"touch {marker}"}
    )
    with pytest.raises(BundleError, match=r"uses 'os.system' \(preprocessing::transforms::2\)"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))
    assert not marker.exists()


def test_file_macros_are_refused(tmp_path):
    config = _with(inferer="%/etc/monai_settings.json#inferer")
    with pytest.raises(BundleError, match="reads another file"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))


@pytest.mark.parametrize(
    ("transform", "name"),
    [
        ({"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}, "CropForegroundd"),
        ({"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"}, "Lambdad"),
        ({"_target_": "scripts.my_transforms.ConcatImages", "keys": "image"}, "scripts.my_transforms.ConcatImages"),
    ],
)
def test_unsupported_transforms_are_refused_by_name(tmp_path, transform, name):
    config = _with()
    config["preprocessing"]["transforms"].insert(3, transform)
    with pytest.raises(BundleError, match=f"uses '{name}'") as info:
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))
    assert "Spacing" in str(info.value)  # the message lists what is supported


def test_unsupported_argument_is_refused(tmp_path):
    config = _with()
    config["preprocessing"]["transforms"][3]["diagonal"] = True
    with pytest.raises(BundleError, match="diagonal=True is not supported"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))


def test_transforms_on_other_keys_are_skipped(tmp_path):
    config = _with()
    config["preprocessing"]["transforms"].append({"_target_": "CropForegroundd", "keys": "label", "source_key": "x"})
    b = read_bundle(write_bundle(tmp_path / "b", config=config))
    assert any("CropForegroundd" in i["what"] and "does not touch" in i["why"] for i in b.ignored)


def test_references_and_key_expressions_as_the_template_writes_them(tmp_path):
    """The model zoo's segmentation_template: keys through ``$monai.utils.CommonKeys``, the transform list
    through ``$@transforms``, numbers through references and arithmetic."""
    config = _with(
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


@pytest.mark.parametrize(
    "expression",
    [
        "$__local_refs['a'] + 1",
        "$len(__local_refs['labels']) + __local_refs['n']",
        "$monai.utils.CommonKeys.IMAGE",
        "$torch.float32",
        "$[__local_refs['p'] * 2] + [1]",
        "$None",
        "$'a' if 1 > 2 else 'b'",
    ],
)
def test_expression_check_allows_plain_data(expression):
    check_expression(expression, "x")


@pytest.mark.parametrize(
    "expression",
    [
        "$__import__('os')",
        "$__local_refs['a'].__class__",
        "$[x for x in __local_refs['a']]",
        "$lambda: 0",
        "$open('f')",
        "$9 ** 9 ** 9",
        "$[0] * 1000 * 1000 * 1000",
        "$[0] * 10000000",
        "$monai.bundle.ConfigParser",
        "$torch.load",
        "$getattr(__local_refs['a'], 'x')",
        "$len(*__local_refs['a'])",
        "$__local_refs['f']('x')",
        "$sum([[0]] * 1000, [])",
        "$max(__local_refs['a'], key=len)",
        "$import os",
    ],
)
def test_expression_check_refuses_code(expression):
    with pytest.raises(BundleError):
        check_expression(expression, "x")


# ---------------------------------------------------------------------------------------------- weights


def test_torchscript_only_bundle_is_refused_with_advice(tmp_path, unet_bundle):
    folder = write_bundle(tmp_path / "b", weights=False)
    (folder / "models").mkdir()
    (folder / "models" / "model.ts").write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(BundleError, match="TorchScript is code") as info:
        read_bundle(folder)
    assert "torch.jit.load('models/model.ts').state_dict()" in str(info.value)


def test_torchscript_beside_model_pt_is_not_loaded(tmp_path):
    folder = write_bundle(tmp_path / "b")
    (folder / "models" / "model.ts").write_bytes(b"never loaded")
    b = read_bundle(folder)
    assert b.provenance["not_loaded"] == {"models/model.ts": hashlib.sha256(b"never loaded").hexdigest()}


def test_torchscript_saved_as_model_pt_is_refused(tmp_path):
    from monai.networks.nets import UNet

    folder = write_bundle(tmp_path / "b", weights=False)
    (folder / "models").mkdir()
    scripted = torch.jit.script(UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch"))
    torch.jit.save(scripted, str(folder / "models" / "model.pt"))
    with pytest.raises(BundleError, match="TorchScript archive"):
        read_bundle(folder)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running(tmp_path, unet_bundle):
    marker = tmp_path / "pwned"
    folder = write_bundle(tmp_path / "b", weights=False)
    (folder / "models").mkdir()
    state = torch.load(unet_bundle[0] / "models" / "model.pt", weights_only=True)
    torch.save({"model": state, "extra": _Exploit(marker)}, folder / "models" / "model.pt")
    with pytest.raises(FormatError, match=r"Refusing models/model\.pt"):
        read_bundle(folder)
    assert not marker.exists()
    buffer = io.BytesIO()
    pickle.dump(_Exploit(marker), buffer)  # a plain (non-zip) pickle as well
    (folder / "models" / "model.pt").write_bytes(buffer.getvalue())
    with pytest.raises(FormatError):
        read_bundle(folder)
    assert not marker.exists()


def test_checkpoint_with_model_key_and_ddp_prefix(tmp_path, unet_bundle):
    folder = write_bundle(tmp_path / "b", weights=False)
    (folder / "models").mkdir()
    state = torch.load(unet_bundle[0] / "models" / "model.pt", weights_only=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, folder / "models" / "model.pt")
    b = read_bundle(folder)
    assert b.state_dict.keys() == state.keys()


def test_weights_that_do_not_fit_are_refused(tmp_path):
    folder = write_bundle(tmp_path / "b")
    config = _with(network_def={**NETWORK_DEFS["unet"], "channels": [4, 8, 32]})
    (folder / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError, match="does not fit"):
        read_bundle(folder)


def test_metadata_that_disagrees_with_the_network_is_refused(tmp_path):
    meta = metadata()
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    with pytest.raises(BundleError, match="1 input channel"):
        read_bundle(write_bundle(tmp_path / "b", meta=meta))


def test_postprocessing_without_labels_is_refused(tmp_path):
    config = _with()
    del config["postprocessing"]["transforms"][2]  # no AsDiscreted: scores, not labels
    with pytest.raises(BundleError, match="no AsDiscrete"):
        read_bundle(write_bundle(tmp_path / "b", config=config))


def test_sigmoid_bundle_labels_every_channel(tmp_path):
    config = _with()
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
    config = _with(network_def=net, inferer={"_target_": "SliceInferer", "roi_size": [64, 64], "spatial_dim": 2})
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
