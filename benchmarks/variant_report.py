"""The variant comparison's results: summaries with error bars, the noise rule, the Markdown report and plots.

Everything here reads the run records of `variant_runs.run_job`; nothing is typed by hand except the
literature's figures in `LITERATURE`, each with its source.
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

FORMAT = "unetseg-variants/2"  # /2: provenance per setting
MARKDOWN, RESULTS = "variants.md", "variants.json"
DICE_PLOT, CURVES_PLOT = "variants_dice_vs_params.png", "variants_training_curves.png"
NOISE_SE = 2.0  # differences within this many combined standard errors (or the seed spread) are noise
MIN_CASES_TO_RANK = 3  # with fewer evaluation cases a standard deviation means nothing: no ranking is claimed

# The seed chapter's table (typical Dice from the literature) and the sourced figures behind it
# (/work/shared/docs/nnunet-monai-notes.md §3 and §7 "Numbers to beat").
LITERATURE = {
    "unet": ("~0.85–0.90", "Pancreas CT-150: U-Net 0.814 ± 0.116 (Oktay et al. 2018, arXiv 1804.03999; notes §3.4)"),
    "vnet": ("~0.87", "PROMISE12 prostate MRI: 0.869 ± 0.033 Dice, HD 5.71 ± 1.20 mm (Milletari et al. 2016, "
             "arXiv 1606.04797, Table 2; notes §3.4)"),
    "unetpp": ("U-Net + ~3.9 IoU", "+3.9 IoU points over U-Net on average over LIDC nodules, nuclei, liver, polyps "
               "(Zhou et al. 2018, arXiv 1807.10165; notes §3.4)"),
    "attention_unet": ("~0.84 (pancreas)", "Pancreas CT-150: 0.840 ± 0.087 vs U-Net 0.814 (Oktay et al. 2018; "
                       "notes §3.4)"),
    "nnunet": ("~0.90+", "MSD test Dice: spleen 0.96, hippocampus 0.90/0.89, heart 0.93, BrainTumour 0.68/0.48/0.68 "
               "(Isensee et al. 2018/2021; notes §3.1); BraTS 5-fold CV 91.24 (nnU-Net Revisited, "
               "arXiv 2404.09556; notes §3.2)"),
}


# ---------------------------------------------------------------------------------------------- summaries


def case_summary(record: dict) -> str:
    """One line of a run's mean Dice per region (for the console)."""
    regions = record["cases"][0]["regions"] if record["cases"] else {}
    means = {r: np.mean([c["regions"][r]["dice"] for c in record["cases"]]) for r in regions}
    return ", ".join(f"{r} Dice {m:.3f}" for r, m in means.items())


