"""Model packages: manifest validation with JSON paths, safe weight loading, save/load round trips, zips."""

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_models import TINY_NETWORK, tiny_manifest, tiny_state_dict, write_tiny_package

from unetseg.image import Label
from unetseg.models import archive
from unetseg.models.manifest import (
    DEFAULT_INFERENCE,
    ManifestError,
    PackageError,
    WeightsError,
    manifest_schema,
    validate_manifest,
)
from unetseg.models.package import load_package, save_package
from unetseg.models.weights import build_model, load_state_dict
from unetseg.networks.factory import build_network


def _problems(manifest: dict) -> list[str]:
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest)
    assert isinstance(info.value, ValueError)
    return info.value.problems


def _zip_folder(folder: Path, zip_path: Path, top: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, top + f.name)
    return zip_path


# ------------------------------------------------------------------------------------------- manifest


def test_a_valid_manifest_passes_and_the_shipped_schema_is_draft_07():
    import jsonschema

    jsonschema.Draft7Validator.check_schema(manifest_schema())
    manifest = tiny_manifest()
    assert validate_manifest(manifest) is manifest


def test_every_schema_problem_is_listed_with_its_json_path():
    manifest = tiny_manifest(modality="US", format="unetseg-model/9")
    del manifest["name"]
    manifest["labels"][1]["color"] = [0.5, 1.5, 0.0]
    manifest["preprocessing"]["normalization"][0] = {"scheme": "ct"}
    problems = _problems(manifest)
    assert any(p.startswith("$: 'name' is a required property") for p in problems)
    assert any(p.startswith("$.modality:") for p in problems)
    assert any(p.startswith("$.format:") for p in problems)
    assert any(p.startswith("$.labels[1].color[1]:") for p in problems)
    assert any(p.startswith("$.preprocessing.normalization[0]:") and "'mean'" in p for p in problems)
    assert len(problems) >= 6  # 'std' is missing too


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda m: m["network"].update(in_channels=2), "$.network.in_channels"),
        (lambda m: m["network"].update(spatial_dims=3), "$.network.spatial_dims"),
        (lambda m: m.update(variant="vnet"), "$.network.variant"),
        (lambda m: m["labels"].pop(), "$.labels"),
        (lambda m: m["labels"][1].update(value=1), "$.labels"),
        (lambda m: m["inputs"].append({"name": "T1"}), "$.network.in_channels"),
        (lambda m: m["preprocessing"]["normalization"].append({"scheme": "zscore"}), "$.preprocessing.normalization"),
        (lambda m: m["inference"].update(patch_size=[32, 32, 32]), "$.inference.patch_size"),
        (lambda m: m["inference"].update(mirror_axes=[2]), "$.inference.mirror_axes"),
        (lambda m: m["preprocessing"].update(hu_clip=[300, -200]), "$.preprocessing.hu_clip"),
        (lambda m: m["preprocessing"].update(hu_clip=None), "$.preprocessing.normalization[0]"),
    ],
)
def test_rules_across_fields_are_checked(change, path):
    manifest = tiny_manifest()
    change(manifest)
    assert any(p.startswith(path + ":") for p in _problems(manifest))


def test_names_and_weights_files_cannot_be_paths():
    problems = _problems(tiny_manifest(name="../evil", weights="../../etc/passwd.pt"))
    assert any(p.startswith("$.name:") for p in problems)
    assert any(p.startswith("$.weights:") for p in problems)


def test_malformed_terminology_is_refused():
    manifest = tiny_manifest()
    manifest["labels"][0]["terminology"] = "spleen"
    assert any(p.startswith("$.labels[0].terminology:") for p in _problems(manifest))


def test_corrupt_json_and_missing_manifest_are_clear_errors(tmp_path):
    with pytest.raises(PackageError, match=r"No model\.json"):
        load_package(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_package(tmp_path)
    with pytest.raises(PackageError, match="No model at"):
        load_package(tmp_path / "absent")


# ------------------------------------------------------------------------------------------- round trip


def test_save_then_load_gives_the_same_manifest_weights_and_outputs(tmp_path):
    torch.manual_seed(0)
    network = build_network(TINY_NETWORK).eval()
    manifest = tiny_manifest(inference={"patch_size": (32, 32)})  # tuples are fine
    pkg = save_package(tmp_path / "tiny", manifest, network.state_dict())

    assert (pkg.name, pkg.modality, pkg.variant, pkg.spatial_dims) == ("tiny-ct", "CT", "unet", 2)
    assert pkg.input_names == ["CT"]
    assert pkg.labels[0] == Label(1, "spleen", (0.6, 0.2, 0.2), tiny_manifest()["labels"][0]["terminology"])
    assert [label.value for label in pkg.labels] == [1, 2]
    assert pkg.network_config == TINY_NETWORK
    assert pkg.inference == {**DEFAULT_INFERENCE, "patch_size": [32, 32]}
    assert pkg.preprocessing["slice_wise"] is True and pkg.preprocessing["crop"] == "body"
    assert pkg.weights_path == tmp_path / "tiny" / "weights.safetensors"
    assert pkg.manifest["format"] == "unetseg-model/1"
    assert "spleen" in pkg.summary() and "phantoms" in pkg.describe()

    pkg.network_config["num_classes"] = 99  # properties hand out copies
    assert pkg.network_config["num_classes"] == 3

    state = load_state_dict(pkg)
    assert state.keys() == network.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
    rebuilt = build_model(pkg)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), network(x))
    assert not rebuilt.training


