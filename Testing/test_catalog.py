"""The model catalog: bundled + user folders, filters, lookup, and a safe import that copies nothing invalid."""

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny_models import tiny_manifest, tiny_state_dict, write_tiny_package

from unetseg.cli import main
from unetseg.jobs.runner import EXIT_FAILED
from unetseg.models import archive as archive_module
from unetseg.models import catalog as catalog_module
from unetseg.models.catalog import Catalog, normalize_modality, user_data_dir, user_models_dir
from unetseg.models.manifest import ManifestError, PackageError, WeightsError
from unetseg.models.package import save_package

MR_NETWORK = {
    "variant": "nnunet",
    "spatial_dims": 2,
    "in_channels": 2,
    "num_classes": 2,
    "filters": [4, 8, 16],
    "kernel_size": [3, 3, 3],
    "strides": [1, 2, 2],
}


def _mr_overrides() -> dict:
    return {
        "modality": "MR",
        "variant": "nnunet",
        "network": MR_NETWORK,
        "inputs": [{"name": "T1"}, {"name": "FLAIR"}],
        "labels": [{"value": 1, "name": "lesion", "color": [1, 1, 0]}],
        "preprocessing": {"normalization": [{"scheme": "zscore"}, {"scheme": "zscore"}]},
    }


def _zip(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")
    return zip_path


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    bundled, user = tmp_path / "bundled", tmp_path / "user"
    write_tiny_package(bundled / "tiny-ct", "tiny-ct")
    write_tiny_package(bundled / "brain-mr", "brain-mr", **_mr_overrides())
    write_tiny_package(user / "chest-xr", "chest-xr", modality="XR")
    return bundled, user


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------------------- listing


def test_models_come_from_both_folders_sorted_and_filtered(dirs):
    cat = Catalog(*dirs)
    assert cat.names() == ["brain-mr", "chest-xr", "tiny-ct"]
    assert cat.names(modality="MRI") == ["brain-mr"]
    assert cat.names(modality="x-ray") == ["chest-xr"]
    assert cat.names(variant="UNet") == ["chest-xr", "tiny-ct"]
    assert cat.names(modality="CT", variant="nnunet") == []
    assert [m.input_names for m in cat.models(modality="MR")] == [["T1", "FLAIR"]]


def test_a_user_model_takes_the_place_of_a_bundled_one_with_its_name(dirs):
    bundled, user = dirs
    write_tiny_package(user / "my-copy", "tiny-ct", version="9.0")
    cat = Catalog(bundled, user)
    assert cat.names().count("tiny-ct") == 1
    assert cat.get("tiny-ct").version == "9.0"


def test_a_broken_model_folder_is_skipped_and_reported(dirs, caplog):
    bundled, user = dirs
    (user / "broken").mkdir()
    (user / "broken" / "model.json").write_text('{"format": "unetseg-model/1"}')
    (user / "notes").mkdir()  # a folder without model.json is not a model and not a problem
    with caplog.at_level(logging.WARNING):
        names = Catalog(bundled, user).names()
    assert names == ["brain-mr", "chest-xr", "tiny-ct"]
    cat = Catalog(bundled, user)
    cat.models()
    assert len(cat.problems) == 1 and "broken" in cat.problems[0] and "'name' is a required" in cat.problems[0]
    assert "broken" in caplog.text


def test_missing_folders_give_an_empty_catalog(tmp_path):
    cat = Catalog(tmp_path / "none", tmp_path / "neither")
    assert cat.models() == []
    assert "No models for CT" in cat.listing(modality="CT")


def test_listing_shows_models_and_details(dirs):
    cat = Catalog(*dirs)
    short = cat.listing()
    assert "tiny-ct  [CT, unet, 2D]  spleen, liver" in short
    assert str(dirs[1]) in short
    detailed = cat.listing(modality="MR", details=True)
    assert "inputs: T1, FLAIR" in detailed and "1=lesion" in detailed and "tiny-ct" not in detailed


# ------------------------------------------------------------------------------------------- lookup


def test_get_by_name_or_path_and_unknown_names_list_what_exists(dirs, tmp_path):
    cat = Catalog(*dirs)
    assert cat.get("brain-mr").modality == "MR"
    elsewhere = write_tiny_package(tmp_path / "elsewhere", "loose-model")
    assert cat.get(str(elsewhere.path)).name == "loose-model"
    assert cat.get(elsewhere.path / "model.json").name == "loose-model"
    with pytest.raises(ValueError, match=r"No model named 'nope'.*brain-mr, chest-xr, tiny-ct"):
        cat.get("nope")


def test_modality_names_and_dicom_codes():
    assert [normalize_modality(m) for m in ("ct", "MR", "MRI", "XR", "X-ray", "CR", "DX")] == [
        "CT",
        "MR",
        "MR",
        "XR",
        "XR",
        "XR",
        "XR",
    ]
    with pytest.raises(ValueError, match="Unknown modality 'PET'"):
        normalize_modality("PET")


def test_user_folder_follows_the_environment_and_the_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("UNETSEG_MODELS_DIR", str(tmp_path / "mine"))
    assert user_models_dir() == tmp_path / "mine"
    assert Catalog().user_dir == tmp_path / "mine"
    monkeypatch.delenv("UNETSEG_MODELS_DIR")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(catalog_module.sys, "platform", "linux")
    assert user_models_dir() == tmp_path / "home/.local/share/UNetSegmentation/models"
    monkeypatch.setattr(catalog_module.sys, "platform", "darwin")
    assert user_data_dir() == tmp_path / "home/Library/Application Support/UNetSegmentation"
    monkeypatch.setattr(catalog_module.sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    assert user_data_dir() == tmp_path / "roaming/UNetSegmentation"


def test_bundled_models_are_found_next_to_the_package():
    bundled = catalog_module.bundled_models_dir()
    assert bundled.parts[-3:] == ("UNetSegmentation", "Resources", "Models")
    assert (bundled.parents[1] / "unetseg" / "models" / "catalog.py").is_file()
    assert Catalog().bundled_dir == bundled


# ------------------------------------------------------------------------------------------- import


def test_importing_a_zip_adds_the_model_and_a_clash_needs_replace(dirs, tmp_path):
    bundled, user = dirs
    cat = Catalog(bundled, user)
    zip_path = _zip(write_tiny_package(tmp_path / "src" / "new-ct", "new-ct").path, tmp_path / "new.zip")
    assert cat.import_model(zip_path) == "new-ct"
    assert "new-ct" in cat.names(modality="CT")
    assert cat.get("new-ct").path == (user / "new-ct").resolve()

    with pytest.raises(PackageError, match=r"already in the catalog.*replace"):
        cat.import_model(zip_path)
    newer = _zip(write_tiny_package(tmp_path / "src2" / "new-ct", "new-ct", version="2.0").path, tmp_path / "v2.zip")
    assert cat.import_model(newer, replace=True) == "new-ct"
    assert cat.get("new-ct").version == "2.0"
    assert not [p for p in user.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_importing_a_folder_copies_it(dirs, tmp_path):
    cat = Catalog(*dirs)
    src = write_tiny_package(tmp_path / "somewhere", "folder-model")
    assert cat.import_model(src.path) == "folder-model"
    imported = cat.get("folder-model")
    assert imported.path != src.path and imported.weights_path.read_bytes() == src.weights_path.read_bytes()


def test_importing_a_training_folder_leaves_its_checkpoints_behind(dirs, tmp_path):
    cat = Catalog(*dirs)
    src = write_tiny_package(tmp_path / "run", "trained-model")
    (src.path / "checkpoints").mkdir()
    (src.path / "checkpoints" / "last.pt").write_bytes(b"optimizer state")
    cat.import_model(src.path)
    assert not (cat.get("trained-model").path / "checkpoints").exists()


def test_a_bundled_name_is_a_clash_too(dirs, tmp_path):
    cat = Catalog(*dirs)
    src = write_tiny_package(tmp_path / "x", "tiny-ct")
    with pytest.raises(PackageError, match="'tiny-ct' is already in the catalog"):
        cat.import_model(src.path)


def test_an_invalid_manifest_is_refused_before_anything_is_copied(dirs, tmp_path, monkeypatch):
    bundled, user = dirs
    src = write_tiny_package(tmp_path / "src" / "bad", "bad")
    (src.path / "model.json").write_text(json.dumps(tiny_manifest("bad", modality="PET")))
    zip_path = _zip(src.path, tmp_path / "bad.zip")
    before = _listing(user)

    def no_copy(*args):
        raise AssertionError("copied before validation")

    monkeypatch.setattr(catalog_module.shutil, "copytree", no_copy)  # shutil is one module: both are patched
    monkeypatch.setattr(archive_module.shutil, "copyfileobj", no_copy)
    for path in (src.path, zip_path):
        with pytest.raises(ManifestError, match=r"\$\.modality"):
            Catalog(bundled, user).import_model(path)
        assert _listing(user) == before


def test_a_zip_escaping_the_target_or_too_large_is_refused(dirs, tmp_path):
    bundled, user = dirs
    zip_path = _zip(write_tiny_package(tmp_path / "src" / "evil", "evil").path, tmp_path / "evil.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr("evil/../../escaped.txt", "gotcha")
    before = _listing(user)
    with pytest.raises(PackageError, match="escapes the target"):
        Catalog(bundled, user).import_model(zip_path)
    assert _listing(user) == before
    assert not list(tmp_path.rglob("escaped.txt"))

    ok = _zip(write_tiny_package(tmp_path / "src" / "big", "big").path, tmp_path / "big.zip")
    with pytest.raises(PackageError, match="cap"):
        Catalog(bundled, user).import_model(ok, max_bytes=1000)
    assert _listing(user) == before


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_folder_with_symlinks_or_without_weights_is_refused(dirs, tmp_path):
    bundled, user = dirs
    src = write_tiny_package(tmp_path / "linked", "linked")
    (src.path / "secret").symlink_to("/etc/hostname")
    with pytest.raises(PackageError, match="symbolic links"):
        Catalog(bundled, user).import_model(src.path)
    (src.path / "secret").unlink()
    src.weights_path.unlink()
    with pytest.raises(WeightsError, match=r"weights\.safetensors"):
        Catalog(bundled, user).import_model(src.path)
    assert "linked" not in Catalog(bundled, user).names()


# ------------------------------------------------------------------------------------------- CLI


def test_cli_lists_and_imports(dirs, tmp_path, monkeypatch, capsys):
    _, user = dirs
    monkeypatch.setenv("UNETSEG_MODELS_DIR", str(user))
    zip_path = _zip(write_tiny_package(tmp_path / "src" / "cli-xr", "cli-xr", modality="XR").path, tmp_path / "c.zip")
    assert main(["models", "import", str(zip_path)]) == 0
    assert "Imported model cli-xr" in capsys.readouterr().out
    assert main(["models", "--modality", "xr"]) == 0
    out = capsys.readouterr().out
    assert "cli-xr  [XR, unet, 2D]" in out and "chest-xr" in out and "tiny-ct" not in out
    assert main(["models", "import", str(zip_path)]) == EXIT_FAILED
    assert "already in the catalog" in capsys.readouterr().err
    assert main(["models", "import", "--replace", str(zip_path)]) == 0


def test_listing_models_does_not_load_torch(dirs):
    """The Slicer panel lists models in its GUI process, where torch may not even be installed."""
    code = (
        "import sys; from unetseg.models.catalog import Catalog; "
        f"assert len(Catalog({str(dirs[0])!r}, {str(dirs[1])!r}).models()) == 3; "
        "print(sorted(m for m in ('torch', 'monai', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=True
    ).stdout
    assert out.strip() == "[]"


def test_import_refuses_weights_that_do_not_fit_the_manifest_and_leaves_the_catalog_unchanged(tmp_path):
    manifest = tiny_manifest("four-classes")
    manifest["network"]["num_classes"] = 4  # the weights were trained with 3
    manifest["labels"].append({"value": 3, "name": "kidney", "color": [0.1, 0.2, 0.3]})
    source = tmp_path / "source"
    save_package(source, manifest, tiny_state_dict())
    catalog = Catalog(bundled_dir=tmp_path / "none", user_dir=tmp_path / "user")
    with pytest.raises(WeightsError, match=r"do not fit the network.*shape mismatch"):
        catalog.import_model(source)
    assert catalog.names() == [] and list((tmp_path / "user").iterdir()) == []


def test_a_manifest_naming_an_unknown_network_is_refused(tmp_path):
    manifest = tiny_manifest("mystery", variant="transunet")
    manifest["network"]["variant"] = "transunet"
    with pytest.raises(ManifestError, match=r"\$\.network\.variant.*'transunet', not a network this version can build"):
        save_package(tmp_path / "m", manifest, tiny_state_dict())
