"""Each tensor once in weights.safetensors: DynUNet's aliases stored once and rebuilt on load; old files still load."""

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import tiny_manifest

from unetseg.models.package import load_package, save_package
from unetseg.models.shared_tensors import ALIASES_KEY, aliases_from_metadata, split_aliases
from unetseg.models.weights import build_model, load_state_dict
from unetseg.networks.factory import build_network

# The `nnunet` variant (MONAI's DynUNet): its skip_layers reach every block a second time.
DYNUNET = {
    "variant": "nnunet", "spatial_dims": 3, "in_channels": 1, "num_classes": 3,
    "kernel_size": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "filters": [4, 8, 16],
}  # fmt: skip


def _dynunet_package(folder):
    torch.manual_seed(0)
    network = build_network(DYNUNET).eval()
    manifest = tiny_manifest(variant="nnunet", spatial_dims=3, network=DYNUNET,
                             inference={"patch_size": [16, 16, 16]})  # fmt: skip
    manifest["preprocessing"]["slice_wise"] = False
    return network, save_package(folder, manifest, network.state_dict())


def test_a_dynunet_package_stores_each_tensor_once_and_loads_identically(tmp_path):
    network, package = _dynunet_package(tmp_path / "dyn")
    state = network.state_dict()
    all_bytes = sum(t.numel() * t.element_size() for t in state.values())
    parameter_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
    assert parameter_bytes < 0.55 * all_bytes  # the state dict really holds every tensor twice
    size = package.weights_path.stat().st_size
    assert size < 0.55 * all_bytes, f"{size} bytes on disk for {all_bytes} bytes of (aliased) state dict"
    assert size < parameter_bytes * 1.1 + 20_000  # the parameters once, plus the header

    with safe_open(package.weights_path, "pt") as f:
        stored = set(f.keys())
        aliases = aliases_from_metadata(f.metadata())
    assert stored.isdisjoint(aliases) and set(aliases.values()) <= stored
    assert stored | set(aliases) == set(state)
    assert any("skip_layers" in name for name in aliases)

    loaded = load_state_dict(package)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    rebuilt = build_model(package)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), network(x))


def test_an_older_package_with_every_name_stored_still_loads(tmp_path):
    network, package = _dynunet_package(tmp_path / "old")
    state = {k: v.clone().contiguous() for k, v in network.state_dict().items()}  # each name its own copy
    save_file(state, str(package.weights_path), metadata={"format": "unetseg-model/1"})
    old = load_package(package.path)
    with safe_open(old.weights_path, "pt") as f:
        assert ALIASES_KEY not in (f.metadata() or {}) and len(f.keys()) == len(state)
    loaded = load_state_dict(old)
    assert all(torch.equal(loaded[k], v) for k, v in network.state_dict().items())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(build_model(old)(x), network(x))


def test_only_views_of_the_same_memory_are_merged():
    base = torch.arange(6.0)
    state = {"a": base, "b": base.view(6), "c": base.clone(), "d": base[:3], "e": torch.zeros(0), "f": torch.zeros(0)}
    unique, aliases = split_aliases(state)
    assert aliases == {"b": "a"}  # equal values ("c"), a slice ("d") and empty tensors stay separate
    assert set(unique) == {"a", "c", "d", "e", "f"}
    assert aliases_from_metadata({ALIASES_KEY: json.dumps(aliases)}) == aliases
    assert aliases_from_metadata(None) == {} and aliases_from_metadata({"format": "x"}) == {}
