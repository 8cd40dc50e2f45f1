"""Which numeric precision the windows run in: what each engine and device supports, what a model is validated
for, the agreement rule, and the choice `auto` makes.

A model's manifest records, under ``inference.precision``, how its labels on a few windows of a sample changed in
each lower precision against fp32 (`unetseg.inference.precision_check` measures it at import or with
``unetseg models validate-precision``). A lower precision is *validated* when at least `MIN_FOREGROUND_AGREEMENT`
of the foreground voxels (foreground in either run) keep their label and every label present keeps a Dice of
`MIN_LABEL_DICE`. ``auto`` takes the fastest precision that the device computes natively and the model is
validated for; a model never validated keeps what the predictor did before: fp32 on the CPU, CUDA's bf16/fp16
autocast on a GPU. A run with TTA reads, for a precision judged again on the mirrored mean (``mirrored``), that
record. An explicit precision is honoured where the engine can run it. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unetseg.cpu_features import CpuFeatures
from unetseg.vocabulary import MIN_FOREGROUND_AGREEMENT, MIN_LABEL_DICE, PRECISIONS, check_choice

FP32 = "fp32"
# What each engine can run, per device type, fastest first (fp32 is always possible).
ENGINE_PRECISIONS = {
    ("torch", "cpu"): ("bf16", "fp16"),
    ("torch", "cuda"): ("bf16", "fp16"),
    ("torch", "mps"): (),
    ("onnx", "cpu"): ("int8",),
    ("onnx", "cuda"): (),
    ("openvino", "cpu"): ("bf16", "int8"),
}


# Where the records of each engine are: OpenVINO's bf16 and int8 kernels round differently from torch's autocast and
# ONNX Runtime's int8, so it is validated on its own ("openvino"); torch and ONNX Runtime share "checked".
RECORD_SETS = {"torch": "checked", "onnx": "checked", "openvino": "openvino"}
# Where the records of precisions judged again on a TTA model's mirrored mean are (the same sets inside).
MIRRORED = "mirrored"


def engine_records(records: dict | None, engine: str, mirrored: bool = False) -> dict:
    """The per-precision agreement records that hold for ``engine`` (empty when it was never checked); with
    ``mirrored`` (TTA runs) a precision judged again on the mirrored mean takes that record."""
    key = RECORD_SETS.get(engine, "checked")
    single = (records or {}).get(key, {})
    return {**single, **((records or {}).get(MIRRORED) or {}).get(key, {})} if mirrored else single


def without(records: dict | None, precision: str) -> dict | None:
    """``records`` with ``precision`` taken out of every record set (e.g. int8 whose export is not there)."""
    if records is None:
        return None

    def drop(section: dict) -> dict:
        return {key: ({k: v for k, v in value.items() if k != precision} if key in RECORD_SETS.values() else value)
                for key, value in section.items()}  # fmt: skip

    return {**drop(records), **({MIRRORED: drop(records[MIRRORED])} if MIRRORED in records else {})}


@dataclass(frozen=True)
class Choice:
    """The precision the windows run in, and why (for the progress log)."""

    precision: str
    reason: str


def native(precision: str, device_type: str, features: CpuFeatures, cuda_bf16: bool = False) -> bool:
    """Whether the device computes ``precision`` in hardware, i.e. faster than fp32."""
    if device_type == "cuda":
        return precision == "fp16" or (precision == "bf16" and cuda_bf16)
    if device_type != "cpu":
        return False
    return {"bf16": features.native_bf16, "fp16": features.native_fp16, "int8": features.int8_dot}.get(precision, False)


def validated(record: dict | None) -> bool:
    """Whether a precision's agreement record passes the rule."""
    return bool(record) and bool(record.get("validated"))


def passes(foreground_agreement: float, dice: dict[str, float | None]) -> bool:
    """The rule: foreground agreement and every present label's Dice at or above the thresholds."""
    scores = [d for d in dice.values() if d is not None]
    return foreground_agreement >= MIN_FOREGROUND_AGREEMENT and all(d >= MIN_LABEL_DICE for d in scores)


