"""`unetseg evaluate PRED_DIR REF_DIR`: per-case, per-label Dice, IoU, HD95 and ASSD of two label-map folders.

Cases are matched by file name without its image extension (``case_001.nii.gz`` ↔ ``case_001.seg.nrrd``), so
predictions may be written in another format than the references. Every metric comes from
`metrics.compute_metrics` (its empty-mask conventions apply). A reference without a prediction counts as an
empty prediction (Dice 0) and is listed, so a missing case can never flatter the summary; a prediction
without a reference is listed and ignored. Distances that are infinite (one mask empty) are counted apart and
left out of the distance means.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from unetseg.evaluation.metrics import compute_metrics
from unetseg.image import LabelImage
from unetseg.io import atomic_write, read_label_image

# Longest first, so ".seg.nrrd" wins over ".nrrd".
EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff")
COLUMNS = ("case", "label", "name", "dice", "iou", "hd95", "assd", "hd", "volume_pred_ml", "volume_ref_ml",
           "volume_diff_ml", "flag", "prediction")
_MEANS = ("dice", "iou", "hd95", "assd")


def case_name(path: Path) -> str | None:
    """The case name of a label-map file (its name without the image extension), or None if not an image."""
    lower = path.name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext):
            return path.name[: -len(ext)]
    return None


def label_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Case name → file for every label map in a folder (hidden files skipped); duplicates are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of label maps.")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path) if path.is_file() and not path.name.startswith(".") else None
        if name is None:
            continue
        if name in files:
            raise ValueError(f"Case {name!r} has two files in {folder}: {files[name].name} and {path.name}; keep one.")
        files[name] = path
    if not files:
        raise ValueError(f"{folder} holds no label maps ({', '.join(EXTENSIONS)}).")
    return files


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                     out_csv: str | os.PathLike | None = None) -> dict:
    """Compare every reference with its prediction; write the per-case, per-label CSV; return the summary.

    The summary holds ``cases``, ``missing_predictions``, ``unmatched_predictions``, ``labels`` (value →
    name, mean and std of Dice and IoU over cases, mean HD95 and ASSD in mm over cases where they are
    finite, and ``infinite_distances``), ``mean_dice`` (over labels) and ``csv`` (the CSV's path).
    """
    preds, refs = label_files(pred_dir), label_files(ref_dir)
    rows: list[dict] = []
    names: dict[int, str] = {}
    for case, ref_path in refs.items():
        ref = read_label_image(ref_path)
        pred = _prediction(preds.get(case), ref, case)
        for value, name in {**_label_names(pred), **_label_names(ref)}.items():
            names.setdefault(value, name)
        present = {int(v) for v in np.unique(ref.image.array)} | {int(v) for v in np.unique(pred.image.array)}
        values = sorted(present - {0})
        spacing_zyx = tuple(reversed(ref.image.spacing))
        metrics = compute_metrics(pred.image.array, ref.image.array, values, spacing_zyx)
        rows.extend({"case": case, "label": value, "prediction": "" if case in preds else "missing", **m}
                    for value, m in metrics.items())
    for row in rows:
        row["name"] = names.get(row["label"], f"Label {row['label']}")
    csv_path = Path(out_csv) if out_csv is not None else Path(pred_dir) / "metrics.csv"
    write_csv(csv_path, rows)
    summary = summarise(rows, names)
    summary.update(cases=len(refs), missing_predictions=sorted(set(refs) - set(preds)),
                   unmatched_predictions=sorted(set(preds) - set(refs)), csv=str(csv_path))
    return summary


def _prediction(path: Path | None, ref: LabelImage, case: str) -> LabelImage:
    """The case's prediction, checked to lie on the reference grid (an empty one when it is missing)."""
    if path is None:
        return LabelImage(ref.image.with_array(np.zeros(ref.image.shape, dtype=np.uint8)), [])
    pred = read_label_image(path)
    if not pred.image.same_grid(ref.image):
        raise ValueError(
            f"Case {case!r}: the prediction {path.name} (size {pred.image.size}, spacing {pred.image.spacing}) is not "
            f"on the reference grid (size {ref.image.size}, spacing {ref.image.spacing}); write predictions on the "
            "reference image's grid (unetseg predict does)."
        )
    return pred


def _label_names(label_image: LabelImage) -> dict[int, str]:
    """Segment names a file really carries (a .seg.nrrd), not the generic "Label N" of plain label maps."""
    return {label.value: label.name for label in label_image.labels if label.name != f"Label {label.value}"}


def write_csv(path: Path, rows: list[dict]) -> Path:
    """The per-case, per-label table, written atomically."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    return path


def summarise(rows: list[dict], names: dict[int, str]) -> dict:
    """Per-label means (and Dice/IoU standard deviations) over cases; distances over finite values only."""
    labels = {}
    for value in sorted({row["label"] for row in rows}):
        mine = [row for row in rows if row["label"] == value]
        entry: dict = {"name": names.get(value, f"Label {value}"), "cases": len(mine)}
        for key in _MEANS:
            finite = [float(row[key]) for row in mine if math.isfinite(row[key])]
            entry[f"{key}_mean"] = float(np.mean(finite)) if finite else None
            if key in ("dice", "iou"):
                entry[f"{key}_std"] = float(np.std(finite)) if finite else None
        entry["infinite_distances"] = sum(not math.isfinite(row["hd95"]) for row in mine)
        labels[value] = entry
    dices = [entry["dice_mean"] for entry in labels.values()]
    return {"labels": labels, "mean_dice": float(np.mean(dices)) if dices else None}


def format_summary(summary: dict) -> str:
    """The summary as a small text table."""
    lines = [f"{summary['cases']} case(s); per label, mean over cases:",
             f"{'label':>5}  {'name':<24} {'Dice':>12} {'IoU':>7} {'HD95 mm':>8} {'ASSD mm':>8}"]
    for value, e in summary["labels"].items():
        lines.append(f"{value:>5}  {e['name'][:24]:<24} {_num(e['dice_mean'])} ±{_num(e['dice_std'], 4)} "
                     f"{_num(e['iou_mean'])} {_num(e['hd95_mean'], 8, 2)} {_num(e['assd_mean'], 8, 2)}"
                     + (f"  ({e['infinite_distances']} case(s) with an empty mask)" if e["infinite_distances"] else ""))
    if summary.get("mean_dice") is not None:
        lines.append(f"mean Dice over labels: {summary['mean_dice']:.4f}")
    if summary.get("missing_predictions"):
        lines.append(f"missing predictions (scored as empty): {', '.join(summary['missing_predictions'])}")
    if summary.get("unmatched_predictions"):
        lines.append(f"predictions without a reference (ignored): {', '.join(summary['unmatched_predictions'])}")
    lines.append(f"per-case table: {summary['csv']}")
    return "\n".join(lines)


def _num(value: float | None, width: int = 7, digits: int = 4) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"