def test_half_storage_is_half_on_disk_and_float32_when_loaded(tmp_path):
    state = tiny_state_dict()
    full = save_package(tmp_path / "full", tiny_manifest(), state)
    half = save_package(tmp_path / "half", tiny_manifest(), state, half=True)
    assert half.weights_path.stat().st_size < 0.6 * full.weights_path.stat().st_size
    with safe_open(half.weights_path, "pt") as f:
        key = next(k for k in sorted(f.keys()) if k.endswith("weight"))
        assert f.get_tensor(key).dtype == torch.float16
    loaded = load_state_dict(half)
    assert loaded[key].dtype == torch.float32
    assert torch.allclose(loaded[key], state[key], atol=1e-3)


def test_saving_replaces_an_existing_package_and_keeps_other_files(tmp_path):
    write_tiny_package(tmp_path, seed=0)
    (tmp_path / "training.log").write_text("epoch 1")
    pkg = write_tiny_package(tmp_path, seed=1, version="2.0.0")
    assert pkg.version == "2.0.0"
    loaded = load_state_dict(pkg)
    assert all(torch.equal(loaded[k], v) for k, v in tiny_state_dict(seed=1).items())
    assert (tmp_path / "training.log").read_text(encoding="utf-8") == "epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "training.log", "weights.safetensors"]


def test_saving_an_invalid_manifest_writes_nothing(tmp_path):
    with pytest.raises(ManifestError):
        save_package(tmp_path / "bad", tiny_manifest(modality="PET"), tiny_state_dict())
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------- weights


def test_missing_weights_are_a_clear_error(tmp_path):
    pkg = write_tiny_package(tmp_path)
    pkg.weights_path.unlink()
    with pytest.raises(WeightsError, match=r"weights\.safetensors is missing"):
        load_state_dict(pkg)


def test_corrupt_safetensors_are_a_clear_error(tmp_path):
    pkg = write_tiny_package(tmp_path)
    pkg.weights_path.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_state_dict(pkg)