def stats(values: list[float | None]) -> dict:
    """Mean ± sample standard deviation of the finite values, with how many there were and were left out."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0, "excluded": len(values)}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite), "excluded": len(values) - len(finite)}


def summarise(runs: list[dict], regions: list[str], pixel_error: bool) -> dict:
    """One variant's figures over all its runs (seeds) and cases; the seed spread of each region's mean Dice."""
    cases = [c for run in runs for c in run["cases"]]
    summary = {
        "parameters": runs[0]["parameters"],
        "patch_size": runs[0]["patch_size"],
        "seeds": [run["seed"] for run in runs],
        "cases": len(runs[0]["cases"]),
        "iterations": stats([run["iterations"] for run in runs]),
        "epochs": stats([run["epochs"] for run in runs]),
        "train_wall_s": stats([run["train_wall_s"] for run in runs]),
        "trainer_wall_s": stats([run["trainer_wall_s"] for run in runs]),
        "train_cpu_s": stats([run["train_cpu_s"] for run in runs]),
        "inference_s_per_case": stats([run["inference_s_per_case"] for run in runs]),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "peak_gpu_mb": max((run["peak_gpu_mb"] for run in runs if run["peak_gpu_mb"] is not None), default=None),
        "dice": {r: stats([c["regions"][r]["dice"] for c in cases]) for r in regions},
        "hd95": {r: stats([c["regions"][r]["hd95"] for c in cases]) for r in regions},
        "seed_spread": {},
    }
    if pixel_error:
        summary["pixel_error"] = stats([c["pixel_error"] for c in cases])
    if len(runs) > 1:
        for r in regions:
            per_seed = [np.mean([c["regions"][r]["dice"] for c in run["cases"]]) for run in runs]
            summary["seed_spread"][r] = float(max(per_seed) - min(per_seed))
    return summary


def noise_threshold(a: dict, b: dict, region: str) -> float:
    """The difference in mean Dice that the data cannot tell from noise: `NOISE_SE` combined standard errors
    (over the distinct evaluation cases: seeds re-use the same cases), or the larger seed spread of the two,
    whichever is larger; infinite with fewer than `MIN_CASES_TO_RANK` cases."""
    if min(a["cases"], b["cases"]) < MIN_CASES_TO_RANK:
        return math.inf
    se = [s["dice"][region]["std"] / math.sqrt(s["cases"]) for s in (a, b)]
    spread = max(a["seed_spread"].get(region, 0.0), b["seed_spread"].get(region, 0.0))
    return max(NOISE_SE * math.hypot(*se), spread)


def ranking_statement(summaries: dict[str, dict], region: str) -> str:
    """What the data say about the order of the variants on one region, claiming no more than the noise allows."""
    scored = {v: s for v, s in summaries.items() if s["dice"][region]["mean"] is not None}
    if len(scored) < 2:
        return f"{region}: fewer than two variants have a Dice; no comparison."
    order = sorted(scored, key=lambda v: scored[v]["dice"][region]["mean"], reverse=True)
    best = order[0]
    tied = [v for v in order[1:] if scored[best]["dice"][region]["mean"] - scored[v]["dice"][region]["mean"]
            <= noise_threshold(scored[best], scored[v], region)]
    lower = [v for v in order[1:] if v not in tied]
    mean = {v: f"{v} {scored[v]['dice'][region]['mean']:.3f}" for v in order}
    text = f"**{region}**: highest mean Dice {mean[best]}."
    if tied and min(s["cases"] for s in scored.values()) < MIN_CASES_TO_RANK:
        text += (f" Within noise of it: {', '.join(mean[v] for v in tied)} — with fewer than {MIN_CASES_TO_RANK} "
                 "evaluation cases the spread cannot be estimated, so no ranking is claimed.")
    elif tied:
        text += (f" Within noise of it: {', '.join(mean[v] for v in tied)} — the differences are smaller than "
                 f"{NOISE_SE:g} combined standard errors over cases (or the seed spread), so no ranking among "
                 "these is claimed.")
    if lower:
        text += f" Lower by more than that: {', '.join(mean[v] for v in lower)}."
    return text


def setting_section(setting, plans_path: Path, schedule: dict, runs: list[dict], missing: list[str]) -> dict:
    """A setting's part of the results: what was run on what, every run, and the per-variant summaries."""
    plan = json.loads(Path(plans_path).read_text(encoding="utf-8"))
    config = next(iter(plan["configurations"].values()))
    return analyse({
        "title": setting.title, "spatial_dims": setting.spatial_dims, "source": setting.source,
        "preparation": setting.preparation, "channels": setting.channel_names,
        "labels": {str(k): v for k, v in setting.labels.items()},
        "regions": {k: list(v) for k, v in setting.regions.items()},
        "pixel_error_region": setting.pixel_error_region, "distance_unit": setting.distance_unit,
        "anchors": setting.anchors,
        "train_cases": [c.name for c in setting.train], "eval_cases": [c.name for c in setting.evaluate],
        "plan": {k: config[k] for k in ("configuration", "target_spacing", "patch_size", "batch_size",
                                         "normalization", "features", "pool_strides")},
        "schedule": schedule,
        "runs": runs,
        "missing": missing,
    })


def analyse(section: dict) -> dict:
    """The section with its per-variant summaries and ranking statements (re)computed from its runs."""
    regions, runs = list(section["regions"]), section["runs"]
    pixel_error = section["pixel_error_region"] is not None
    summaries = {v: summarise([r for r in runs if r["variant"] == v], regions, pixel_error)
                 for v in dict.fromkeys(run["variant"] for run in runs)}
    return {**section, "summary": summaries, "ranking": [ranking_statement(summaries, r) for r in regions]}


