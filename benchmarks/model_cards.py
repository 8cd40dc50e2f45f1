"""Recompute every bundled model's stated metrics and check them against its card (model.json).

Each figure under ``provenance.metrics`` of a bundled model names the data it was measured on (cases of the
bundled training folders that ``bundled_datasets.py`` rebuilds, or a bundled sample); this script segments that
data again with the project's predictor (`inference.segment`, CPU), prints the table, and exits 1 if any figure
differs from its card by more than 0.02. ``--write-readme`` regenerates the README's bundled-models table.

    python benchmarks/model_cards.py [--data-root /work/bundled-data] [--shared-data ../shared/data] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from unetseg.models import card

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundled_datasets  # a sibling script

REPO_ROOT = bundled_datasets.REPO_ROOT
MODELS_DIR = REPO_ROOT / "UNetSegmentation" / "Resources" / "Models"
SAMPLE_DIR = bundled_datasets.SAMPLE_DIR
README = REPO_ROOT / "README.md"
TOLERANCE = 0.02
START, END = "<!-- models:start -->", "<!-- models:end -->"
TRAINING_ONLY = "training-set Dice only; not a measure of generalisation"
KINDS = ("heldout", "robustness", "training", "sample")
LEAVE_OUT_KIND = card.LEAVE_OUT_KIND  # entries "leave-out-KEY": measured by the model trained without group KEY


def leave_out_dir(data_root: Path) -> Path:
    """Where bundled_models.py keeps the leave-one-out models (not shipped: their figures are the card's)."""
    return data_root / "leave-out-models"


def sample_pairs(name: str) -> list[tuple[list[Path], Path]]:
    """The image(s) and reference of a bundled sample (samples.json)."""
    samples = {s["name"]: s for s in json.loads((SAMPLE_DIR / "samples.json").read_text(encoding="utf-8"))["samples"]}
    if name not in samples:
        raise ValueError(f"No bundled sample named {name!r}; samples.json has {', '.join(samples)}.")
    s = samples[name]
    return [([SAMPLE_DIR / f for f in s["images"]], SAMPLE_DIR / s["reference"])]


def case_pairs(cases: list[dict], data_root: Path, shared_data: Path) -> list[tuple[list[Path], Path]]:
    """Image/label paths of dataset cases (relative to the bundled data root), rebuilding missing folders."""
    pairs = [([data_root / p for p in c["images"]], data_root / c["label"]) for c in cases]
    for images, label in pairs:
        if not label.is_file() or not all(p.is_file() for p in images):
            bundled_datasets.build(label.relative_to(data_root).parts[0], shared_data, data_root)
    return pairs


def dice_by_name(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice per label name; the prediction and the reference use the model's label values."""
    from unetseg.evaluation.metrics import dice

    return {name: dice(pred == value, ref == value) for name, value in labels.items()}


def evaluate(package, pairs: list[tuple[list[Path], Path]], names: list[str]) -> dict[str, float]:
    """Mean (over cases) Dice of each named label of `package` on the image/reference pairs, on the CPU."""
    from unetseg.inference.predictor import segment
    from unetseg.io import read_image, read_label_image

    values = {label.name: label.value for label in package.labels}
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ValueError(f"Model {package.name} has no label(s) {unknown}; it has {list(values)}.")
    per_case = []
    for images, label in pairs:
        result = segment([read_image(p) for p in images], package, device="cpu")
        reference = read_label_image(label).image.array
        per_case.append(dice_by_name(result.image.array, reference, {n: values[n] for n in names}))
    return {n: float(np.mean([case[n] for case in per_case])) for n in names}


def measure(package, entry: dict, data_root: Path, shared_data: Path) -> dict[str, float]:
    """Recompute one metrics entry of a card (its "dice" per label name) on the data the entry names."""
    pairs = sample_pairs(entry["sample"]) if "sample" in entry else case_pairs(entry["cases"], data_root, shared_data)
    return evaluate(package, pairs, list(entry["dice"]))


def metric_entry(description: str, dice: dict[str, float], *, cases: list[dict] | None = None,
                 sample: str | None = None) -> dict:
    """A card's metrics entry: what it was measured on, Dice per label and their mean (rounded to 3 places)."""
    entry: dict = {"description": description}
    if sample is not None:
        entry["sample"] = sample
    if cases is not None:
        entry["cases"] = cases
    entry["dice"] = {n: round(v, 3) for n, v in dice.items()}
    entry["mean_dice"] = round(float(np.mean(list(dice.values()))), 3)
    return entry


def bundled_packages() -> list:
    """The bundled model packages (folders under Resources/Models), loaded and validated."""
    from unetseg.models.package import load_package

    if not MODELS_DIR.is_dir():
        return []
    return [load_package(f) for f in sorted(MODELS_DIR.iterdir()) if (f / "model.json").is_file()]


def ordered_kinds(metrics: dict) -> list[str]:
    """A card's metrics entries in reading order: held-out figures (own, then leave-one-out), then the rest."""
    leave_outs = sorted(k for k in metrics if k.startswith(LEAVE_OUT_KIND))
    return [k for k in KINDS[:1] if k in metrics] + leave_outs + [k for k in KINDS[1:] if k in metrics]


def check(packages: list, data_root: Path, shared_data: Path) -> tuple[list[dict], list[str]]:
    """One row per (model, metrics entry) with the card's and the recomputed mean Dice; and the mismatches.

    A leave-one-out entry is re-measured with its model from `leave_out_dir`; when that model is absent the row
    says so (``bundled_models.py NAME`` trains it) instead of a figure."""
    from unetseg.models.package import load_package

    rows, problems = [], []
    for pkg in packages:
        metrics = pkg.provenance.get("metrics", {})
        for kind in ordered_kinds(metrics):
            entry = metrics[kind]
            model = pkg
            if "model" in entry:
                folder = leave_out_dir(data_root) / entry["model"]
                if not (folder / "model.json").is_file():
                    rows.append({"model": pkg.name, "kind": kind, "card": entry["mean_dice"], "recomputed": None,
                                 "missing": f"{folder} absent: `python benchmarks/bundled_models.py {pkg.name}`"})
                    continue
                model = load_package(folder)
            got = measure(model, entry, data_root, shared_data)
            for name, stated in entry["dice"].items():
                if abs(got[name] - stated) > TOLERANCE:
                    problems.append(f"{pkg.name} {kind} Dice {name}: card {stated:.3f}, recomputed {got[name]:.3f}")
            rows.append({"model": pkg.name, "kind": kind, "card": entry["mean_dice"],
                         "recomputed": round(float(np.mean(list(got.values()))), 3)})
    return rows, problems


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6


def _dice_text(entry: dict | None) -> str:
    if entry is None:
        return "—"
    per = ", ".join(f"{n} {v:.2f}" for n, v in entry["dice"].items())
    return f"**{entry['mean_dice']:.2f}** ({per})" if len(entry["dice"]) > 1 else f"**{entry['mean_dice']:.2f}**"


def readme_table(packages: list) -> str:
    """The README's bundled-models table, every figure taken from the cards."""
    lines = [
        "| model | variant | dims | trained on | held-out Dice (measured on) | training-set Dice | size | training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pkg in packages:
        prov, metrics = pkg.provenance, pkg.provenance.get("metrics", {})
        held = [entry for _, entry in card.heldout_figures(metrics)]
        held_text = "; ".join(f"{_dice_text(e)} — {e['description']}" for e in held) or TRAINING_ONLY
        if "robustness" in metrics:
            held_text += f"; {metrics['robustness']['description']}: {_dice_text(metrics['robustness'])}"
        lines.append(
            f"| `{pkg.name}` | {pkg.variant} | {pkg.spatial_dims}D | {prov.get('training_data', '?')} "
            f"({prov.get('licence', '?')}) | {held_text} | {_dice_text(metrics.get('training'))} | "
            f"{_size_mb(pkg.path):.1f} MB | {prov.get('cpu_time_s', 0) / 60:.0f} min CPU, "
            f"{prov.get('wall_time_s', 0) / 60:.0f} min wall |"
        )
    total = sum(_size_mb(pkg.path) for pkg in packages)
    lines.append(f"\nAll bundled weights together: {total:.1f} MB. Regenerated by `python benchmarks/model_cards.py "
                 "--write-readme`, which also re-measures every figure.")
    return "\n".join(lines)


def write_readme(packages: list, readme: Path = README) -> None:
    """Replace the text between the README's models markers with the current table."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} … {END} markers; add them where the table belongs.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{readme_table(packages)}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=bundled_datasets.DEFAULT_OUT,
                        help="the bundled training folders (rebuilt there when missing)")
    parser.add_argument("--shared-data", type=Path, default=bundled_datasets.DEFAULT_DATA)
    parser.add_argument("--write-readme", action="store_true", help="regenerate the README's models table")
    args = parser.parse_args(argv)
    packages = bundled_packages()
    if not packages:
        print(f"No bundled models in {MODELS_DIR}.")
        return 1
    rows, problems = check(packages, args.data_root, args.shared_data)
    print(f"{'model':<22} {'metric':<18} {'card':>6} {'now':>6}")
    for r in rows:
        now = f"{r['recomputed']:>6.3f}" if r["recomputed"] is not None else f"  —    ({r['missing']})"
        print(f"{r['model']:<22} {r['kind']:<18} {r['card']:>6.3f} {now}")
    for p in problems:
        print("MISMATCH:", p)
    if args.write_readme:
        write_readme(packages)
        print(f"Wrote the bundled-models table into {README}.")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
