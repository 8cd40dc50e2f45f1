"""The cases of a cohort: from a folder, a glob or a CSV/TSV list, each with its input files and its output path.

- A folder: every image file in it (NIfTI, NRRD, MHA/MHD) and every sub-folder (a DICOM series) is a case.
- A glob (``"scans/*.nii.gz"``, ``"study/**/ct.nrrd"``): every matching image file or folder is a case.
- A CSV or TSV list with a header row: the first column is the case id, a column named ``output`` (optional)
  the output path (relative to ``-o OUT_DIR``), every other column one input, in the model's input order;
  relative input paths are relative to the list's folder.

A model reading several inputs takes them, in a folder or glob, from nnU-Net's names: ``CASE_0000.nii.gz``,
``CASE_0001.nii.gz``, … (``_0000`` alone is stripped for a one-input model too). A case that cannot run — a
missing channel, an empty cell — keeps its ``problem`` and is recorded as failed without being run.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unetseg.io import LABEL_MAP_SUFFIXES, SEGMENTATION_SUFFIX
from unetseg.io.dicom_seg import DICOM_SEG_SUFFIX

# Output formats a cohort writes (``--format``), by name; a single case takes its format from -o's extension.
OUTPUT_FORMATS = {
    "seg.nrrd": SEGMENTATION_SUFFIX,
    **{suffix[1:]: suffix for suffix in LABEL_MAP_SUFFIXES},
    "dicom-seg": DICOM_SEG_SUFFIX,
}
OUTPUT_SUFFIXES = tuple(OUTPUT_FORMATS.values())
DEFAULT_FORMAT = "seg.nrrd"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LIST_SUFFIXES = (".csv", ".tsv")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class Case:
    """One case: its id, its input paths (in the model's order), its output path, and why it cannot run (if so)."""

    id: str
    inputs: tuple[str, ...]
    output: str
    problem: str | None = None


def is_cohort(inputs: Sequence[str]) -> bool:
    """True when the one ``-i`` names a cohort: a CSV/TSV list, a glob, or a folder that is not a DICOM series."""
    if len(inputs) != 1:
        return False
    path = Path(inputs[0]).expanduser()
    if path.is_file():
        return path.name.lower().endswith(LIST_SUFFIXES)
    if path.is_dir():
        return not holds_dicom_files(path)
    return any(c in inputs[0] for c in _GLOB_CHARACTERS)


def holds_dicom_files(folder: Path) -> bool:
    """Whether a folder holds DICOM files itself (``.dcm``, or the ``DICM`` marker at byte 128): a series, one case."""
    for entry in folder.iterdir():
        name = entry.name.lower()
        if name.startswith(".") or not entry.is_file() or name.endswith(IMAGE_SUFFIXES):
            continue
        if name.endswith(".dcm"):
            return True
        with entry.open("rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                return True
    return False


def output_suffix(output_format: str | None) -> str:
    """The file suffix of an output format name (``--format``); the default writes Slicer segmentations."""
    name = DEFAULT_FORMAT if output_format is None else output_format
    if name not in OUTPUT_FORMATS:
        raise ValueError(f"Unknown output format {name!r}; choose one of {', '.join(OUTPUT_FORMATS)}.")
    return OUTPUT_FORMATS[name]


def find_cases(source: str, out_dir: Path, input_names: Sequence[str], suffix: str) -> list[Case]:
    """The cases of a folder, glob or CSV/TSV list; outputs are ``OUT_DIR/<case id><suffix>`` unless listed."""
    path = Path(source).expanduser()
    if path.is_file():
        cases = _listed_cases(path, out_dir, input_names, suffix)
    elif path.is_dir():
        if path.absolute() == out_dir.absolute():
            raise ValueError(f"The output folder is the input folder {path}: give -o a folder of its own.")
        cases = _entry_cases(_image_entries(sorted(path.iterdir())), out_dir, input_names, suffix)
        if not cases:
            raise ValueError(
                f"Folder {path} holds no DICOM series, no image files ({', '.join(IMAGE_SUFFIXES)}) and no "
                "sub-folders: give an image file, a DICOM series folder, or a folder of cases."
            )
    else:
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        cases = _entry_cases(_image_entries(matches), out_dir, input_names, suffix)
        if not cases:
            raise ValueError(f"No image file or folder matches {source!r}.")
    _check_unique(cases)
    return cases


def _image_entries(paths: list[Path]) -> list[Path]:
    """Image files and folders (DICOM series), without hidden entries and Slicer segmentations (earlier outputs)."""
    return [
        p for p in paths
        if not p.name.startswith(".") and not p.name.lower().endswith(SEGMENTATION_SUFFIX)
        and (p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES))
    ]  # fmt: skip


def _entry_cases(entries: list[Path], out_dir: Path, input_names: Sequence[str], suffix: str) -> list[Case]:
    """Cases from image files and DICOM folders, grouping nnU-Net channel files (``CASE_0000``) by case."""
    names = _case_names(entries)
    channels = {entry: _CHANNEL.match(name) for entry, name in names.items()}
    only_first = all(m is not None and m["channel"] == "0000" for m in channels.values())
    grouped: dict[str, dict[int, Path]] = defaultdict(dict)
    for entry, name in names.items():
        match = channels[entry]
        if match is not None and (len(input_names) > 1 or only_first):
            grouped[match["case"]][int(match["channel"])] = entry
        else:
            grouped[name][0 if len(input_names) == 1 else -1] = entry
    return [
        Case(case_id, tuple(str(files[c].absolute()) for c in sorted(files)), str(out_dir / f"{case_id}{suffix}"),
             _channel_problem(case_id, sorted(files), input_names))
        for case_id, files in sorted(grouped.items())
    ]  # fmt: skip


def _case_names(entries: list[Path]) -> dict[Path, str]:
    """Each entry's case name: its name without the image suffix, or its path below the common folder when
    names repeat (``p1/ct.nii.gz``, ``p2/ct.nii.gz`` → ``p1-ct``, ``p2-ct``)."""
    names = {entry: _strip_suffix(entry.name) for entry in entries}
    if len(set(names.values())) == len(names) or len(entries) < 2:
        return names
    root = Path(os.path.commonpath([str(e.absolute()) for e in entries]))
    return {e: "-".join(_strip_suffix(str(e.absolute().relative_to(root))).split(os.sep)) for e in entries}


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    return next((name[: -len(s)] for s in IMAGE_SUFFIXES if lower.endswith(s)), name)


def _channel_problem(case_id: str, channels: list[int], input_names: Sequence[str]) -> str | None:
    """Why a case's files do not give the model its inputs (None when they do)."""
    if channels == list(range(len(input_names))):
        return None
    wanted = ", ".join(f"{case_id}_{c:04d} ({name})" for c, name in enumerate(input_names))
    found = ", ".join("one file without a _NNNN channel number" if c < 0 else f"_{c:04d}" for c in channels)
    return (
        f"Wrong channels: the model reads {len(input_names)} input(s), named {wanted}; this case has {found}. "
        "Name one file per input so, or list the cases in a CSV file."
    )


def _listed_cases(path: Path, out_dir: Path, input_names: Sequence[str], suffix: str) -> list[Case]:
    """Cases from a CSV/TSV list: id, one column per input (model order), an optional ``output`` column."""
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle, delimiter=delimiter) if any(row)]
    if len(rows) < 2:
        raise ValueError(f"Case list {path} needs a header row (id, one column per input, optional 'output') "
                         "and at least one case.")  # fmt: skip
    header = rows[0]
    output_column = next((i for i, name in enumerate(header) if i and name.lower() == "output"), None)
    input_columns = [i for i in range(1, len(header)) if i != output_column]
    if len(input_columns) != len(input_names):
        raise ValueError(
            f"Case list {path} has {len(input_columns)} input column(s) ({', '.join(header[i] for i in input_columns)})"
            f" but the model reads {len(input_names)} ({', '.join(input_names)}), in that order."
        )
    cases = []
    for number, row in enumerate(rows[1:], start=2):
        cells = row + [""] * (len(header) - len(row))
        case_id = cells[0] or f"row{number}"
        inputs = tuple(str((path.parent / Path(cells[i]).expanduser()).absolute()) if cells[i] else ""
                       for i in input_columns)  # fmt: skip
        listed = cells[output_column] if output_column is not None else ""
        output = out_dir / Path(listed).expanduser() if listed else out_dir / f"{case_id}{suffix}"
        cases.append(Case(case_id, inputs, str(output.absolute()), _row_problem(case_id, cells, header, input_columns,
                                                                                 output)))  # fmt: skip
    return cases


