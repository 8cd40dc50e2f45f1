"""The model catalog: bundled models shipped with the extension plus the user's own, filtered and imported safely.

Bundled models live in ``UNetSegmentation/Resources/Models/<name>/``; user models in ``UNETSEG_MODELS_DIR``
or, by default, the platform's per-user data folder (outside Slicer's version-specific settings, so every
Slicer version sees the same models). A user model with a bundled model's name takes its place. Nothing
is ever downloaded. Torch-free: the Slicer panel lists models in its GUI process.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from unetseg.models import card
from unetseg.models.archive import MAX_UNPACKED_BYTES, extract_zip
from unetseg.models.manifest import DEFAULT_WEIGHTS, MANIFEST_FILE, PackageError, WeightsError, read_manifest
from unetseg.models.package import ModelPackage, load_package
from unetseg.models.verify import verify_loadable

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "UNETSEG_MODELS_DIR"
MODALITY_ALIASES = {
    "CT": "CT",
    "MR": "MR",
    "MRI": "MR",
    "XR": "XR",
    "X-RAY": "XR",
    "XRAY": "XR",
    "CR": "XR",  # DICOM Modality codes of radiographs
    "DX": "XR",
    "RG": "XR",
}


def bundled_models_dir() -> Path:
    """``UNetSegmentation/Resources/Models``, found relative to this package (works installed or in Slicer)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def user_data_dir() -> Path:
    """The per-user data folder of UNetSegmentation on this platform.

    Written by hand (a few lines) rather than adding platformdirs to Slicer's Python.
    """
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "UNetSegmentation"


def user_models_dir() -> Path:
    """Where user models go: ``$UNETSEG_MODELS_DIR`` if set, else ``<user data dir>/models``."""
    configured = os.environ.get(MODELS_DIR_ENV)
    return Path(configured).expanduser() if configured else user_data_dir() / "models"


def normalize_modality(modality: str) -> str:
    """The catalog's modality code ("CT", "MR", "XR") for a name or DICOM Modality (MRI, X-ray, CR, DX…)."""
    code = MODALITY_ALIASES.get(modality.strip().upper())
    if code is None:
        raise ValueError(f"Unknown modality {modality!r}; use CT, MR (MRI) or XR (X-ray).")
    return code