def hardware(device: str) -> dict:
    """CPU model and cores, memory, torch version, and the GPU when one was used."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text(encoding="utf-8").splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform(), "device": device, "gpu": None}
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        info["memory_gb"] = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    if device in ("auto", "cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def results_document(sections: dict[str, dict], options: dict, command: str) -> dict:
    """The whole results file. Each setting's section carries its own provenance (command, options, hardware,
    date), so settings run in separate invocations — on different machines — can be merged into one report."""
    provenance = {
        "generated": _now(), "command": command, "hardware": hardware(options["device"]),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
    }
    return {
        "format": FORMAT,
        "generated": provenance["generated"],
        "synthetic": bool(options["synthetic"]),
        "settings": {key: {**section, "provenance": provenance} for key, section in sections.items()},
    }


def merge_documents(documents: list[tuple[str, dict]]) -> dict:
    """One results document from several (name, document) pairs, each setting kept with its own provenance.
    A setting in two documents, or synthetic mixed with real results, is refused: the report would be ambiguous."""
    settings: dict[str, dict] = {}
    origin: dict[str, str] = {}
    synthetic = {bool(doc["synthetic"]) for _, doc in documents}
    if len(synthetic) > 1:
        raise ValueError("cannot merge synthetic and real results into one report; pass one kind.")
    for name, doc in documents:
        if doc.get("format") != FORMAT:
            raise ValueError(f"{name} is in format {doc.get('format')!r}, not {FORMAT!r}: rerun the comparison "
                             "that wrote it.")
        for key, section in doc["settings"].items():
            if key in settings:
                raise ValueError(f"setting {key!r} is in both {origin[key]} and {name}; pass only one of them.")
            settings[key], origin[key] = analyse(section), name
    generated = max(s["provenance"]["generated"] for s in settings.values())
    return {"format": FORMAT, "generated": generated, "synthetic": synthetic.pop(), "settings": settings}


# ---------------------------------------------------------------------------------------------- Markdown


def _pm(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "–"
    text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return text + (f" ({s['excluded']} empty)" if s.get("excluded") else "")


def setting_markdown(key: str, section: dict) -> list[str]:
    """The setting's paragraph, its table and its ranking statements."""
    plan, unit, schedule = section["plan"], section["distance_unit"], section["schedule"]
    regions = list(section["regions"])
    head = ["variant", "parameters", "patch", "iterations (epochs)", "training s (with setup; CPU s)",
            "inference s/case", "peak RSS MB"]
    gpu = any(s["peak_gpu_mb"] is not None for s in section["summary"].values())
    head += ["peak GPU MB"] if gpu else []
    head += [f"{r} Dice" for r in regions] + [f"{r} HD95 ({unit})" for r in regions]
    if section["pixel_error_region"]:
        head.append(f"{section['pixel_error_region']} pixel error")
    lines = [
        f"## {section['title']} (`{key}`)", "",
        run_line(section["provenance"]),
        *[f"- Note: {note}" for note in section["provenance"].get("notes", [])],
        f"- Data: {section['source']}.",
        f"- Preparation: {section['preparation']}",
        f"- Training cases: {', '.join(section['train_cases'])}; evaluation cases: {', '.join(section['eval_cases'])}.",
        f"- Plan (made from the training cases only, shared by every variant): {plan['configuration']}, spacing "
        f"{[round(s, 3) for s in plan['target_spacing']]} mm, patch {plan['patch_size']} (rounded up to each "
        f"network's total stride where needed), batch {schedule.get('batch_size', plan['batch_size'])}; "
        f"planned for a {schedule['gpu_memory_gb']:g} GB memory budget; "
        f"{schedule['iterations_per_epoch']} iterations per epoch, validation (for the curve) on "
        f"{', '.join(schedule['monitor_cases'])} every {schedule['val_every']} epoch(s); seeds "
        f"{', '.join(map(str, schedule['seeds']))}.",
        "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for variant, s in section["summary"].items():
        row = [variant, f"{s['parameters']:,}", "×".join(map(str, s["patch_size"])),
               f"{s['iterations']['mean']:.0f} ({s['epochs']['mean']:.0f})",
               f"{s['trainer_wall_s']['mean']:.0f} ({s['train_wall_s']['mean']:.0f}; {s['train_cpu_s']['mean']:.0f})",
               f"{s['inference_s_per_case']['mean']:.2f}", f"{s['peak_rss_mb']:.0f}"]
        row += [f"{s['peak_gpu_mb'] or 0:.0f}"] if gpu else []
        row += [_pm(s["dice"][r]) for r in regions] + [_pm(s["hd95"][r], 1) for r in regions]
        if section["pixel_error_region"]:
            row.append(_pm(s["pixel_error"], 4))
        lines.append("| " + " | ".join(row) + " |")
    spreads = {v: s["seed_spread"] for v, s in section["summary"].items() if s["seed_spread"]}
    lines.append("")
    if section.get("missing"):
        lines += [f"Not run (the session's time ran out before them): {', '.join(section['missing'])}.", ""]
    if spreads:
        lines.append("Seed spread (largest minus smallest per-seed mean Dice): " + "; ".join(
            f"{v}: " + ", ".join(f"{r} {d:.3f}" for r, d in sp.items()) for v, sp in spreads.items()) + ".")
    else:
        lines.append("One seed per variant: the seed-to-seed spread was not measured for this setting.")
    lines += ["", "What the numbers support:", ""] + [f"- {text}" for text in section["ranking"]]
    iterations = {v: s["iterations"]["mean"] for v, s in section["summary"].items()}
    if iterations and max(iterations.values()) > 1.5 * min(iterations.values()):
        lines.append(f"- The same wall-clock budget bought unequal training (iterations "
                     f"{', '.join(f'{v} {n:.0f}' for v, n in iterations.items())}): a network that is slower per "
                     "step gets fewer updates, which this comparison counts against it (on a shared machine, load "
                     "may add to the difference).")
    lines += ["", "Published figures for this kind of task (other data, full budgets, for orientation only): "
              + "; ".join(section["anchors"]) + "."]
    return [*lines, ""]


def run_line(provenance: dict) -> str:
    """Where, how long and by which command a setting was run (one Markdown bullet)."""
    hw, opts = provenance["hardware"], provenance["options"]
    device = f"GPU {hw['gpu']}" if hw["gpu"] else f"CPU ({hw['device']})"
    memory = f", {hw['memory_gb']} GB RAM" if hw.get("memory_gb") else ""
    return (f"- Run: **{opts['budget_min']:g} min wall clock of training per run** on {device}; host {hw['cpu']}, "
            f"{hw['cores']} cores{memory}; torch {hw['torch']}, Python {hw['python']}; "
            f"{opts.get('workers') or 0} data-loading workers; {provenance['generated']}; "
            f"command `{provenance['command']}`.")


def markdown(results: dict) -> str:
    """The whole report."""
    provenances = [s["provenance"] for s in results["settings"].values()]
    commands = list(dict.fromkeys(p["command"] for p in provenances))
    base_features = sorted({p["options"]["base_features"] for p in provenances})
    lines = [
        "# The U-Net variants, measured", "",
        f"Generated by `benchmarks/compare_variants.py` on {results['generated']} — do not edit by hand. "
        "Reproduce every number with" + (" (one invocation per setting; `--report-only` with their "
                                         "variants.json files merges them into this report)" if len(commands) > 1
                                         else "") + ":",
        "", "```", *commands, "```", "",
        "## Setup", "",
        "- Budget: the same wall clock of training for every variant of a setting (the trainer's loop with its "
        "validation; preprocessing excluded; the figure and the hardware are given per setting below). A faster "
        "network gets more iterations in the same time — that is part of what an equal-time comparison measures; "
        "the iterations column says what each run got. 'training s' is the trainer's clock that the budget "
        "stops (its loop and validation; it overshoots by at most one step or one validation); in brackets the "
        "whole training call with its setup (reading the cache, starting data workers) and its CPU seconds.",
        "- Same for every variant: the data split, the plan (spacing, normalisation, patch size where the "
        "network's stride allows, batch size), the trainer's augmentation (nnU-Net's), Dice + cross-entropy, SGD "
        "with Nesterov momentum and poly decay over the budget, foreground oversampling, and "
        f"**{' / '.join(map(str, base_features))} features at full "
        "resolution** (width = that over the paper's first level: 64 for U-Net / U-Net++ / Attention U-Net, 16 "
        "for V-Net, nnU-Net's planned 32; nnU-Net keeps its planned stages, kernels and strides). Deep "
        "supervision where the trainer uses it by default (unet, nnunet).",
        "- Validation curves are measured on (some of) the evaluation cases; they never select weights (every "
        "variant is evaluated with its final weights), so they monitor, they do not tune.",
        "- Evaluation: `inference.segment` (no test-time augmentation, no post-processing) on the evaluation "
        "cases, scored by `metrics.compute_metrics` on the grid the cases were given on. Cells are mean ± "
        "standard deviation over evaluation cases (pooled over seeds); HD95 leaves out cases where the "
        "prediction or the reference is empty (counted in brackets).",
        "",
    ]
    if results["synthetic"]:
        lines += ["> **Synthetic phantoms**: a check of the pipeline, not a comparison of the variants.", ""]
    for key, section in results["settings"].items():
        lines += setting_markdown(key, section)
    lines += ["## The seed chapter's table, with sources", "",
              "| variant | typical Dice quoted | sourced figure |", "|---|---|---|"]
    lines += [f"| {v} | {quoted} | {source} |" for v, (quoted, source) in LITERATURE.items()]
    lines += ["", "These come from full training (hours to days on GPUs) on other, larger datasets; the measured "
              "rows above come from minutes of training on a few cases, so they show how the variants compare "
              "under a small, equal budget — not what each can reach.", "",
              "## Plots", "", f"![Dice versus parameters]({DICE_PLOT})", "",
              f"![Training curves]({CURVES_PLOT})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots


def _device_name(provenance: dict) -> str:
    return provenance["hardware"]["gpu"] or "CPU"


def _colours(variants: list[str]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    order = ["unet", "vnet", "unetpp", "attention_unet", "nnunet"]
    return {v: cmap(order.index(v) if v in order else i) for i, v in enumerate(variants)}


def plot_dice_vs_params(results: dict, path: Path) -> Path:
    """Mean Dice (± std over cases) of every region against parameter count, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import NullFormatter

    settings = results["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    markers = "osD^vP"
    for ax, section in zip(axes[0], settings.values(), strict=True):
        colours = _colours(list(section["summary"]))
        for i, region in enumerate(section["regions"]):
            for variant, s in section["summary"].items():
                d = s["dice"][region]
                if d["mean"] is None:
                    continue
                ax.errorbar(s["parameters"], d["mean"], yerr=d["std"], fmt=markers[i % len(markers)],
                            color=colours[variant], capsize=3, label=f"{variant} · {region}")
        budget = section["provenance"]["options"]["budget_min"]
        ax.set(xscale="log", xlabel="parameters", ylabel="Dice (mean ± std over cases)", ylim=(0, 1.02),
               title=f"{section['title']}\n{budget:g} min per run on {_device_name(section['provenance'])}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("Dice versus parameter count (same training budget for every variant of a setting)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_points(run: dict) -> tuple[list, list, list, list]:
    """Training loss and validation Dice against seconds of training (the trainer's clock)."""
    events = run["curve"]
    epochs = [e for e in events if e["stage"] == "epoch" and "elapsed_s" in e]
    offset = epochs[0]["t"] - epochs[0]["elapsed_s"] if epochs else (events[0]["t"] if events else 0.0)
    loss = [(e["t"] - offset, e.get("loss", e.get("train_loss"))) for e in events if e["stage"] == "train"]
    dice = [(e["elapsed_s"], e["val_dice"]) for e in epochs if "val_dice" in e]
    return [t for t, _ in loss], [v for _, v in loss], [t for t, _ in dice], [v for _, v in dice]


def plot_training_curves(results: dict, path: Path) -> Path:
    """Per setting: training loss and validation Dice against time, one line per run (seeds dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    settings = results["settings"]
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.6 * len(settings)), squeeze=False)
    for row, section in zip(axes, settings.values(), strict=True):
        colours = _colours(list(section["summary"]))
        for run in section["runs"]:
            t_loss, loss, t_dice, dice = curve_points(run)
            style = "-" if run["seed"] == section["runs"][0]["seed"] else "--"
            label = f"{run['variant']} (seed {run['seed']})"
            row[0].plot(t_loss, loss, linestyle=style, marker=".", color=colours[run["variant"]], label=label, lw=1,
                        ms=3)
            row[1].plot(t_dice, dice, linestyle=style, marker="o", color=colours[run["variant"]], label=label, ms=3,
                        lw=1)
        row[0].set(xlabel="training time (s)", ylabel="training loss (Dice + CE)", title=f"{section['title']}: loss")
        row[1].set(xlabel="training time (s)", ylabel="validation Dice (mean over classes)", ylim=(0, 1.02),
                   title=f"{section['title']}: validation Dice")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- files


def write_json(results: dict, path: Path) -> Path:
    """The results as JSON (strict: no NaN or infinity), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_outputs(results: dict, out_dir: Path) -> list[Path]:
    """variants.md, variants.json and both plots in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKDOWN).write_text(markdown(results), encoding="utf-8")
    return [out_dir / MARKDOWN, write_json(results, out_dir / RESULTS),
            plot_dice_vs_params(results, out_dir / DICE_PLOT), plot_training_curves(results, out_dir / CURVES_PLOT)]
