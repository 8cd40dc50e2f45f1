"""Untrusted nnU-Net files: checkpoints are unpickled only through an allow-list, hostile zips are refused.

Pickles that would run code, numpy-1 names, DDP-wrapped and corrupt state dicts, files that are not checkpoints,
and zips that escape their folder, link outside, inflate like bombs or lie about their sizes.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunet_fakes import same_output, snapshot, write_model, zip_folder

from unetseg.models import archive
from unetseg.models.formats import FormatError
from unetseg.models.formats.checkpoint import allowed_global_names, drop_aliases, load_checkpoint
from unetseg.models.formats.nnunet import read_nnunet_model

# ------------------------------------------------------------------------------------------ pickles and checkpoints


def test_plain_weights_only_refuses_a_checkpoint_and_the_allow_list_opens_it(tmp_path):
    folder, _ = write_model(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["logging"]["mean_fg_dice"][0], np.float32)
    assert isinstance(ckpt["_best_ema"], np.float64)
    assert ckpt["init_args"]["device"] == torch.device("cpu")
    names = allowed_global_names()
    assert {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype"} <= names
    assert all(n.startswith("numpy.") for n in names)


def _rewrite_pickle(path: Path, old: bytes, new: bytes) -> None:
    """Replace text inside a zip-format checkpoint's data.pkl (protocol-2 GLOBAL names are newline-terminated)."""
    with zipfile.ZipFile(path) as zf:
        entries = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zf.writestr(info.filename, data)


def test_numpy_1_checkpoint_names_load(tmp_path):
    folder, nets = write_model(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    _rewrite_pickle(path, b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    assert b"numpy.core.multiarray" in zipfile.ZipFile(path).read(
        next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
    model = read_nnunet_model(folder)
    same_output(nets["0"], model.build_network(), (1, 1, 16, 16, 16))


@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickle_is_refused_without_running_it(tmp_path, legacy):
    folder, _ = write_model(tmp_path, folds=(0,))
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint(path)
    ckpt["logging"]["payload"] = Boom()
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(FormatError, match=r"Refusing .*checkpoint_final.pth.*(posix|os)\.system"):
        read_nnunet_model(folder)
    assert not marker.exists()

def test_corrupt_alias_and_wrapped_state_dicts(tmp_path):
    folder, nets = write_model(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = load_checkpoint(path)
    ckpt["network_weights"] = {"module." + k: v for k, v in ckpt["network_weights"].items()}  # saved from DDP
    torch.save(ckpt, path)
    same_output(nets["0"], read_nnunet_model(folder).build_network(), (1, 1, 16, 16, 16))

    state = dict(nets["0"].state_dict())
    key = next(k for k in state if k.startswith("decoder.encoder."))
    state[key] = state[key].clone() + 1
    with pytest.raises(FormatError, match=r"different tensors under decoder.encoder"):
        drop_aliases(state)


def test_not_a_model_and_not_a_checkpoint(tmp_path):
    with pytest.raises(FormatError, match=r"is not an nnU-Net v2 model"):
        read_nnunet_model(tmp_path)
    with pytest.raises(FormatError, match=r"does not exist"):
        read_nnunet_model(tmp_path / "nope")
    folder, _ = write_model(tmp_path / "m", folds=(0,))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match=r"not a readable PyTorch checkpoint"):
        read_nnunet_model(folder)
    torch.save({"state_dict": {}}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(FormatError, match=r"not an nnU-Net checkpoint"):
        read_nnunet_model(folder)

# ------------------------------------------------------------------------------------------ hostile zips


def _model_zip_with(tmp_path: Path, extra) -> Path:
    folder, _ = write_model(tmp_path / "src", folds=(0,))
    z = zip_folder(folder, tmp_path / "m.zip", folder.parent)
    with zipfile.ZipFile(z, "a") as zf:
        extra(zf)
    return z


def _symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


@pytest.mark.parametrize("extra, message", [
    (lambda zf: zf.writestr("../evil.txt", "x"), r"escapes the target folder"),
    (lambda zf: zf.writestr("nnUNetTrainer__nnUNetPlans__3d_fullres/../../evil.txt", "x"),
     r"escapes the target folder"),
    (lambda zf: zf.writestr("/tmp/evil.txt", "x"), "absolute path"),
    (lambda zf: zf.writestr("C:/evil.txt", "x"), "absolute path"),
    (_symlink, "symbolic link"),
])
def test_unsafe_zips_are_refused(tmp_path, extra, message):
    z = _model_zip_with(tmp_path, extra)
    before = snapshot(z)
    with pytest.raises(FormatError, match=message):
        read_nnunet_model(z)
    assert snapshot(z) == before
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bombs_are_refused(tmp_path, monkeypatch):
    zeros = b"\0" * (8 << 20)
    z = _model_zip_with(tmp_path, lambda zf: zf.writestr("nnUNetTrainer__nnUNetPlans__3d_fullres/pad.bin", zeros,
                                                          compress_type=zipfile.ZIP_DEFLATED, compresslevel=9))
    monkeypatch.setattr(archive, "MAX_RATIO", 10**6)
    with pytest.raises(FormatError, match=r"unpacks to .* above the .* cap"):
        read_nnunet_model(z, max_zip_bytes=4 << 20)
    monkeypatch.setattr(archive, "MAX_RATIO", 100)
    with pytest.raises(FormatError, match=r"pad.bin: inflates \d+ times \(a zip bomb\)"):
        read_nnunet_model(z)


def test_a_member_larger_than_its_header_says_is_stopped(tmp_path):
    folder, _ = write_model(tmp_path / "src", folds=(0,))
    z = zip_folder(folder, tmp_path / "m.zip", folder.parent)
    data = bytearray(z.read_bytes())
    # shrink the declared size of plans.json in its central-directory entry (a lying header)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("plans.json"))
    name = info.filename.encode()
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0
        n = int.from_bytes(data[pos + 28:pos + 30], "little")
        if bytes(data[pos + 46:pos + 46 + n]) == name:
            break
        pos += 4
    data[pos + 24:pos + 28] = (10).to_bytes(4, "little")  # uncompressed size: 10 bytes
    z.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"plans.json"):
        read_nnunet_model(z)
