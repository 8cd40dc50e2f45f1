"""A MONAI bundle's files, read safely from a folder or a zip, and the error every refusal of a bundle raises.

A zip is checked by `unetseg.models.archive.check_zip` before anything is read from it (no absolute
paths, ``..``, symbolic links, encrypted or repeated members; a size cap and a compression-ratio check against zip
bombs) and the few files needed are read in memory, never extracted; in a folder, files that resolve outside the
bundle are refused. Every file read is recorded with its SHA-256 (the provenance of an import).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from unetseg.models.archive import MAX_IMPORT_BYTES, check_zip
from unetseg.models.formats import FormatError

METADATA_FILE = "configs/metadata.json"
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
WEIGHTS_FILE = "models/model.pt"
TORCHSCRIPT_FILE = "models/model.ts"
MAX_CONFIG_BYTES = 4 * 1024**2


class BundleError(FormatError):
    """A MONAI bundle that cannot be imported; the message says what and, where possible, how to fix it."""


class BundleFiles:
    """The bundle's files under its root, from a folder or a zip (read in memory, never extracted)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.hashes: dict[str, str] = {}
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise BundleError(f"{path} is not a readable zip file ({e}).") from e
            self._prefix = bundle_zip_prefix(self._zip, max_bytes, str(path))
            self._members = {i.filename.replace("\\", "/"): i for i in self._zip.infolist()}
            self.root_name = self._prefix.rstrip("/").rsplit("/", 1)[-1] or path.stem
        else:
            self.path = path = bundle_folder(path)
            self.root = path.resolve()
            self.root_name = self.root.name

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def exists(self, rel: str) -> bool:
        if self._zip is not None:
            return self._prefix + rel in self._members
        return (self.path / rel).is_file()

    def read(self, rel: str, limit: int | None = None) -> bytes:
        """The bytes of ``rel`` (recorded with their sha256); refused past ``limit`` or outside the bundle."""
        limit = self.max_bytes if limit is None else limit
        if self._zip is not None:
            info = self._members[self._prefix + rel]
            if info.file_size > limit:
                raise BundleError(f"{rel} in the bundle is {info.file_size} bytes, above the {limit} byte cap.")
            try:
                with self._zip.open(info) as f:  # zipfile stops at the header's size and checks the CRC
                    data = f.read(limit + 1)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BundleError(f"Cannot read {rel} from the zip ({e}).") from e
        else:
            full = (self.path / rel).resolve()
            if not full.is_relative_to(self.root):
                raise BundleError(f"Refusing {rel}: it is a link that leads outside the bundle folder ({full}).")
            if full.stat().st_size > limit:
                raise BundleError(f"{rel} in the bundle is {full.stat().st_size} bytes, above the {limit} byte cap.")
            data = full.read_bytes()
        if len(data) > limit:
            raise BundleError(f"{rel} in the bundle is larger than the {limit} byte cap.")
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return data

    def sha256_of(self, rel: str) -> str:
        """The sha256 of a file that is listed but not loaded (streamed; nothing is interpreted)."""
        digest = hashlib.sha256()
        if self._zip is not None:
            try:
                with self._zip.open(self._members[self._prefix + rel]) as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BundleError(f"Cannot read {rel} from the zip ({e}).") from e
        else:
            full = (self.path / rel).resolve()
            if not full.is_relative_to(self.root):
                raise BundleError(f"Refusing {rel}: it is a link that leads outside the bundle folder ({full}).")
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def bundle_folder(path: Path) -> Path:
    """The bundle folder: ``path`` itself, or the one folder in it that holds ``configs/metadata.json`` (as a zip
    may hold one top-level folder)."""
    if (path / METADATA_FILE).is_file():
        return path
    inside = (
        [c for c in sorted(path.iterdir()) if c.is_dir() and (c / METADATA_FILE).is_file()] if path.is_dir() else []
    )
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        raise BundleError(f"{path} holds several bundles ({', '.join(c.name for c in inside)}); import one of them.")
    raise BundleError(f"{path} is not a MONAI bundle: it has no {METADATA_FILE}.")


def bundle_zip_prefix(zf: zipfile.ZipFile, max_bytes: int = MAX_IMPORT_BYTES, label: str | None = None) -> str:
    """Check a bundle zip before anything is read from it; return the folder prefix holding ``configs/``.

    `unetseg.models.archive.check_zip` refuses absolute paths, ``..`` components, symbolic links,
    encrypted or repeated members, too many entries and zip bombs (size cap, compression ratio).
    """
    try:
        names = check_zip(zf, max_bytes, label)
    except BundleError:
        raise
    except FormatError as e:
        raise BundleError(str(e)) from e
    metas = sorted(
        (n for n in names if n == METADATA_FILE or (n.endswith("/" + METADATA_FILE) and n.count("/") == 2)),
        key=lambda n: n.count("/"),
    )
    if not metas:
        raise BundleError(
            f"The zip holds no {METADATA_FILE} at its top level or in a top-level folder: it is not a MONAI bundle."
        )
    if len(metas) > 1 and metas[1].count("/") == metas[0].count("/"):
        raise BundleError(f"The zip holds several bundles ({', '.join(metas)}); zip one bundle per file.")
    return metas[0][: -len(METADATA_FILE)]


def load_config(data: bytes, rel: str) -> dict:
    """A JSON or YAML config as a dict (UTF-8; duplicate JSON keys refused, as MONAI does)."""

    def no_duplicates(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise BundleError(f"{rel} repeats the key(s) {', '.join(repeated)}.")
        return dict(pairs)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{rel} is not UTF-8 text ({e}).") from e
    if rel.endswith(".json"):
        try:
            config = json.loads(text, object_pairs_hook=no_duplicates)
        except BundleError:
            raise
        except ValueError as e:
            raise BundleError(f"{rel} is not valid JSON ({e}).") from e
    else:
        try:
            import yaml
        except ImportError as e:
            raise BundleError(f"{rel} is YAML; install PyYAML (pip install pyyaml) to import this bundle.") from e
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BundleError(f"{rel} is not valid YAML ({e}).") from e
    if not isinstance(config, dict):
        raise BundleError(f"{rel} must hold a mapping (a JSON object) at its top level.")
    return config
