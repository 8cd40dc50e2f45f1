"""How a model reads to people: its heading, what it was measured at, and whether it is only a demonstration.

Everything comes from the manifest's card fields (``title``, ``body_region``, ``provenance``), so the panel,
its tooltip and `unetseg models` say the same thing. Plain text, never a raw dict; figures are the model's
own measurements, never a variant's figures from other data. Torch-free: the Slicer panel calls it.
"""

from __future__ import annotations

from typing import Any

from unetseg.vocabulary import IMPORTED_VARIANT_TITLES, MODALITY_TITLES, VARIANT_TITLES

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
# The card's figures the tooltip lists, in order (a bundled sample's figure repeats one of these, so it is left out).
_FIGURES = (("heldout", "Held-out"), ("robustness", "Robustness check"), ("training", "Training set"))
# A bundled card's "leave-out-KEY" entries: Dice of the same recipe trained without group KEY, measured on KEY.
LEAVE_OUT_KIND = "leave-out-"


def title(package: Any) -> str:
    """The model's human name (the manifest's ``title``), else its catalog name."""
    return str(package.manifest.get("title") or package.name)


def heading(package: Any) -> str:
    """Name, modality, body region and variant: "Spinal cord (T2) — MRI, spine, Attention U-Net"."""
    manifest = package.manifest
    parts = [
        MODALITY_TITLES.get(package.modality, package.modality),
        manifest.get("body_region"),
        VARIANT_TITLES.get(package.variant) or IMPORTED_VARIANT_TITLES.get(package.variant, package.variant),
        "2D" if package.spatial_dims == 2 else None,
    ]
    return f"{title(package)} — " + ", ".join(p for p in parts if p)


def measured(package: Any) -> str:
    """One sentence: the model's held-out Dice and on what, or plainly that it has none."""
    metrics = package.provenance.get("metrics") or {}
    robustness = metrics.get("robustness")
    held = [entry for _, entry in heldout_figures(metrics)]
    if held:
        return "Held-out mean Dice " + "; ".join(f"{e['mean_dice']:.2f} ({_about(e)})" for e in held) + "."
    if _has_dice(robustness):
        return (
            f"Not measured on held-out data; mean Dice {robustness['mean_dice']:.2f} on a robustness check "
            f"({_about(robustness)})."
        )
    if isinstance(metrics.get("dice_mean"), (int, float)):  # the trainer's own validation figures
        return f"Validation mean Dice {metrics['dice_mean']:.2f} ({metrics.get('evaluated_on', 'cases not stated')})."
    return "Its card records no Dice."


def demonstration_note(package: Any) -> str:
    """For a demonstration model (the bundled ones): what it was trained on and that it is not for clinical use."""
    provenance = package.provenance
    if not provenance.get("demonstration"):
        return ""
    subjects = provenance.get("subjects")
    whom = (
        f"{_NUMBER_WORDS.get(subjects, subjects)} subject{'s' if subjects != 1 else ''}"
        if isinstance(subjects, int)
        else f"{provenance.get('cases', '?')} case(s)"
    )
    return f"Demonstration model trained on {whom}: not validated on other patients; not for clinical use."


def info_line(package: Any) -> str:
    """The panel's line under the model list: labels, the measured figure and the demonstration note."""
    labels = ", ".join(label.name for label in package.labels)
    return " ".join(filter(None, [f"Labels: {labels}.", measured(package), demonstration_note(package)]))


def tooltip(package: Any) -> str:
    """A readable multi-line description: heading, inputs and labels, every measured figure, provenance."""
    provenance = package.provenance
    lines = [
        heading(package),
        f"Catalog name {package.name}, version {package.version}.",
        f"Reads: {', '.join(package.input_names)}. Labels: {', '.join(label.name for label in package.labels)}.",
    ]
    metrics = provenance.get("metrics") or {}
    figures = [*heldout_figures(metrics), *((what, metrics.get(kind)) for kind, what in _FIGURES[1:])]
    shown = [(what, entry) for what, entry in figures if _has_dice(entry)]
    for what, entry in shown:
        values = ", ".join(f"{name} {value:.2f}" for name, value in entry.get("dice", {}).items())
        lines.append(f"{what} Dice: {values or round(entry['mean_dice'], 2)} — {_about(entry)}.")
    if not shown:
        lines.append(measured(package))
    if provenance.get("training_data"):
        cases = provenance.get("cases")
        details = [f"{cases} case{'s' if cases != 1 else ''}" if isinstance(cases, int) else "",
                   f"licence {provenance['licence']}" if provenance.get("licence") else ""]
        extra = ", ".join(filter(None, details))
        lines.append(f"Trained on {provenance['training_data']}" + (f" ({extra})." if extra else "."))
    lines.append(demonstration_note(package))
    return "\n".join(filter(None, lines))


def heldout_figures(metrics: dict) -> list[tuple[str, dict]]:
    """The card's held-out figures with what to call them: its own held-out cases, then each leave-one-out
    model's (the same recipe trained without one subject or contrast, measured on it)."""
    own = [("Held-out", metrics["heldout"])] if _has_dice(metrics.get("heldout")) else []
    leave_outs = [("Held-out (leave-one-out)", metrics[k]) for k in sorted(metrics)
                  if k.startswith(LEAVE_OUT_KIND) and _has_dice(metrics[k])]
    return own + leave_outs


def heldout_figure_on(package: Any, sample: str) -> dict | None:
    """The card's held-out entry measured on exactly one case, bundled sample `sample` (its reference file is
    ``<sample>.nii.gz``), or None: what the demo and the self-test reproduce on the shipped unseen case."""
    for _, entry in heldout_figures(package.provenance.get("metrics") or {}):
        if [str(c.get("label", "")).rsplit("/", 1)[-1] for c in entry.get("cases", [])] == [f"{sample}.nii.gz"]:
            return entry
    return None


def _has_dice(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("mean_dice"), (int, float))


def _about(entry: dict) -> str:
    """What a metrics entry was measured on (its description, without a leading "none: ")."""
    return str(entry.get("description") or "cases not stated").removeprefix("none: ")