def _row_problem(
    case_id: str, cells: list[str], header: list[str], input_columns: list[int], output: Path
) -> str | None:
    """Why a listed case cannot run: an id that is not a plain name, an empty input cell, an unknown output type."""
    if not cells[0] or Path(case_id).name != case_id or case_id in (".", ".."):
        return f"Case id {case_id!r} must be a plain name (no folder separators)."
    empty = [header[i] for i in input_columns if not cells[i]]
    if empty:
        return f"No file given for input column(s) {', '.join(empty)}."
    if not output.name.lower().endswith(OUTPUT_SUFFIXES):
        return f"Unsupported output extension for {output.name}: use one of {', '.join(OUTPUT_SUFFIXES)}."
    return None


def _check_unique(cases: list[Case]) -> None:
    """Refuse two cases with one id or one output: one would overwrite the other."""
    for key, what in ((lambda c: c.id, "case id"), (lambda c: c.output, "output")):
        seen: dict[str, str] = {}
        for case in cases:
            if key(case) in seen:
                raise ValueError(
                    f"Two cases share the {what} {key(case)!r} ({seen[key(case)]} and "
                    f"{', '.join(case.inputs) or case.id}): rename one, or give outputs in a CSV list."
                )
            seen[key(case)] = ", ".join(case.inputs) or case.id
