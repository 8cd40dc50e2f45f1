"""Keep matplotlib out of MONAI's import in this project's own processes (the CLI and its workers).

``import monai`` runs ``monai/__init__.py``, which imports every MONAI module (about 4 000 of them, whatever
submodule was asked for: importing only ``monai.networks.nets.dynunet`` or ``monai.inferers`` loads them all);
``monai.utils.jupyter_utils`` then imports ``matplotlib.pyplot`` eagerly, and ``monai.visualize``,
``monai.optimizers.lr_finder`` and ``monai.transforms.utils_create_transform_ims`` through ``optional_import``:
about 0.4 s and 120 modules of start-up that segmentation never uses. `keep_matplotlib_out_of_monai` installs an
import finder that refuses matplotlib to importers inside the ``monai`` package only; MONAI treats matplotlib as
optional, so its plotting helpers become "not installed" while everything the project uses is unchanged, and any
other code (the user's own ``import matplotlib``) still gets it. Installed by the CLI, not on library import, so a
host process (Slicer, with other MONAI users) is left alone.
"""

from __future__ import annotations

import importlib.abc
import sys
from types import FrameType

_HIDDEN = "matplotlib"
# Frames of the import machinery between the importing module and the finder.
_MACHINERY = ("importlib", "importlib._bootstrap", "importlib._bootstrap_external", __name__)


class _MatplotlibHiddenFromMonai(importlib.abc.MetaPathFinder):
    """Refuses ``matplotlib`` (and its submodules) when a ``monai`` module imports it and nothing loaded it yet."""

    def find_spec(self, name: str, path=None, target=None) -> None:
        if name.partition(".")[0] != _HIDDEN or _HIDDEN in sys.modules:
            return None
        if _importer(sys._getframe(1)).partition(".")[0] == "monai":
            raise ModuleNotFoundError(f"{name} is not loaded for MONAI in unetseg's processes", name=name)
        return None


def _importer(frame: FrameType | None) -> str:
    """The module whose code runs the import: the first frame outside the import machinery."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module not in _MACHINERY:
            return module
        frame = frame.f_back
    return ""


def keep_matplotlib_out_of_monai() -> None:
    """Install the finder (once per process); MONAI imported afterwards loads without matplotlib."""
    if not any(isinstance(finder, _MatplotlibHiddenFromMonai) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MatplotlibHiddenFromMonai())
