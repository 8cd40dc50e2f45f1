"""Reading model zips made elsewhere without trusting them.

:func:`check_zip` refuses, before anything is read: absolute member paths (``/x``, ``C:x``), members with ``..``
components, symbolic links, encrypted or duplicated members, more than ``MAX_MEMBERS`` entries, a declared
uncompressed size above the cap, and members whose compression ratio only a zip bomb reaches.
:func:`extract_members` then copies only the members asked for into a folder of ours, counting bytes as they are
inflated (a header that under-states a member's size cannot make it write more) and hashing them on the way.
"""

from __future__ import annotations

import hashlib
import re
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from unetseg.models.formats import FormatError

MAX_UNPACKED_BYTES = 16 * 1024**3
"""Default cap on the uncompressed size of the members read from one zip (5 folds of a large model fit)."""
MAX_MEMBERS = 100_000
MAX_RATIO = 1000
"""A member that inflates more than this many times (and to more than ``RATIO_MIN_BYTES``) is taken for a bomb."""
RATIO_MIN_BYTES = 1 << 20
_SHOWN = 5


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's path with ``/`` separators (zips written on Windows may use ``\\``)."""
    return info.filename.replace("\\", "/")


def check_zip(zf: zipfile.ZipFile, max_bytes: int = MAX_UNPACKED_BYTES, label: str | None = None) -> list[str]:
    """Refuse an unsafe zip (see the module doc); return its member names (``/``-separated, directories too)."""
    label = label or str(zf.filename)
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise FormatError(f"Refusing {label}: it has {len(infos)} entries (more than {MAX_MEMBERS}).")
    problems, seen, total = [], set(), 0
    for info in infos:
        name = member_name(info)
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            problems.append(f"{info.filename}: absolute path")
        elif ".." in parts:
            problems.append(f"{info.filename}: escapes the folder it unpacks into ('..')")
        elif stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{info.filename}: symbolic link")
        elif info.flag_bits & 0x1:
            problems.append(f"{info.filename}: encrypted")
        elif name.rstrip("/") in seen:
            problems.append(f"{info.filename}: appears twice")
        elif (info.file_size > RATIO_MIN_BYTES
              and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
            problems.append(f"{info.filename}: inflates {info.file_size / max(info.compress_size, 1):.0f} times "
                            "(a zip bomb)")
        seen.add(name.rstrip("/"))
        total += info.file_size
    if problems:
        more = f"\n  … and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise FormatError(f"Refusing the unsafe zip {label}:\n" + "\n".join(f"  - {p}" for p in problems[:_SHOWN])
                          + more)
    if total > max_bytes:
        raise FormatError(
            f"Refusing {label}: it unpacks to {total / 1e9:.2f} GB, above the {max_bytes / 1e9:.2f} GB cap "
            "(a zip bomb, or a model too large to import from a zip: unzip it and import the folder)."
        )
    return [member_name(i) for i in infos]


def extract_members(zf: zipfile.ZipFile, names: Iterable[str], target: Path, strip: str = "",
                    max_bytes: int = MAX_UNPACKED_BYTES) -> dict[str, str]:
    """Copy the members ``names`` (``/``-separated, as :func:`check_zip` returns them) into ``target``.

    ``strip`` is a folder prefix removed from each name. Returns ``{name: sha256}``. Stops with
    :class:`FormatError` when a member inflates past its declared size or the total passes ``max_bytes``.
    """
    by_name = {member_name(i): i for i in zf.infolist()}
    root = target.resolve()
    hashes, total = {}, 0
    for name in names:
        info = by_name[name]
        rel = name[len(strip):] if strip and name.startswith(strip) else name
        dest = (root / rel).resolve()
        if not dest.is_relative_to(root) or dest == root:
            raise FormatError(f"Refusing zip member {info.filename}: it escapes the folder it unpacks into.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h, written = hashlib.sha256(), 0
        try:
            with zf.open(info) as src, open(dest, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    total += len(block)
                    if written > info.file_size or total > max_bytes:
                        raise FormatError(f"Refusing {info.filename}: it inflates past its declared size "
                                          f"({info.file_size} bytes) or the {max_bytes / 1e9:.2f} GB cap.")
                    h.update(block)
                    out.write(block)
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC errors, truncated data
            raise FormatError(f"Cannot read {info.filename} from the zip ({e}).") from e
        hashes[name] = h.hexdigest()
    return hashes
