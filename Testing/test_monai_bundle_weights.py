"""MONAI bundles: the network allow-list, shared (aliased) tensors, and the weights files that are read or refused.

Each supported network rebuilt from the description computes what the bundle's own network does; TorchScript,
hostile pickles and weights that do not fit are refused. The tiny bundles are written by monai_fakes.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from monai_fakes import NETWORK_DEFS, config_with, write_bundle

from unetseg.models.formats import FormatError
from unetseg.models.formats.monai_bundle import MonaiBundle, read_bundle
from unetseg.models.formats.monai_files import BundleError
from unetseg.models.formats.monai_weights import NETWORKS, build_network, dedupe_state_dict, restore_aliases


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


# ---------------------------------------------------------------------------------------------- networks and aliases


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory) -> tuple[Path, MonaiBundle]:
    folder = write_bundle(tmp_path_factory.mktemp("unet") / "tiny_ct_bundle", "unet")
    return folder, read_bundle(folder)


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


# ---------------------------------------------------------------------------------------------- weights files


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
    config = config_with(network_def={**NETWORK_DEFS["unet"], "channels": [4, 8, 32]})
    (folder / "configs" / "inference.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError, match="does not fit"):
        read_bundle(folder)
