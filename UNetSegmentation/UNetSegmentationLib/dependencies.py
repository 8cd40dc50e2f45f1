"""Install the core's Python packages into Slicer's Python: once, on first use, after one confirmation.

torch comes from the PyTorch extension (`PyTorchUtilsLogic.installTorch`, which picks the CUDA build for the
GPU) with a version floor; everything else from `Resources/requirements.txt` through Slicer's own pip helpers,
never replacing Slicer's SimpleITK or requests and never letting a package pull torch. Without the PyTorch
extension, ONNX Runtime is installed instead so that models with an ONNX export still run. A failed install
is rolled back (packages it added are removed) and reported plainly. Nothing here runs at import time.

No Qt: dialogs go through `slicer.util`, and every Slicer call can be replaced for headless tests.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from unetseg.vocabulary import BACKENDS

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = "torch>=2.4,!=2.9.*"
ONNX_REQUIREMENT = "onnxruntime>=1.17"
SKIP_PACKAGES = ("torch", "SimpleITK", "requests")
TORCH, ONNX = BACKENDS[:2]  # the predictor's backends the panel installs (`unetseg predict --backend`)
# Packages that declare torch themselves: on Slicer < 5.12 (no skip_packages) they are installed without deps.
_LEGACY_NO_DEPS = ("monai",)
# Always installed without their dependencies: dynamic-network-architectures (imported nnU-Net models' networks)
# declares timm, which pulls torchvision (a build that must match torch) and may replace torch; its U-Nets need
# neither.
NO_DEPS_PACKAGES = ("dynamic-network-architectures",)

logger = logging.getLogger(__name__)


def readRequirements(path: str | Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements.txt (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def isSatisfied(requirement: str) -> bool:
    """True when the distribution is importable and its installed version meets the requirement's specifier; a
    build that provides the same module in its place (onnxruntime-openvino, onnxruntime-gpu for onnxruntime) counts:
    installing the plain one over it would mix two builds' files in one folder."""
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    module = req.name.replace("-", "_")
    if importlib.util.find_spec(module) is None:  # absent, or blocked in sys.modules
        return False
    try:
        versions = [importlib.metadata.version(req.name)]
    except importlib.metadata.PackageNotFoundError:
        versions = [importlib.metadata.version(d) for d in importlib.metadata.packages_distributions().get(module, [])]
    return any(req.specifier.contains(v, prereleases=True) for v in versions)


def missingRequirements(requirements: Sequence[str]) -> list[str]:
    """The requirements that are not installed, or installed in a version that does not fit."""
    return [r for r in requirements if not isSatisfied(r)]


