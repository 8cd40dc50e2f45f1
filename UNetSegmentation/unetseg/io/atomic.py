"""Atomic file writes: a temporary file in the target folder replaces the target only when the write succeeded."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same extension); it replaces ``path`` only if the block succeeds.

    On any exception the temporary file is removed, so a failed or cancelled write leaves nothing behind. The
    file is flushed to disk before the rename and the folder after it, so a power cut leaves either the old
    file or the complete new one, never an empty file under the target's name.
    """
    target = Path(path).expanduser().absolute()
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {folder}. Create it or choose another output path.")
    if target.is_dir():
        raise ValueError(f"Output path {target} is a folder; give a file name such as {target / 'result.seg.nrrd'}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write to folder {folder}: permission denied. Choose another output folder.")
    # The name ends with the target's own name, so format detection by extension sees the same suffixes.
    temporary = folder / f".tmp-{uuid.uuid4().hex[:12]}-{target.name}"
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, target)
        fsync_path(folder)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents and metadata to disk (folders: POSIX only; Windows cannot open them)."""
    if path.is_dir() and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
