"""Precision as a choice: ISA detection and its fallbacks, the agreement rule, what `auto` picks, and the records
the precision check writes into a manifest."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.cpu_features import CpuFeatures, detect, flags_from_torch, parse_cpuinfo
from unetseg.inference.precision import agreement, choose, labels_from_logits, without

SAPPHIRE_RAPIDS = "fpu avx avx2 fma avx512f avx512_bf16 avx512_vnni avx512_fp16 amx_tile amx_bf16 amx_int8"
ZEN4 = "fpu avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni"
SKYLAKE_X = "fpu avx avx2 fma avx512f avx512dq avx512bw"
ZEN2 = "fpu sse4_2 avx avx2 fma"  # an AVX2-only AMD (what CI may have)
ALDER_LAKE = "fpu avx avx2 fma avx_vnni"


def _cpu(flags: str) -> CpuFeatures:
    return CpuFeatures(frozenset(flags.split()), "test")


@pytest.mark.parametrize(
    ("flags", "isa", "bf16", "int8"),
    [
        (SAPPHIRE_RAPIDS, "AMX", True, True),
        (ZEN4, "AVX-512 BF16", True, True),
        (SKYLAKE_X, "AVX-512", False, False),
        (ZEN2, "AVX2", False, False),
        (ALDER_LAKE, "AVX2", False, True),
        ("fpu sse2", "baseline", False, False),
    ],
)
def test_the_isa_levels_and_what_they_compute_natively(flags, isa, bf16, int8):
    cpu = _cpu(flags)
    assert (cpu.isa, cpu.native_bf16, cpu.int8_dot) == (isa, bf16, int8)
    assert cpu.describe().startswith(isa)


def test_cpuinfo_is_parsed_and_every_fallback_is_taken_in_order(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {ZEN4}\n\nprocessor\t: 1\nflags\t: x\n")
    assert parse_cpuinfo(cpuinfo.read_text()) == frozenset(ZEN4.split())
    assert parse_cpuinfo("processor : 0\nFeatures : fp asimd sve\n") == frozenset({"fp", "asimd", "sve"})  # Arm
    found = detect(environ={}, cpuinfo=cpuinfo)
    assert (found.isa, found.source) == ("AVX-512 BF16", str(cpuinfo))
    # the environment wins: rehearse an AVX2-only CPU on any machine
    assert detect(environ={"UNETSEG_CPU_FLAGS": ZEN2}, cpuinfo=cpuinfo).isa == "AVX2"
    # no /proc/cpuinfo (Windows, macOS): torch's own probes, torch being loaded in this test process
    import torch

    via_torch = detect(environ={}, cpuinfo=tmp_path / "absent")
    assert via_torch.source == "torch"
    assert via_torch.has("avx2") == (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def test_torch_probe_flags_map_to_the_same_levels():
    assert _cpu(" ".join(flags_from_torch("AVX512", avx512_bf16=True))).isa == "AVX-512 BF16"
    assert _cpu(" ".join(flags_from_torch("AVX512", amx=True))).isa == "AMX"
    assert _cpu(" ".join(flags_from_torch("AVX2"))).isa == "AVX2"
    assert _cpu(" ".join(flags_from_torch("DEFAULT"))).isa == "baseline"


# -------------------------------------------------------------------------------------------- agreement


def test_agreement_counts_foreground_voxels_and_dice_per_label():
    reference = np.zeros((1, 10, 10, 10), np.int16)
    reference[0, 2:8, 2:8, 2:8] = 1  # 216 voxels of label 1
    reference[0, 0, 0, :4] = 2  # 4 voxels of label 2
    same = agreement(reference, reference.copy(), ["organ", "lesion", "absent"])
    assert same["validated"] and same["foreground_agreement"] == 1.0
    assert same["dice"] == {"organ": 1.0, "lesion": 1.0, "absent": None}
    changed = reference.copy()
    changed[0, 0, 0, 0] = 0  # one lesion voxel lost: agreement 219/220 (99.5 %), lesion Dice 6/7
    record = agreement(reference, changed, ["organ", "lesion", "absent"])
    assert record["foreground_agreement"] == pytest.approx(219 / 220, abs=1e-6)
    assert record["dice"]["lesion"] == pytest.approx(2 * 3 / 7, abs=1e-6) and not record["validated"]
    assert record["min_dice"] == record["dice"]["lesion"]
    empty = np.zeros_like(reference)
    assert not agreement(empty, empty, ["organ"])["validated"]  # windows without foreground prove nothing


def test_labels_of_softmax_and_sigmoid_outputs():
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 2, 0, 0] = 5.0
    logits[0, 1, 1, 1] = 5.0
    assert labels_from_logits(logits, sigmoid=False).tolist() == [[[2, 0], [0, 1]]]
    heads = np.full((1, 2, 1, 2), -1.0, np.float32)
    heads[0, :, 0, 0] = 1.0  # both regions on: bits 0 and 1
    heads[0, 1, 0, 1] = 1.0  # only the second
    bits = labels_from_logits(heads, sigmoid=True)
    assert bits.tolist() == [[[3, 2]]]
    record = agreement(bits, bits, ["whole", "core"], sigmoid=True)
    assert record["dice"] == {"whole": 1.0, "core": 1.0} and record["validated"]


# --------------------------------------------------------------------------------------------- choices

VALIDATED = {"checked": {"bf16": {"validated": True, "foreground_agreement": 0.999, "min_dice": 0.995},
                         "fp16": {"validated": True, "foreground_agreement": 0.9999, "min_dice": 0.999},
                         "int8": {"validated": True, "foreground_agreement": 0.998, "min_dice": 0.992}}}  # fmt: skip


def test_auto_takes_the_fastest_native_and_validated_precision():
    assert choose("auto", "torch", "cpu", _cpu(ZEN4), VALIDATED).precision == "bf16"
    assert choose("auto", "torch", "cpu", _cpu(SAPPHIRE_RAPIDS), VALIDATED).precision == "bf16"
    # AVX2-only and AVX-512 without BF16: bf16 would be emulated, slower than fp32
    assert choose("auto", "torch", "cpu", _cpu(ZEN2), VALIDATED).precision == "fp32"
    assert choose("auto", "torch", "cpu", _cpu(SKYLAKE_X), VALIDATED).precision == "fp32"
    assert choose("auto", "onnx", "cpu", _cpu(ZEN4), VALIDATED).precision == "int8"
    assert choose("auto", "onnx", "cpu", _cpu(ZEN2), VALIDATED).precision == "fp32"  # no VNNI
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), VALIDATED, cuda_bf16=True).precision == "bf16"
    assert choose("auto", "torch", "mps", _cpu(ZEN2), VALIDATED).precision == "fp32"


def test_auto_keeps_fp32_where_the_model_failed_or_was_never_checked():
    failed = {"checked": {"bf16": {"validated": False}}}
    choice = choose("auto", "torch", "cpu", _cpu(ZEN4), failed)
    assert choice.precision == "fp32" and "bf16 failed" in choice.reason
    never = choose("auto", "torch", "cpu", _cpu(ZEN4), None)
    assert never.precision == "fp32" and "validate-precision" in never.reason
    # a GPU keeps its mixed precision for a model that was never checked (the predictor's behaviour before)
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), None, cuda_bf16=False).precision == "fp16"
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), None, cuda_bf16=True).precision == "bf16"
    # fp16 not measured (a CPU without it): a GPU without bf16 keeps its fp16 autocast; a failed one is refused
    unchecked = {"checked": {"bf16": VALIDATED["checked"]["bf16"], "fp16": {"validated": False, "not_checked": "x"}}}
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), unchecked, cuda_bf16=False).precision == "fp16"
    both_failed = {"checked": {"bf16": {"validated": False}, "fp16": {"validated": False}}}
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), both_failed, cuda_bf16=True).precision == "fp32"
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), failed, cuda_bf16=True).precision == "fp16"  # fp16 unchecked
    # a checked model whose bf16 failed falls back to its validated fp16 on a GPU
    only_fp16 = {"checked": {"bf16": {"validated": False}, "fp16": VALIDATED["checked"]["fp16"]}}
    assert choose("auto", "torch", "cuda", _cpu(ZEN2), only_fp16, cuda_bf16=True).precision == "fp16"


def test_a_tta_run_takes_the_record_judged_on_its_mirrored_mean():
    """int8 refused for one pass but validated on the mean of the mirrored copies runs only where TTA runs; a
    precision validated for one pass holds for both; without its export, int8 is out of every record set."""
    records = {"checked": {"int8": {"validated": False, "foreground_agreement": 0.974, "min_dice": 0.979}},
               "mirrored": {"axes": [0, 1, 2], "checked": {"int8": {"validated": True, "tta": True,
                                                                    "foreground_agreement": 0.996,
                                                                    "min_dice": 0.996}}}}  # fmt: skip
    single = choose("auto", "onnx", "cpu", _cpu(ZEN4), records)
    assert single.precision == "fp32" and "int8 failed" in single.reason
    mirrored = choose("auto", "onnx", "cpu", _cpu(ZEN4), records, mirrored=True)
    assert mirrored.precision == "int8" and "99.60 % on the TTA mean" in mirrored.reason
    assert choose("auto", "torch", "cpu", _cpu(ZEN4), VALIDATED, mirrored=True).precision == "bf16"
    assert choose("auto", "onnx", "cpu", _cpu(ZEN4), without(records, "int8"), mirrored=True).precision == "fp32"
    assert without(records, "int8")["mirrored"] == {"axes": [0, 1, 2], "checked": {}}


def test_an_explicit_precision_is_honoured_where_the_engine_runs_it():
    choice = choose("bf16", "torch", "cpu", _cpu(ZEN2), None)
    assert choice.precision == "bf16" and "not validated" in choice.reason
    assert choose("fp32", "onnx", "cpu", _cpu(ZEN2), None).precision == "fp32"
    with pytest.raises(ValueError, match=r"int8 is not available with torch on cpu; it runs with onnx on cpu"):
        choose("int8", "torch", "cpu", _cpu(ZEN4), VALIDATED)
    with pytest.raises(ValueError, match="bf16 is not available with onnx"):
        choose("bf16", "onnx", "cpu", _cpu(ZEN4), VALIDATED)
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        choose("fp8", "torch", "cpu", _cpu(ZEN4), VALIDATED)


def test_openvino_follows_only_its_own_records():
    # the torch/ONNX Runtime records say nothing of OpenVINO's kernels: never checked there, it keeps fp32
    choice = choose("auto", "openvino", "cpu", _cpu(ZEN4), VALIDATED)
    assert choice.precision == "fp32" and "bf16 not checked" in choice.reason
    own = {**VALIDATED, "openvino": {"bf16": {"validated": False}, "int8": VALIDATED["checked"]["int8"]}}
    assert choose("auto", "openvino", "cpu", _cpu(ZEN4), own).precision == "int8"  # its bf16 failed, its int8 passed
    assert choose("auto", "torch", "cpu", _cpu(ZEN4), own).precision == "bf16"  # torch keeps its own record
    assert "not validated" in choose("bf16", "openvino", "cpu", _cpu(ZEN4), own).reason
    assert choose("auto", "openvino", "cpu", _cpu(ZEN2), own).precision == "fp32"  # no VNNI: int8 is not native