def choose(
    requested: str,
    engine: str,
    device_type: str,
    features: CpuFeatures,
    records: dict | None,
    cuda_bf16: bool = False,
    mirrored: bool = False,
) -> Choice:
    """The precision to run: as asked (where ``engine`` on ``device_type`` supports it), or `auto`'s choice.

    ``records`` is the manifest's ``inference.precision`` section (None: never validated); ``mirrored``: the run
    averages mirrored copies (TTA), so a precision judged again on that mean is chosen by that record.
    """
    check_choice("precision", requested, PRECISIONS)
    possible = ENGINE_PRECISIONS.get((engine, device_type), ())
    if requested != "auto":
        if requested != FP32 and requested not in possible:
            raise ValueError(_unsupported(requested, engine, device_type))
        checked = engine_records(records, engine, mirrored)
        note = "" if requested == FP32 or validated(checked.get(requested)) else ", not validated for this model"
        return Choice(requested, f"as asked{note}")
    fast = [p for p in possible if native(p, device_type, features, cuda_bf16)]
    if records is None:
        if device_type == "cuda" and fast:  # CUDA's mixed precision, as before validation existed
            return Choice(fast[0], "CUDA autocast (the model has no precision validation)")
        return Choice(FP32, "the model has no precision validation (unetseg models validate-precision NAME)")
    checked = engine_records(records, engine, mirrored)
    for precision in fast:
        if validated(checked.get(precision)):
            return Choice(precision, f"fastest validated ({_agreement(checked[precision])})")
    unchecked = [p for p in fast if _failed(checked.get(p)) is None]
    if device_type == "cuda" and unchecked:  # not measured (e.g. fp16 on a CPU without it): CUDA's autocast as before
        return Choice(unchecked[0], f"CUDA autocast ({unchecked[0]} was not checked for this model)")
    tried = ", ".join(f"{p} {'failed' if _failed(checked.get(p)) else 'not checked'}" for p in fast)
    return Choice(FP32, f"no faster precision validated ({tried or 'none faster here'})")


def _failed(record: dict | None) -> bool | None:
    """True for a precision measured and refused, None for one never measured."""
    if not record or "not_checked" in record:
        return None
    return not record.get("validated")


def _agreement(record: dict) -> str:
    mean = " on the TTA mean" if record.get("tta") else ""
    return f"foreground agreement {100 * record['foreground_agreement']:.2f} %{mean}, min Dice {record['min_dice']:.4f}"


def _unsupported(precision: str, engine: str, device_type: str) -> str:
    where = [f"{e} on {d}" for (e, d), ps in ENGINE_PRECISIONS.items() if precision in ps]
    return (f"Precision {precision} is not available with {engine} on {device_type}; it runs with "
            f"{' or '.join(where) or 'no engine'}. Use --precision auto or fp32.")  # fmt: skip


# --------------------------------------------------------------------------------------------- agreement


def labels_from_logits(logits: np.ndarray, sigmoid: bool) -> np.ndarray:
    """Per-voxel labels of window logits ``(B, K, *patch)``: the arg-max channel, or with ``sigmoid`` (region
    heads) a bit per head that is positive (logit > 0)."""
    if not sigmoid:
        return logits.argmax(1).astype(np.int16)
    bits = (logits > 0).astype(np.int64)
    return np.tensordot(bits, 1 << np.arange(logits.shape[1]), axes=([1], [0]))


def agreement(reference: np.ndarray, other: np.ndarray, names: Sequence[str], sigmoid: bool = False) -> dict:
    """How ``other``'s labels agree with ``reference``'s (both from `labels_from_logits`): the share of voxels
    foreground in either that keep their label, and the Dice of each named label (channel 1…, or head 0… with
    ``sigmoid``; None where neither has it)."""
    foreground = (reference != 0) | (other != 0)
    total = int(foreground.sum())
    same = int((foreground & (reference == other)).sum())
    dice: dict[str, float | None] = {}
    for index, name in enumerate(names):
        if sigmoid:
            a, b = (reference >> index) & 1 == 1, (other >> index) & 1 == 1
        else:
            a, b = reference == index + 1, other == index + 1
        size = int(a.sum()) + int(b.sum())
        dice[name] = None if size == 0 else round(2 * int((a & b).sum()) / size, 6)
    fraction = 1.0 if total == 0 else same / total
    present = [d for d in dice.values() if d is not None]
    return {
        "foreground_agreement": round(fraction, 6),
        "min_dice": min(present) if present else 1.0,
        "dice": dice,
        "foreground_voxels": total,
        "validated": total > 0 and passes(fraction, dice),  # windows without foreground prove nothing
    }