class Catalog:
    """Bundled and user models, read from their folders on every query (so imports show up at once)."""

    def __init__(self, bundled_dir: str | os.PathLike | None = None, user_dir: str | os.PathLike | None = None):
        self.bundled_dir = Path(bundled_dir) if bundled_dir is not None else bundled_models_dir()
        self.user_dir = Path(user_dir).expanduser() if user_dir is not None else user_models_dir()
        self.problems: list[str] = []
        """Model folders skipped by the last scan, each with the reason (also logged as warnings)."""

    def models(self, modality: str | None = None, variant: str | None = None) -> list[ModelPackage]:
        """Valid models, by name, optionally only one modality and/or network variant."""
        code = normalize_modality(modality) if modality else None
        chosen = {pkg.name: pkg for pkg in self._scan()}.values()
        return sorted(
            (
                pkg
                for pkg in chosen
                if (code is None or pkg.modality == code)
                and (variant is None or pkg.variant.lower() == variant.strip().lower())
            ),
            key=lambda pkg: pkg.name.lower(),
        )

    def names(self, modality: str | None = None, variant: str | None = None) -> list[str]:
        """The names of `models` (what the Slicer panel's model list shows)."""
        return [pkg.name for pkg in self.models(modality, variant)]

    def listing(self, modality: str | None = None, variant: str | None = None, details: bool = False) -> str:
        """A text listing for people (`unetseg models`): one line per model, or full descriptions."""
        models = self.models(modality, variant)
        lines = [pkg.describe() if details else f"{pkg.summary()}\n    {card.heading(pkg)}. {card.measured(pkg)}"
                 for pkg in models]
        if not models:
            wanted = " ".join(filter(None, [modality, variant])) or "any modality"
            lines.append(f"No models for {wanted}. Import one with `unetseg models import ZIP`.")
        lines += [f"(skipped {problem})" for problem in self.problems]
        lines.append(f"Bundled models: {self.bundled_dir}\nUser models: {self.user_dir} (${MODELS_DIR_ENV} moves it)")
        return "\n".join(lines)

    def get(self, name_or_path: str | os.PathLike) -> ModelPackage:
        """A model by catalog name, or from a folder / zip / model.json path."""
        wanted = str(name_or_path)
        by_name = {pkg.name: pkg for pkg in self.models()}
        if wanted in by_name:
            return by_name[wanted]
        if Path(wanted).expanduser().exists():
            return load_package(wanted)
        available = ", ".join(by_name) or "none installed"
        raise ValueError(
            f"No model named {wanted!r} and no such path. Available models: {available}. "
            "Give a catalog name, a model folder or zip, or import one with `unetseg models import ZIP`."
        )

    def import_model(
        self, path: str | os.PathLike, replace: bool = False, max_bytes: int = MAX_UNPACKED_BYTES
    ) -> str:
        """Copy a model (zip or folder) into the user folder after validating it; return its name.

        The manifest, and that the weights fit the network it describes, are checked before anything is copied;
        a zip is also checked for paths escaping the target, symbolic links and its uncompressed size
        (``max_bytes``).
        A name already in the catalog is refused unless ``replace`` is True.
        """
        source = Path(path).expanduser()
        if not source.exists():
            raise PackageError(f"Cannot import {source}: no such file or folder.")
        is_zip = source.is_file() and source.suffix.lower() == ".zip"
        if not is_zip:
            source = source.parent if source.name == MANIFEST_FILE else source
            _check_folder(source, max_bytes)

        def unpack(folder: Path) -> ModelPackage:
            if is_zip:
                extract_zip(source, folder, max_bytes)
            else:
                # a training run's folder also holds its resumable checkpoints: the package does not need them
                shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
            return load_package(folder)

        return self.install(unpack, replace)

    def install(self, write: Callable[[Path], ModelPackage], replace: bool = False) -> str:
        """Put a package into the user folder: ``write(folder)`` writes it into a staging folder beside the user
        models; once it is checked (`verify_loadable`) and its name is free (or ``replace``), it is moved into place
        under its name. If anything fails, the user folder is left as it was. Returns the name."""
        self.user_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.user_dir))
        try:
            unpacked = staging / "package"
            pkg = write(unpacked)
            verify_loadable(pkg)
            self._check_clash(pkg.name, replace)
            target = self.user_dir / pkg.name
            if target.exists():  # moved aside, not deleted, until the new copy is in place
                os.replace(target, staging / "replaced")
            os.replace(unpacked, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return pkg.name

    def _check_clash(self, name: str, replace: bool) -> None:
        """Refuse a name already in the catalog unless ``replace`` is True."""
        if name in self.names() and not replace:
            raise PackageError(
                f"A model named {name!r} is already in the catalog. Pass replace=True "
                "(`unetseg models import --replace`) to replace it, or rename the model in its model.json."
            )

    def _scan(self) -> list[ModelPackage]:
        """Every valid package in the bundled then the user folder (later ones win on equal names)."""
        self.problems = []
        found = []
        for root in (self.bundled_dir, self.user_dir):
            if not root.is_dir():
                continue
            for folder in sorted(root.iterdir()):
                if not (folder / MANIFEST_FILE).is_file() or folder.name.startswith("."):
                    continue
                try:
                    found.append(load_package(folder))
                except PackageError as e:
                    self.problems.append(f"{folder}: {e}")
                    logger.warning("Skipping model folder %s: %s", folder, e)
        return found


def _check_folder(folder: Path, max_bytes: int) -> None:
    """Refuse a model folder whose manifest is invalid, that holds symbolic links or is above the size cap."""
    if not folder.is_dir():
        raise PackageError(f"Cannot import {folder}: give a model folder (holding {MANIFEST_FILE}) or a .zip of one.")
    manifest = read_manifest(folder)
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    if links:
        raise PackageError(f"Refusing to import {folder}: it holds symbolic links ({links[0]}); copy real files.")
    weights = folder / manifest.get("weights", DEFAULT_WEIGHTS)
    if not weights.is_file():
        raise WeightsError(f"Cannot import {folder}: the weights file {weights.name} its manifest names is missing.")
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if total > max_bytes:
        raise PackageError(
            f"Cannot import {folder}: {total / 1e9:.2f} GB is above the {max_bytes / 1e9:.2f} GB cap "
            "(raise max_bytes if the model really is that large)."
        )


def load_model(model: ModelPackage | str | os.PathLike) -> ModelPackage:
    """The model package itself, or the one a catalog name or a folder/zip path names."""
    return model if isinstance(model, ModelPackage) else Catalog().get(str(model))
