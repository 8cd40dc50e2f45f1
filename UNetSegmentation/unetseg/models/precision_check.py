"""Validate a model for lower precisions: a few windows of its sample in fp32 and in bf16, fp16 and int8, the label
agreement of each recorded in the manifest (``inference.precision``), which `precision.choose` reads for ``auto``.

bf16 and fp16 run in torch (autocast; on a CPU without native bf16 torch emulates it with the same rounding, only
slower; fp16 is checked only where this CPU has it natively, its emulation taking minutes per large window), int8
in ONNX Runtime on the statically quantised export that this check makes from the model's ONNX export, calibrated
on the same windows (`int8_export`); where OpenVINO is installed, its own bf16 and int8 too, recorded apart
(``openvino``). The reference is torch in fp32 (ONNX Runtime in fp32 where torch is absent). A model that mirrors
by default, checked on the user's own case, has its refused precisions judged again on the mirrored mean.
`unetseg models validate-precision NAME` runs it, and so does every import.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.cpu_features import cpu_features
from unetseg.image import Image
from unetseg.inference.engines import int8_path, ort_openvino
from unetseg.inference.int8_export import CalibrationTooLargeError, quantize_int8, quantizer_missing
from unetseg.inference.mirroring import MirroredTiles
from unetseg.inference.onnx_backend import INPUT_NAME, open_session
from unetseg.inference.precision import MIRRORED, RECORD_SETS, agreement, labels_from_logits
from unetseg.inference.predictor import window_settings
from unetseg.io.atomic import atomic_write
from unetseg.models.manifest import MANIFEST_FILE, validate_manifest
from unetseg.models.package import ModelPackage, load_package
from unetseg.models.validation_windows import DEFAULT_WINDOWS, validation_windows
from unetseg.vocabulary import LOWER_PRECISIONS, MIN_FOREGROUND_AGREEMENT, MIN_LABEL_DICE, MONAI_VARIANT

Logits = Callable[[np.ndarray], np.ndarray]


def check_precisions(package: ModelPackage, count: int = DEFAULT_WINDOWS, write: bool = True,
                     report: Callable[[str], None] | None = None, images: list[Image] | None = None) -> dict:
    """Measure each lower precision against fp32 on ``count`` windows (of ``images``, one per model input, where
    given); return the record (and write it into the package's manifest with ``write``).

    A model that runs test-time mirroring by default (nnU-Net's) has the precisions refused for one pass judged
    again on the mean over its mirrored copies, the run its users get, where the windows are the user's own case
    (``images``): recorded under ``mirrored`` and read by ``auto`` when TTA runs. A precision refused for one pass is
    a borderline one, and the phantom is no judge of it: on an nnU-Net CT model it passed int8's TTA mean (99.53 %)
    that a case of the model's own kind refused (99.17 %), and whose labels it then moved (bone Dice 0.963). A
    precision validated for one pass is not re-run (its mirrored mean averages validated passes).
    """
    say = report or (lambda _line: None)
    sample = validation_windows(package, count, images)
    say(f"{len(sample.windows)} window(s) of {sample.source}")
    (reference_name, reference_run), engines = _engines(package, sample.windows)
    sigmoid, names = output_kind(package)
    heads = output_heads(package)

    def measure(runs: dict, reference: np.ndarray, mirror: list | None) -> dict:
        records = {}
        for precision, engine in runs.items():
            if isinstance(engine, str):
                records[precision] = {"validated": False, "not_checked": engine}
                say(f"{precision}: not checked ({engine})")
                continue
            name, run = engine
            logits = (MirroredTiles(run, mirror, 1) if mirror else run)(sample.windows)
            records[precision] = _measured(precision, name, reference, window_labels(logits, heads, sigmoid),
                                           sigmoid, names, say, bool(mirror))  # fmt: skip
        return records

    reference = window_labels(reference_run(sample.windows), heads, sigmoid)
    records = {key: measure(runs, reference, None) for key, runs in engines.items()}
    result = {
        "reference": f"fp32 ({reference_name})",
        "windows": len(sample.windows),
        "input": sample.source,
        "rule": f"foreground agreement >= {MIN_FOREGROUND_AGREEMENT}, Dice >= {MIN_LABEL_DICE} for every label",
        "date": datetime.date.today().isoformat(),
        **{key: value for key, value in records.items() if value},
    }
    refused = {key: {p: engines[key][p] for p, r in value.items() if "not_checked" not in r and not r["validated"]}
               for key, value in records.items()}  # fmt: skip
    mirror = tta_mirror_sets(package) if any(refused.values()) else []
    if mirror and images is None:
        say("refused precisions are judged again on the model's TTA mean only on a case of your own (--image)")
    elif mirror:
        say(f"judging the refused precisions again on the mean of {len(mirror)} mirrored copies (the model's TTA)")
        reference = window_labels(MirroredTiles(reference_run, mirror, 1)(sample.windows), heads, sigmoid)
        again = {key: measure(runs, reference, mirror) for key, runs in refused.items() if runs}
        result[MIRRORED] = {"axes": list(package.inference["mirror_axes"]), **again}
    if write:
        record_in_manifest(package, result)
    return result


def tta_mirror_sets(package: ModelPackage) -> list[tuple[int, ...]]:
    """The mirrored copies the model's default run averages, as the predictor settles them (none: no TTA)."""
    settings = window_settings(package, "cpu", None, None)
    return settings.mirror_sets() if settings.mirror_axes else []


def output_kind(package: ModelPackage) -> tuple[bool, list[str]]:
    """Whether the outputs are sigmoid heads (regions, or a MONAI bundle's sigmoid activation), and the label name
    of each output channel after background (each head for sigmoid outputs)."""
    by_value = {label.value: label.name for label in package.labels}
    regions = package.inference.get("regions")
    if regions:
        return True, [by_value.get(v, f"region {i}") for i, v in enumerate(regions["class_order"])]
    post = ((package.inference.get("monai") or {}).get("postprocessing")) or []
    sigmoid = package.preprocessing.get("kind") == MONAI_VARIANT and any(
        s.get("op") == "activation" and s.get("function") == "sigmoid" for s in post)
    names = [label.name for label in package.labels]
    return sigmoid, (names if not sigmoid else [f"channel {i}" for i in range(output_heads(package))])


def output_heads(package: ModelPackage) -> int:
    """Output channels of one network (an ensemble stacks one such block per fold)."""
    return int(package.network_config.get("heads") or package.network_config["num_classes"])


def window_labels(logits: np.ndarray, heads: int, sigmoid: bool) -> np.ndarray:
    """Labels of window logits ``(N, K, *patch)``; an ensemble's fold-stacked logits (``K = folds * heads``) are
    first averaged over the folds, as its pipeline combines them (nnU-Net averages the folds' logits)."""
    folds = logits.shape[1] // heads
    if folds > 1:
        logits = logits.reshape(logits.shape[0], folds, heads, *logits.shape[2:]).mean(axis=1)
    return labels_from_logits(logits, sigmoid)


def _engines(package: ModelPackage, windows: np.ndarray) -> tuple[tuple[str, Logits], dict]:
    """The fp32 reference, and per record set (``checked``; ``openvino`` where installed) and lower precision,
    ``(engine name, logits function)`` or why it cannot run."""
    torch_ok = importlib.util.find_spec("torch") is not None
    engines: dict = {}
    if torch_ok:
        from unetseg.inference.torch_precision import window_logits  # lazy: torch

        logits = window_logits(package, ("fp32", "bf16", "fp16"))
        reference = ("torch", logits["fp32"])
        engines.update({p: ("torch", logits[p]) for p in ("bf16", "fp16")})
        if not cpu_features().native_fp16:  # emulated fp16 takes minutes per large window; CUDA autocasts unchecked
            engines["fp16"] = "this CPU has no native fp16 (a GPU's autocast keeps fp16 for an unchecked model)"
    else:
        engines.update({p: "PyTorch is not installed" for p in ("bf16", "fp16")})
    engines["int8"] = _int8_engine(package, windows)
    if not torch_ok:
        session = open_session(package, "cpu", own_kernels=True)
        reference = ("onnxruntime", _window_by_window(session))
    return reference, {RECORD_SETS["torch"]: {p: engines[p] for p in LOWER_PRECISIONS},
                       RECORD_SETS["openvino"]: _openvino_engines(package, windows.shape[1:])}  # fmt: skip


def _int8_engine(package: ModelPackage, windows: np.ndarray) -> tuple[str, Logits] | str:
    """ONNX Runtime on the int8 export calibrated on ``windows``, or why there is none."""
    if not package.onnx_path.is_file():
        return f"no ONNX export (make it with: unetseg export-onnx {package.name})"
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return "onnxruntime and onnx are not installed"
    if missing := quantizer_missing():
        return missing
    try:
        quantize_int8(package, windows)
    except CalibrationTooLargeError as too_large:
        return str(too_large)
    session = open_session(package, "cpu", "int8", own_kernels=True)
    return "onnxruntime", _window_by_window(session)


def _openvino_engines(package: ModelPackage, window: tuple[int, ...]) -> dict:
    """OpenVINO's own bf16 (and int8, on the int8 export) where the exports and OpenVINO are there — the package,
    or else ONNX Runtime's OpenVINO provider (`onnxruntime-openvino`), told the ``window`` (channels, patch) it runs
    one at a time: its kernels round differently from torch's autocast and ONNX Runtime's int8."""
    if not package.onnx_path.is_file():
        return {}
    if importlib.util.find_spec("openvino") is not None:
        from unetseg.inference.openvino_backend import OpenVinoSession  # lazy: OpenVINO

        engine, session_on = "openvino", lambda path, precision: OpenVinoSession(path, precision)
    elif importlib.util.find_spec("onnxruntime") is not None and ort_openvino():
        engine = "onnxruntime-openvino"

        def session_on(_path: Path, precision: str) -> Any:
            return open_session(package, "cpu", precision, window=(1, *window))

    else:
        return {}
    engines = {}
    for precision, path in (("bf16", package.onnx_path), ("int8", int8_path(package))):
        if not path.is_file() or (precision == "bf16" and not cpu_features().native_bf16):
            continue  # no int8 export (not made); bf16 emulated where the CPU lacks it: not measured
        engines[precision] = (engine, _window_by_window(session_on(path, precision)))
    return engines


def _window_by_window(session: Any) -> Logits:
    """Logits of windows through an ONNX Runtime or OpenVINO session, one window per run (as torch's): a batch of
    a five-fold ensemble's windows held several GiB of activations at once."""
    return lambda x: np.concatenate([session.run(None, {INPUT_NAME: w[np.newaxis]})[0] for w in x])


def _measured(precision: str, engine: str, reference: np.ndarray, labels: np.ndarray, sigmoid: bool,
              names: list[str], say: Callable[[str], None], mirrored: bool = False) -> dict:  # fmt: skip
    """The agreement record of ``labels`` (``precision`` on ``engine``; ``mirrored``: their TTA mean) with the fp32
    ones, reported in one line."""
    record = {**agreement(reference, labels, names, sigmoid), **({"tta": True} if mirrored else {})}
    verdict = "validated" if record["validated"] else "not validated"
    say(f"{precision} ({engine}{', TTA' if mirrored else ''}): foreground agreement "
        f"{100 * record['foreground_agreement']:.3f} %, min Dice {record['min_dice']:.4f} -> {verdict}")
    return {"engine": engine, **record}


def record_in_manifest(package: ModelPackage, result: dict) -> ModelPackage:
    """Write ``result`` as the manifest's ``inference.precision`` (validated, atomically); the package re-read."""
    manifest = json.loads(json.dumps(package.manifest))
    manifest["inference"]["precision"] = result
    validate_manifest(manifest, str(package.path / MANIFEST_FILE))
    with atomic_write(package.path / MANIFEST_FILE) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return load_package(package.path)
