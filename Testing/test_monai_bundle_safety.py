"""MONAI bundles from untrusted sources: zips and folders that reach outside, and config code that is never run.

Hostile network and transform targets, ``$`` expressions, imports and file macros are refused (or dropped) without
running them; the expression check lets plain data through only. The tiny bundles are written by monai_fakes.py.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest
from monai_fakes import NETWORK_DEFS, config_with, sha256, write_bundle

from unetseg.models.formats.monai_bundle import MonaiBundle, read_bundle
from unetseg.models.formats.monai_config import check_expression
from unetseg.models.formats.monai_files import BundleError

# ---------------------------------------------------------------------------------------------- zips and folders


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory) -> tuple[Path, MonaiBundle]:
    folder = write_bundle(tmp_path_factory.mktemp("unet") / "tiny_ct_bundle", "unet")
    return folder, read_bundle(folder)


def test_zip_reads_like_the_folder(tmp_path, unet_bundle):
    folder, b = unet_bundle
    archive = tmp_path / "tiny_ct_bundle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"tiny_ct_bundle/{path.relative_to(folder).as_posix()}")
    z = read_bundle(archive)
    assert z.provenance["files_sha256"] == b.provenance["files_sha256"]
    assert z.provenance["archive_sha256"] == sha256(archive)
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


def test_hostile_network_target_is_refused_without_being_called(tmp_path):
    marker = tmp_path / "pwned"
    config = config_with(network_def={"_target_": "os.system", "command": f"touch {marker}"})
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
    folder = write_bundle(tmp_path / "b", config=config_with(network_def=net), weights=False)
    with pytest.raises(BundleError, match="Refusing the expression"):
        read_bundle(folder)
    assert not marker.exists()


def test_hostile_expression_behind_a_reference_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    config = config_with(
        evil=f"$__import__('os').system('touch {marker}') or 3",
        network_def={**NETWORK_DEFS["unet"], "out_channels": "$@evil"},
    )
    with pytest.raises(BundleError, match="Refusing the expression"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))
    assert not marker.exists()


def test_nested_component_in_network_args_is_refused(tmp_path):
    net = {**NETWORK_DEFS["unet"], "act": {"_target_": "torch.nn.ReLU"}}
    with pytest.raises(BundleError, match="only plain values"):
        read_bundle(write_bundle(tmp_path / "b", config=config_with(network_def=net), weights=False))


def test_imports_are_dropped_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_bundle_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = config_with(imports=["$import evil_bundle_module", "$from evil_bundle_module import x"])
    b = read_bundle(write_bundle(tmp_path / "b", config=config))
    assert not marker.exists() and "evil_bundle_module" not in sys.modules
    assert sum("evil_bundle_module" in i["what"] for i in b.ignored) == 2


def test_hostile_transform_target_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    config = config_with()
    config["preprocessing"]["transforms"].insert(
        2, {"_target_": "os.system", "keys": "image", "command": f"touch {marker}"}
    )
    with pytest.raises(BundleError, match=r"uses 'os.system' \(preprocessing::transforms::2\)"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))
    assert not marker.exists()


def test_file_macros_are_refused(tmp_path):
    config = config_with(inferer="%/etc/monai_settings.json#inferer")
    with pytest.raises(BundleError, match="reads another file"):
        read_bundle(write_bundle(tmp_path / "b", config=config, weights=False))


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