class DependencyInstaller:
    """Checks and installs the packages the core needs; every Slicer-facing step is injectable for tests.

    `confirm(text) -> bool` asks the user once; `installTorch(requirement)`, `installPackages(list)` and
    `uninstallPackages(list)` do the work (defaults: PyTorchUtils and Slicer's pip helpers).
    """

    def __init__(
        self,
        requirementsPath: str | Path = REQUIREMENTS_FILE,
        confirm: Callable[[str], bool] | None = None,
        installTorch: Callable[[str], None] | None = None,
        installPackages: Callable[[list[str]], None] | None = None,
        uninstallPackages: Callable[[list[str]], None] | None = None,
        torchExtensionAvailable: Callable[[], bool] | None = None,
        log: Callable[[str], None] = logger.info,
    ) -> None:
        self.requirements = readRequirements(requirementsPath)
        self._confirm = confirm or _slicerConfirm
        self._installTorch = installTorch or _installTorchWithPyTorchUtils
        self._installPackages = installPackages or _pipInstallWithSlicer
        self._uninstallPackages = uninstallPackages or _pipUninstallWithSlicer
        self._torchExtensionAvailable = torchExtensionAvailable or _pyTorchExtensionAvailable
        self._log = log

    def missing(self) -> list[str]:
        """What is missing: the requirements file's entries, and torch (or ONNX Runtime without PyTorch)."""
        wanted = list(self.requirements)
        if not isSatisfied(TORCH_REQUIREMENT):
            wanted.insert(0, TORCH_REQUIREMENT if self._torchExtensionAvailable() else ONNX_REQUIREMENT)
        return missingRequirements(wanted)

    def segmentationBackend(self, hasOnnxExport: bool) -> str:
        """How a model runs here: "torch" when PyTorch and the packages are installed; otherwise "onnx" for a
        model with an ONNX export (ONNX Runtime is all it needs: a stock Slicer runs it after one small install);
        otherwise "torch", which then has to be installed."""
        if not missingRequirements([TORCH_REQUIREMENT, *self.requirements]):
            return TORCH
        return ONNX if hasOnnxExport else TORCH

    def missingFor(self, backend: str) -> list[str]:
        """What a segmentation with this backend still needs: ONNX Runtime alone, or the whole install."""
        return missingRequirements([ONNX_REQUIREMENT]) if backend == ONNX else self.missing()

    def ensure(self, backend: str | None = None) -> bool:
        """Install what is missing (for `backend`, else everything) after one confirmation; False if the user
        declined, raises if it failed."""
        missing = self.missingFor(backend) if backend else self.missing()
        if not missing:
            return True
        if not self._confirm(self._confirmationText(missing)):
            self._log("Installation of Python packages declined; nothing was changed.")
            return False
        before = self._installedOwnPackages()
        try:
            self._install(missing)
        except Exception as exc:
            self._rollBack(before)
            raise RuntimeError(
                f"Installing Python packages failed ({exc}). Nothing was left half-installed. Check the internet "
                "connection (or proxy), restart Slicer and try again; the Python console shows pip's output."
            ) from exc
        still = self.missingFor(backend) if backend else self.missing()
        if still:
            self._rollBack(before)
            raise RuntimeError(f"After installation these packages are still missing: {', '.join(still)}.")
        self._log("Python packages installed: " + ", ".join(missing))
        return True

    def _confirmationText(self, missing: list[str]) -> str:
        lines = [f"  • {r}" for r in missing]
        torchNote = ""
        if TORCH_REQUIREMENT in missing:
            torchNote = "\nPyTorch is installed by the PyTorch extension, matched to your GPU (a large download)."
        elif ONNX_REQUIREMENT in missing:
            torchNote = "\nONNX Runtime runs the models on the CPU without PyTorch."
            if not self._torchExtensionAvailable():
                torchNote += " Install the PyTorch extension (Extensions Manager) for GPU inference and training."
        return (
            "U-Net Segmentation needs these Python packages, which are not installed yet:\n"
            + "\n".join(lines)
            + torchNote
            + "\n\nInstall them now? This can take several minutes. "
            "Slicer's own SimpleITK and requests are not changed."
        )

    def _install(self, missing: list[str]) -> None:
        if TORCH_REQUIREMENT in missing:
            self._log(f"Installing PyTorch ({TORCH_REQUIREMENT}) through the PyTorch extension…")
            self._installTorch(TORCH_REQUIREMENT)
        packages = [r for r in missing if r != TORCH_REQUIREMENT]
        if packages:
            self._log("Installing " + ", ".join(packages) + "…")
            self._installPackages(packages)
        importlib.invalidate_caches()  # so that the check that follows (and the panel) finds the new packages

    def _installedOwnPackages(self) -> set[str]:
        """Names of this extension's packages (requirements and ONNX Runtime) installed right now."""
        return {_name(r) for r in [*self.requirements, ONNX_REQUIREMENT] if isSatisfied(_name(r))}

    def _rollBack(self, before: set[str]) -> None:
        """Remove the packages this attempt added (torch is left to the PyTorch extension)."""
        added = sorted(self._installedOwnPackages() - before)
        if added:
            self._log("Removing partially installed packages: " + ", ".join(added))
            self._uninstallPackages(added)


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


# --- the Slicer implementations (only called inside Slicer) ------------------------------------------------


def _slicerConfirm(text: str) -> bool:
    import slicer

    return bool(slicer.util.confirmOkCancelDisplay(text, windowTitle="U-Net Segmentation: install Python packages"))


def _pyTorchExtensionAvailable() -> bool:
    return importlib.util.find_spec("PyTorchUtils") is not None


def _installTorchWithPyTorchUtils(requirement: str) -> None:
    """torch from the PyTorch extension, which chooses the CUDA/CPU build for this computer."""
    if not _pyTorchExtensionAvailable():
        raise RuntimeError("the PyTorch extension is not installed; install it from the Extensions Manager")
    import PyTorchUtils

    version = requirement.removeprefix("torch")
    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=version) is None:
        raise RuntimeError("PyTorch was not installed")


def _pipInstallWithSlicer(requirements: list[str]) -> None:
    """`slicer.packaging.pip_ensure` with skipped packages on Slicer >= 5.12; plain `pip_install` before;
    `NO_DEPS_PACKAGES` always with ``--no-deps``."""
    import slicer

    for requirement in [r for r in requirements if _name(r) in NO_DEPS_PACKAGES]:
        slicer.util.pip_install(f'"{requirement}" --no-deps')
    requirements = [r for r in requirements if _name(r) not in NO_DEPS_PACKAGES]
    if not requirements:
        return
    packaging = getattr(slicer, "packaging", None) or getattr(slicer, "pydeps", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        from packaging.requirements import Requirement

        packaging.pip_ensure(
            [Requirement(r) for r in requirements],
            skip_packages=list(SKIP_PACKAGES),
            prompt_install=False,
            requester="UNetSegmentation",
        )
        return
    for requirement in requirements:
        noDeps = " --no-deps" if _name(requirement) in _LEGACY_NO_DEPS else ""
        slicer.util.pip_install(f'"{requirement}"{noDeps}')


def _pipUninstallWithSlicer(names: list[str]) -> None:
    import slicer

    slicer.util.pip_uninstall(" ".join(names))
