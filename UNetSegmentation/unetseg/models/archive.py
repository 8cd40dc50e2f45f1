"""Safe handling of zipped model packages: checks before extraction, extraction, and the unpacked-zip cache.

A zip is refused before anything is written when a member has an absolute path, a ``..`` component or is a
symbolic link, when it would unpack beyond a size cap (zip bombs), or when its headers disagree with its data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from unetseg.models.manifest import (
    DEFAULT_WEIGHTS,
    MANIFEST_FILE,
    SHOWN,
    ManifestError,
    PackageError,
    WeightsError,
    validate_manifest,
)

MAX_UNPACKED_BYTES = 2 * 1024**3
"""Default cap on a zip's uncompressed size (a model zip larger than this is refused, zip bombs included)."""
# What zipfile raises for a damaged archive: bad headers or CRC, truncated or undecodable data, encryption.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def check_zip(zf: zipfile.ZipFile, max_bytes: int = MAX_UNPACKED_BYTES) -> str:
    """Check a model zip before anything is extracted; return the folder prefix holding ``model.json``.

    Refuses absolute paths, ``..`` components, symbolic links and an uncompressed size above ``max_bytes``.
    """
    problems, total = [], 0
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            problems.append(f"{info.filename}: absolute path")
        elif ".." in PurePosixPath(name).parts:
            problems.append(f"{info.filename}: escapes the target folder ('..')")
        elif stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{info.filename}: symbolic link")
        total += info.file_size
    if problems:
        raise PackageError("Refusing an unsafe model zip:\n" + "\n".join(f"  - {p}" for p in problems[:SHOWN]))
    if total > max_bytes:
        raise PackageError(
            f"The model zip unpacks to {total / 1e9:.2f} GB, above the {max_bytes / 1e9:.2f} GB cap. "
            "If this model really is that large, import it as a folder or raise the cap."
        )
    manifests = sorted(
        (n for n in zf.namelist() if PurePosixPath(n).name == MANIFEST_FILE and len(PurePosixPath(n).parts) <= 2),
        key=lambda n: len(PurePosixPath(n).parts),
    )
    if not manifests:
        raise PackageError(
            f"The zip holds no {MANIFEST_FILE} at its top level or in a top-level folder; zip the model folder itself."
        )
    if len(manifests) > 1 and len(PurePosixPath(manifests[1]).parts) == len(PurePosixPath(manifests[0]).parts):
        raise PackageError(f"The zip holds several models ({', '.join(manifests)}); zip one model per file.")
    return manifests[0][: -len(MANIFEST_FILE)]


def extract_zip(zip_path: str | os.PathLike, target: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Validate a model zip (layout, manifest, weights present), then extract its package into ``target``.

    A damaged zip (not a zip, a CRC or header that disagrees with the data, an encrypted member) is a
    `PackageError`, whenever it shows.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return _extract(zf, str(zip_path), target, max_bytes)
    except _DAMAGED as e:
        raise PackageError(
            f"{zip_path} is damaged or not a readable zip file ({e}); zip the model folder again."
        ) from e


def _extract(zf: zipfile.ZipFile, zip_path: str, target: Path, max_bytes: int) -> Path:
    prefix = check_zip(zf, max_bytes)
    try:
        manifest = json.loads(zf.read(prefix + MANIFEST_FILE).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError([f"$: not valid JSON ({e})"], f"{zip_path}:{prefix}{MANIFEST_FILE}") from e
    validate_manifest(manifest, f"{zip_path}:{prefix}{MANIFEST_FILE}")
    weights = prefix + manifest.get("weights", DEFAULT_WEIGHTS)
    if weights not in zf.namelist():
        raise WeightsError(f"The zip {zip_path} lacks the weights file {weights} its manifest names.")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue  # other top-level entries (e.g. __MACOSX/) are not part of the package
        dest = (root / info.filename[len(prefix) :]).resolve()
        if not dest.is_relative_to(root):
            raise PackageError(f"Refusing zip member {info.filename}: it escapes the target folder.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "wb") as out:  # zipfile stops at the checked header size
            shutil.copyfileobj(src, out)
    return target


def zip_cache_dir() -> Path:
    """Where zipped models given by path are unpacked (once per zip file version)."""
    return Path(tempfile.gettempdir()) / "unetseg-model-cache"


def extract_cached(zip_path: Path) -> Path:
    """The unpacked package of a zip, extracted once per (path, size, mtime) and reused afterwards."""
    st = zip_path.stat()
    key = hashlib.sha256(f"{zip_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = zip_cache_dir() / key
    if (dest / MANIFEST_FILE).is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # an earlier unpack that did not finish
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        extract_zip(zip_path, staging / "package")
        if not dest.exists():  # another process may have unpacked the same zip meanwhile
            os.replace(staging / "package", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
