"""Where an nnU-Net v2 model is inside a folder or zip, and which of its folds to read.

A model folder is ``<trainer>__<plans>__<configuration>/`` holding ``dataset.json``, ``plans.json`` and ``fold_*``
folders; it may be given itself, as the ``Dataset###_Name/`` folder above it, or zipped (with or without that level).
Folds are numbers or ``all``; by default every fold folder holding the checkpoint is read.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from unetseg.models.formats import FormatError

MODEL_FOLDER_RE = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>[^_].*)$")
FOLD_RE = re.compile(r"^fold_(?P<fold>\d+|all)$")


def is_model_folder(path: Path) -> bool:
    """``path`` holds ``dataset.json``, ``plans.json`` and at least one ``fold_*`` folder."""
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file() and any(
        p.is_dir() and FOLD_RE.match(p.name) for p in path.iterdir())


def looks_like_nnunet(path: str | os.PathLike) -> bool:
    """Cheap check (no torch, nothing unpacked): is ``path`` an nnU-Net v2 model folder, dataset folder or zip?"""
    p = Path(path)
    try:
        if p.is_dir():
            return bool(folder_roots(p))
        if p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                return bool(zip_roots([n.replace("\\", "/") for n in zf.namelist()]))
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def folder_roots(path: Path) -> list[Path]:
    """The model folders at ``path``: itself, its children, or those of its ``Dataset*`` children."""
    if is_model_folder(path):
        return [path]
    roots = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            if is_model_folder(child):
                roots.append(child)
            elif child.name.startswith("Dataset"):
                roots.extend(c for c in sorted(child.iterdir()) if c.is_dir() and is_model_folder(c))
    return roots


def zip_roots(names: list[str]) -> list[str]:
    """Folder prefixes (``''`` or ending in ``/``) in a zip that look like model folders (at most 3 levels deep)."""
    files = {n for n in names if not n.endswith("/")}
    prefixes = set()
    for n in files:
        parts = PurePosixPath(n).parts
        if parts[-1] == "plans.json" and len(parts) <= 4:
            prefix = "/".join(parts[:-1]) + "/" if len(parts) > 1 else ""
            if prefix + "dataset.json" in files and any(
                    n2.startswith(prefix) and FOLD_RE.match(PurePosixPath(n2[len(prefix):]).parts[0])
                    for n2 in files if len(PurePosixPath(n2[len(prefix):]).parts) > 1):
                prefixes.add(prefix)
    return sorted(prefixes)


def pick_model(candidates: list[str], configuration: str | None, where: str) -> str:
    """The model folder (by folder name) that ``configuration`` selects among ``candidates``."""
    def name_of(c):
        return PurePosixPath(c.rstrip("/")).name if c.rstrip("/") else ""

    if not candidates:
        raise FormatError(f"{where} is not an nnU-Net v2 model: no folder with dataset.json, plans.json and fold_* "
                          "folders was found (expected <trainer>__<plans>__<configuration>/, or the Dataset folder "
                          "above it, or a zip of either).")
    if configuration is not None:
        chosen = [c for c in candidates if name_of(c) == configuration
                  or ((m := MODEL_FOLDER_RE.match(name_of(c))) and m["configuration"] == configuration)]
        if len(chosen) != 1:
            raise FormatError(f"{where}: {'no' if not chosen else 'more than one'} model folder matches "
                              f"{configuration!r}; it has {', '.join(name_of(c) or '.' for c in candidates)}.")
        return chosen[0]
    if len(candidates) > 1:
        raise FormatError(f"{where} holds several nnU-Net models ({', '.join(name_of(c) for c in candidates)}); "
                          "choose one by its configuration (e.g. 3d_fullres) or folder name.")
    return candidates[0]


def fold_key(f: str | int) -> str:
    """``'3'``, ``'all'`` from 3, ``'fold_3'``, ``'all'``; anything else is refused."""
    s = str(f)
    s = s[len("fold_"):] if s.startswith("fold_") else s
    if not (s == "all" or s.isdigit()):
        raise FormatError(f"Folds are numbers or 'all', not {f!r}.")
    return str(int(s)) if s.isdigit() else s


def fold_sort(f: str) -> tuple:
    """Numbered folds in order, ``all`` last."""
    return (1, 0) if f == "all" else (0, int(f))


def folds_with(entries: list[str], has_checkpoint: Callable[[str], bool]) -> dict[str, bool]:
    """``{fold: has the checkpoint}`` for every ``fold_*`` entry name."""
    out = {}
    for e in entries:
        m = FOLD_RE.match(e)
        if m:
            out[fold_key(m["fold"])] = bool(has_checkpoint(e))
    return dict(sorted(out.items(), key=lambda kv: fold_sort(kv[0])))


def choose_folds(present: dict[str, bool], folds: list | None, checkpoint: str,
                 where: str) -> tuple[list[str], list[str]]:
    """The folds to read (default: all with the checkpoint) and warnings about those left out."""
    with_ckpt = [f for f, ok in present.items() if ok]
    if folds is None:
        if not with_ckpt:
            raise FormatError(f"{where}: no fold has {checkpoint} (fold folders: "
                              f"{', '.join('fold_' + f for f in present) or 'none'}). Pass the checkpoint file name "
                              "if the model was saved under another one (e.g. checkpoint_best.pth).")
        skipped = [f for f, ok in present.items() if not ok]
        warnings = [f"fold_{f} has no {checkpoint} and is left out." for f in skipped]
        return with_ckpt, warnings
    chosen = []
    for f in folds:
        key = fold_key(f)
        if key not in present:
            raise FormatError(f"{where}: fold {key} was asked for but there is no fold_{key} (folds present: "
                              f"{', '.join(present) or 'none'}).")
        if not present[key]:
            raise FormatError(f"{where}: fold_{key} has no {checkpoint}.")
        if key not in chosen:
            chosen.append(key)
    if not chosen:
        raise FormatError(f"{where}: no folds were asked for.")
    return chosen, []
