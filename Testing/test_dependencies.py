"""First-use installation of the core's packages into Slicer: one confirmation, torch first, rollback on failure."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from UNetSegmentationLib import dependencies
from UNetSegmentationLib.dependencies import (
    ONNX_REQUIREMENT,
    REQUIREMENTS_FILE,
    TORCH_REQUIREMENT,
    DependencyInstaller,
    missingRequirements,
    readRequirements,
)


def test_shipped_requirements_never_name_torch_simpleitk_requests_or_jsonschema():
    names = {Requirement(r).name.lower() for r in readRequirements(REQUIREMENTS_FILE)}
    assert {"monai", "slicerio", "safetensors"} <= names
    assert not names & {"torch", "simpleitk", "requests", "jsonschema"}  # manifests are checked without jsonschema


def test_read_requirements_drops_comments_and_blanks(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# header\nmonai>=1.5  # why\n\n  slicerio>=1.1\n")
    assert readRequirements(path) == ["monai>=1.5", "slicerio>=1.1"]


def test_missing_requirements_checks_names_and_versions():
    assert missingRequirements(["pytest>=1", "pytest>=9999", "no-such-package-xyz-123"]) == [
        "pytest>=9999",
        "no-such-package-xyz-123",
    ]


def test_a_build_providing_the_module_in_place_of_the_plain_one_satisfies_it(tmp_path, monkeypatch):
    """onnxruntime-openvino installs the ``onnxruntime`` module: the panel must not install onnxruntime over it."""
    site = tmp_path / "site"
    (site / "fakeort").mkdir(parents=True)
    (site / "fakeort" / "__init__.py").write_text("")
    info = site / "fakeort_openvino-1.24.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeort-openvino\nVersion: 1.24.1\n")
    (info / "top_level.txt").write_text("fakeort\n")
    monkeypatch.syspath_prepend(str(site))
    assert missingRequirements(["fakeort>=1.17", "fakeort>=1.25"]) == ["fakeort>=1.25"]


class World:
    """A fake Python environment: which distributions are installed, and what the installer did."""

    def __init__(self, installed=(), fail_on=None, torch_extension=True):
        self.installed = set(installed)
        self.fail_on = fail_on
        self.torch_extension = torch_extension
        self.confirmations: list[str] = []
        self.calls: list[tuple] = []

    def satisfied(self, requirement: str) -> bool:
        return Requirement(requirement).name in self.installed

    def installer(self, tmp_path, answer=True) -> DependencyInstaller:
        path = tmp_path / "requirements.txt"
        path.write_text("monai>=1.5\nslicerio>=1.1\n")

        def confirm(text):
            self.confirmations.append(text)
            return answer

        def install_torch(requirement):
            self.calls.append(("torch", requirement))
            self.installed.add("torch")

        def install_packages(requirements):
            self.calls.append(("pip", tuple(requirements)))
            for r in requirements:
                if Requirement(r).name == self.fail_on:
                    raise OSError("pip returned non-zero exit status 1")
                self.installed.add(Requirement(r).name)

        def uninstall(names):
            self.calls.append(("uninstall", tuple(names)))
            self.installed -= set(names)

        return DependencyInstaller(
            path, confirm=confirm, installTorch=install_torch, installPackages=install_packages,
            uninstallPackages=uninstall, torchExtensionAvailable=lambda: self.torch_extension, log=lambda _: None,
        )


@pytest.fixture
def world(monkeypatch):
    w = World(installed={"numpy"})
    monkeypatch.setattr(dependencies, "isSatisfied", w.satisfied)
    return w


def test_one_confirmation_then_torch_first_then_packages(world, tmp_path):
    assert world.installer(tmp_path).ensure() is True
    assert len(world.confirmations) == 1
    assert TORCH_REQUIREMENT in world.confirmations[0] and "monai>=1.5" in world.confirmations[0]
    assert world.calls == [("torch", TORCH_REQUIREMENT), ("pip", ("monai>=1.5", "slicerio>=1.1"))]
    assert world.installer(tmp_path).missing() == []


def test_nothing_missing_asks_nothing(world, tmp_path):
    world.installed |= {"torch", "monai", "slicerio"}
    assert world.installer(tmp_path).ensure() is True
    assert world.confirmations == [] and world.calls == []


def test_declining_changes_nothing(world, tmp_path):
    assert world.installer(tmp_path, answer=False).ensure() is False
    assert world.calls == [] and world.installed == {"numpy"}


def test_failed_install_is_rolled_back_with_a_clear_message(monkeypatch, tmp_path):
    w = World(installed={"numpy", "torch"}, fail_on="slicerio")
    monkeypatch.setattr(dependencies, "isSatisfied", w.satisfied)
    with pytest.raises(RuntimeError, match="Nothing was left half-installed"):  # monai lands, slicerio fails
        w.installer(tmp_path).ensure()
    assert ("uninstall", ("monai",)) in w.calls
    assert w.installed == {"numpy", "torch"}


def test_without_pytorch_extension_onnx_runtime_is_installed_instead(monkeypatch, tmp_path):
    w = World(installed={"numpy"}, torch_extension=False)
    monkeypatch.setattr(dependencies, "isSatisfied", w.satisfied)
    assert w.installer(tmp_path).ensure() is True
    assert "ONNX Runtime" in w.confirmations[0]
    assert not any(call[0] == "torch" for call in w.calls)
    assert w.calls == [("pip", (ONNX_REQUIREMENT, "monai>=1.5", "slicerio>=1.1"))]
