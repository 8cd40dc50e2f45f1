"""Reading zips without trusting them: model packages, and the nnU-Net / MONAI zips made elsewhere.

`check_zip` refuses a zip before anything is read from it when a member has an absolute path (``/x``, ``C:x``), a
``..`` component, is a symbolic link, is encrypted or appears twice, when it has more than `MAX_MEMBERS` entries,
declares an uncompressed size above the cap, or holds a member whose compression ratio only a zip bomb reaches.
`extract_members` then copies only the members asked for into a folder of ours, counting bytes as they are inflated
(a header that under-states a member's size cannot make it write more) and hashing them on the way. On top of
these, `extract_zip` / `extract_cached` unpack a zipped model package (the folder holding ``model.json``).
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
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from unetseg.models.formats import FormatError
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
"""Default cap on a model package zip's uncompressed size (a larger one is refused, zip bombs included)."""
MAX_IMPORT_BYTES = 16 * 1024**3
"""Default cap on what is read from a foreign model's zip (five folds of a large nnU-Net model fit)."""
MAX_MEMBERS = 100_000
MAX_RATIO = 1000
"""A member that inflates more than this many times (and to more than ``RATIO_MIN_BYTES``) is taken for a bomb."""
RATIO_MIN_BYTES = 1 << 20
# What zipfile raises for a damaged archive: bad headers or CRC, truncated or undecodable data, encryption.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's path with ``/`` separators (zips written on Windows may use ``\\``)."""
    return info.filename.replace("\\", "/")


def _member_problem(info: zipfile.ZipInfo, seen: set[str]) -> str | None:
    """Why one member makes the zip unsafe, or None."""
    name = member_name(info)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "escapes the target folder ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted"
    if name.rstrip("/") in seen:
        return "appears twice"
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return f"inflates {info.file_size / max(info.compress_size, 1):.0f} times (a zip bomb)"
    return None


def check_zip(zf: zipfile.ZipFile, max_bytes: int = MAX_UNPACKED_BYTES, label: str | None = None) -> list[str]:
    """Refuse an unsafe zip (see the module doc) with `FormatError`; return its member names (``/``-separated)."""
    label = label or str(zf.filename)
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise FormatError(f"Refusing {label}: it has {len(infos)} entries (more than {MAX_MEMBERS}).")
    problems, seen, total = [], set(), 0
    for info in infos:
        problem = _member_problem(info, seen)
        if problem:
            problems.append(f"{info.filename}: {problem}")
        seen.add(member_name(info).rstrip("/"))
        total += info.file_size
    if problems:
        more = f"\n  … and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        listed = "\n".join(f"  - {p}" for p in problems[:SHOWN])
        raise FormatError(f"Refusing the unsafe zip {label}:\n{listed}{more}")
    if total > max_bytes:
        raise FormatError(
            f"Refusing {label}: it unpacks to {total / 1e9:.2f} GB, above the {max_bytes / 1e9:.2f} GB cap "
            "(a zip bomb, or a model too large to import from a zip: unzip it and import the folder)."
        )
    return [member_name(i) for i in infos]


def extract_members(zf: zipfile.ZipFile, names: Iterable[str], target: Path, strip: str = "",
                    max_bytes: int = MAX_UNPACKED_BYTES) -> dict[str, str]:
    """Copy the members ``names`` (``/``-separated, as `check_zip` returns them) into ``target``; ``{name: sha256}``.

    ``strip`` is a folder prefix removed from each name. Stops with `FormatError` when a member inflates past its
    declared size or the total passes ``max_bytes``, and on a damaged member (CRC, truncated data).
    """
    by_name = {member_name(i): i for i in zf.infolist()}
    root = target.resolve()
    hashes, total = {}, 0
    for name in names:
        info = by_name[name]
        rel = name[len(strip):] if strip and name.startswith(strip) else name
        dest = (root / rel).resolve()
        if not dest.is_relative_to(root) or dest == root:
            raise FormatError(f"Refusing zip member {info.filename}: it escapes the target folder.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, written = hashlib.sha256(), 0
        try:
            with zf.open(info) as src, open(dest, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    total += len(block)
                    if written > info.file_size or total > max_bytes:
                        raise FormatError(f"Refusing {info.filename}: it inflates past its declared size "
                                          f"({info.file_size} bytes) or the {max_bytes / 1e9:.2f} GB cap.")
                    digest.update(block)
                    out.write(block)
        except _DAMAGED as e:
            raise FormatError(f"{zf.filename} is damaged or not a readable zip file: cannot read {info.filename} "
                              f"({e}).") from e
        hashes[name] = digest.hexdigest()
    return hashes


# ------------------------------------------------------------------------------------------ model packages


def package_prefix(names: list[str]) -> str:
    """The folder prefix (``''`` or ``'folder/'``) of the one ``model.json`` at the zip's top level or one below."""
    manifests = sorted(
        (n for n in names if PurePosixPath(n).name == MANIFEST_FILE and len(PurePosixPath(n).parts) <= 2),
        key=lambda n: len(PurePosixPath(n).parts),
    )
    if not manifests:
        raise PackageError(
            f"The zip holds no {MANIFEST_FILE} at its top level or in a top-level folder; zip the model folder itself."
        )
    if len(manifests) > 1 and len(PurePosixPath(manifests[1]).parts) == len(PurePosixPath(manifests[0]).parts):
        raise PackageError(f"The zip holds several models ({', '.join(manifests)}); zip one model per file.")
    return manifests[0][: -len(MANIFEST_FILE)]


def is_package_zip(path: Path) -> bool:
    """Cheap check: a readable zip holding a model package's ``model.json`` (nothing is extracted)."""
    try:
        with zipfile.ZipFile(path) as zf:
            package_prefix([member_name(i) for i in zf.infolist()])
        return True
    except (PackageError, OSError, *_DAMAGED):
        return False


def extract_zip(zip_path: str | os.PathLike, target: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Validate a model package zip (safety, layout, manifest, weights present), then extract it into ``target``.

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
    names = check_zip(zf, max_bytes, zip_path)
    prefix = package_prefix(names)
    try:
        manifest = json.loads(zf.read(prefix + MANIFEST_FILE).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError([f"$: not valid JSON ({e})"], f"{zip_path}:{prefix}{MANIFEST_FILE}") from e
    validate_manifest(manifest, f"{zip_path}:{prefix}{MANIFEST_FILE}")
    weights = prefix + manifest.get("weights", DEFAULT_WEIGHTS)
    if weights not in names:
        raise WeightsError(f"The zip {zip_path} lacks the weights file {weights} its manifest names.")
    # other top-level entries (e.g. __MACOSX/) are not part of the package
    members = [n for n in names if n.startswith(prefix) and not n.endswith("/")]
    target.mkdir(parents=True, exist_ok=True)
    extract_members(zf, members, target, strip=prefix, max_bytes=max_bytes)
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