@pytest.mark.parametrize("wrap", ["plain", "checkpoint", "ddp"])
def test_torch_state_dicts_load_with_weights_only(tmp_path, wrap):
    state = tiny_state_dict()
    saved = {
        "plain": state,
        "checkpoint": {"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.01}},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    (tmp_path / "model.json").write_text(json.dumps(tiny_manifest(weights="weights.pt")))
    torch.save(saved, tmp_path / "weights.pt")
    pkg = load_package(tmp_path)
    loaded = load_state_dict(pkg)
    assert loaded.keys() == state.keys()
    assert build_model(pkg) is not None


class _Payload:
    """Unpickling this runs code (it touches a marker file): exactly what weights_only must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-was-run"
    (tmp_path / "model.json").write_text(json.dumps(tiny_manifest(weights="weights.pth")))
    with open(tmp_path / "weights.pth", "wb") as f:
        torch.save({"state_dict": tiny_state_dict(), "extra": _Payload(marker)}, f)
    pkg = load_package(tmp_path)
    with pytest.raises(WeightsError, match="execute code"):
        load_state_dict(pkg)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(_Payload(marker))) is None and marker.exists()  # the payload is real


def test_weights_that_do_not_fit_the_network_list_the_mismatches(tmp_path):
    other = {**TINY_NETWORK, "features": [8, 8, 16, 16, 32]}
    pkg = save_package(tmp_path, tiny_manifest(), tiny_state_dict(other))
    with pytest.raises(WeightsError, match=r"do not fit the network.*shape mismatch.*vs") as info:
        build_model(pkg)
    assert "(8," in str(info.value) and "(4," in str(info.value)

    state = tiny_state_dict()
    first = next(iter(state))
    state[f"{first}_renamed"] = state.pop(first)
    pkg = save_package(tmp_path, tiny_manifest(), state)
    with pytest.raises(WeightsError, match=r"1 missing key\(s\).*1 unexpected key\(s\)"):
        build_model(pkg)


# ------------------------------------------------------------------------------------------- zips


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setattr(archive, "zip_cache_dir", lambda: folder)
    return folder


@pytest.mark.parametrize("top", ["", "tiny-ct/"])
def test_a_zipped_package_loads_from_a_reused_cache_folder(tmp_path, cache, top):
    src = write_tiny_package(tmp_path / "src")
    zip_path = _zip_folder(src.path, tmp_path / "tiny.zip", top)
    pkg = load_package(zip_path)
    assert pkg.path.is_relative_to(cache)
    assert pkg.name == "tiny-ct" and build_model(pkg) is not None
    assert load_package(zip_path).path == pkg.path
    assert [p.name for p in cache.iterdir()] == [pkg.path.name]  # no staging folder left behind


def _zip_with(tmp_path: Path, extra: dict[str, bytes], symlink: str | None = None) -> Path:
    src = write_tiny_package(tmp_path / "src")
    zip_path = _zip_folder(src.path, tmp_path / "bad.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        for name, data in extra.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return zip_path


@pytest.mark.parametrize(
    ("extra", "symlink", "message"),
    [
        ({"../escape.txt": b"x"}, None, "escapes the target"),
        ({"/abs.txt": b"x"}, None, "absolute path"),
        ({"C:/windows.txt": b"x"}, None, "absolute path"),
        ({}, "link", "symbolic link"),
    ],
)
def test_unsafe_zips_are_refused_before_extraction(tmp_path, cache, extra, symlink, message):
    zip_path = _zip_with(tmp_path, extra, symlink)
    with pytest.raises(PackageError, match=message):
        load_package(zip_path)
    assert not (tmp_path / "escape.txt").exists()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_zip_size_cap_and_layout_errors(tmp_path):
    src = write_tiny_package(tmp_path / "src")
    zip_path = _zip_folder(src.path, tmp_path / "tiny.zip")
    with pytest.raises(PackageError, match=r"above the .* cap"):
        archive.extract_zip(zip_path, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        for top in ("a/", "b/"):
            zf.write(src.path / "model.json", top + "model.json")
    with pytest.raises(PackageError, match="several models"):
        archive.extract_zip(two, tmp_path / "out")

    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(PackageError, match=r"no model\.json"):
        archive.extract_zip(empty, tmp_path / "out")

    not_a_zip = tmp_path / "fake.zip"
    not_a_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PackageError, match="not a readable zip"):
        archive.extract_zip(not_a_zip, tmp_path / "out")

    no_weights = tmp_path / "no-weights.zip"
    with zipfile.ZipFile(no_weights, "w") as zf:
        zf.write(src.path / "model.json", "model.json")
    with pytest.raises(WeightsError, match="lacks the weights"):
        archive.extract_zip(no_weights, tmp_path / "out")


def _damaged(zip_path: Path, damage: str) -> Path:
    """The zip with its headers disagreeing with its contents: a flipped data byte or a renamed local header."""
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("weights.safetensors")
    name_at = info.header_offset + 30  # the local header's file name
    if damage == "crc":
        data[name_at + len(info.filename) + len(info.extra) + 100] ^= 0xFF
    else:
        data[name_at : name_at + 7] = b"WEIGHTS"
    damaged = zip_path.with_name(f"{damage}.zip")
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize("damage", ["crc", "header name"])
def test_a_zip_whose_headers_disagree_with_its_data_is_a_clear_error(damage, tmp_path, cache):
    src = write_tiny_package(tmp_path / "src")
    damaged = _damaged(_zip_folder(src.path, tmp_path / "tiny.zip"), damage)
    with pytest.raises(PackageError, match="damaged or not a readable zip"):
        archive.extract_zip(damaged, tmp_path / "out")
    with pytest.raises(PackageError, match="damaged or not a readable zip"):
        load_package(damaged)



def test_unchanged_weights_are_read_once_and_a_changed_file_again(tmp_path, monkeypatch):
    from unetseg.models import weights

    package = write_tiny_package(tmp_path / "m")
    reads = []
    real = weights._read_state_dict
    monkeypatch.setattr(weights, "_read_state_dict", lambda path: reads.append(path) or real(path))
    first, second = weights.load_state_dict(package), weights.load_state_dict(package)
    assert len(reads) == 1 and first is not second and first.keys() == second.keys()
    write_tiny_package(tmp_path / "m", seed=1)  # new weights in the same file
    changed = weights.load_state_dict(package)
    assert len(reads) == 2
    assert any(not torch.equal(changed[k], first[k]) for k in first)
