"""What this CPU computes natively: AVX2, AVX-512, AVX-512 BF16, AMX, VNNI — read at run time, never assumed.

The precision choice needs it: bf16 windows pay off only where the CPU multiplies bf16 natively (AVX-512 BF16 or
AMX; elsewhere torch emulates it, slower than fp32), int8 only with VNNI/AMX-INT8 dot products. The flags come from
``/proc/cpuinfo`` (Linux), else from torch's own CPU probes when torch is already loaded (Windows, macOS), else
nothing is assumed (the baseline: fp32 only). ``UNETSEG_CPU_FLAGS`` (space-separated cpuinfo flag names) replaces
the detection, to pin the choice on a machine whose detection is wrong or to rehearse another CPU's choice.
Torch-free and numpy-free.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FLAGS_ENV = "UNETSEG_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")
# The instruction-set levels, best first, with the cpuinfo flags each needs.
ISA_LEVELS = (
    ("AMX", ("amx_tile", "amx_bf16")),
    ("AVX-512 BF16", ("avx512f", "avx512_bf16")),
    ("AVX-512", ("avx512f",)),
    ("AVX2", ("avx2", "fma")),
)
BASELINE = "baseline"


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's instruction-set flags (cpuinfo names) and where they were read."""

    flags: frozenset[str]
    source: str

    def has(self, *names: str) -> bool:
        return all(name in self.flags for name in names)

    @property
    def isa(self) -> str:
        """The best level of `ISA_LEVELS` this CPU has, or "baseline"."""
        return next((name for name, needed in ISA_LEVELS if self.has(*needed)), BASELINE)

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix products in hardware (AVX-512 BF16 or AMX): bf16 windows beat fp32."""
        return self.has("avx512_bf16") or self.has("amx_bf16")

    @property
    def native_fp16(self) -> bool:
        """fp16 matrix products in hardware (AVX-512 FP16 or AMX-FP16)."""
        return self.has("avx512_fp16") or self.has("amx_fp16")

    @property
    def int8_dot(self) -> bool:
        """int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX-INT8): quantised windows beat fp32."""
        return self.has("avx512_vnni") or self.has("avx_vnni") or self.has("amx_int8")

    def describe(self) -> str:
        """E.g. "AVX-512 BF16 (VNNI; /proc/cpuinfo)"."""
        extras = [name for name, ok in (("VNNI", self.int8_dot), ("FP16", self.native_fp16)) if ok]
        return f"{self.isa} ({'; '.join([*extras, self.source])})"


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The flags of the first processor in a ``/proc/cpuinfo`` text (``flags`` on x86, ``Features`` on Arm)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def flags_from_torch(capability: str, avx512_bf16: bool = False, amx: bool = False) -> frozenset[str]:
    """cpuinfo-style flags from torch's probes: ``torch.backends.cpu.get_cpu_capability()`` ("AVX2", "AVX512",
    "DEFAULT"…) and its bf16/AMX checks."""
    flags = {"AVX2": {"avx2", "fma"}, "AVX512": {"avx2", "fma", "avx512f"}}.get(capability.upper(), set())
    if avx512_bf16:
        flags |= {"avx512_bf16"}
    if amx:
        flags |= {"amx_tile", "amx_bf16", "amx_int8"}
    return frozenset(flags)


def _torch_flags() -> frozenset[str] | None:
    """Flags from torch's CPU probes, if torch is already loaded (this module never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cpu = getattr(torch, "cpu", None)
    bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return flags_from_torch(torch.backends.cpu.get_cpu_capability(), bf16, amx)


def detect(environ: dict[str, str] | None = None, cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """This CPU's features: ``UNETSEG_CPU_FLAGS`` if set, else ``/proc/cpuinfo``, else torch's probes, else none."""
    environ = os.environ if environ is None else environ
    if environ.get(FLAGS_ENV, "").strip():
        return CpuFeatures(frozenset(environ[FLAGS_ENV].split()), f"${FLAGS_ENV}")
    try:
        flags = parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = frozenset()
    if flags:
        return CpuFeatures(flags, str(cpuinfo))
    from_torch = _torch_flags()
    if from_torch is not None:
        return CpuFeatures(from_torch, "torch")
    return CpuFeatures(frozenset(), "not detected")


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """`detect` once per process."""
    return detect()
