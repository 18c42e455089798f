"""What this CPU's integer dot-product instructions are, and the INT8 layout that suits them.

ONNX Runtime's x86 INT8 kernels multiply unsigned 8-bit activations by signed 8-bit weights.
Without VNNI they use ``VPMADDUBSW``, which adds pairs of products into a signed 16-bit lane and
saturates when both operands are large: full-range weights then corrupt the output (measured on
an AVX2 machine: 4-11 dB SI-SDR against fp32, 19-31 dB with 7-bit weights). VNNI (``VPDPBUSD``),
AMX and ARM's dot-product instructions accumulate in 32 bits and need no such reduction.
Features are read from the operating system (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS),
never assumed.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_X86_FLAGS = ("sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
_ARM_FLAGS = ("asimd", "asimddp", "i8mm")


@dataclass(frozen=True)
class CpuFeatures:
    """The machine's architecture and the INT8-relevant instruction-set flags it reports."""

    arch: str  # "x86_64", "arm64" or what platform.machine() says
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        """32-bit accumulating u8*s8 dot products (AVX512-VNNI, AVX-VNNI or AMX) on x86."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    def int8_kernel(self) -> str:
        """A short name of the instructions ONNX Runtime's INT8 GEMM will use here."""
        if self.arch == "arm64":
            return "arm-dotprod" if "asimddp" in self.flags else "arm-neon"
        if self.vnni:
            return "x86-vnni"
        if "avx2" in self.flags:
            return "x86-avx2"
        return "x86-sse" if self.arch == "x86_64" else "generic"


@dataclass(frozen=True)
class Int8Layout:
    """How to quantize for a CPU: activation and weight types, and whether weights keep 7 bits."""

    activation_type: str  # "uint8" or "int8"
    weight_type: str
    reduce_range: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for reports."""
        return {"activation_type": self.activation_type, "weight_type": self.weight_type,
                "reduce_range": self.reduce_range, "reason": self.reason}


def int8_layout(features: CpuFeatures) -> Int8Layout:
    """The INT8 layout for ``features`` (see the module docstring for the rules)."""
    kernel = features.int8_kernel()
    if kernel in ("x86-avx2", "x86-sse"):
        return Int8Layout("uint8", "int8", True,
                          f"{kernel} without VNNI: VPMADDUBSW saturates 16-bit sums, so weights "
                          "keep 7 bits (reduce_range)")
    if kernel == "x86-vnni":
        return Int8Layout("uint8", "int8", False,
                          "VNNI accumulates u8*s8 products in 32 bits: full 8-bit weights")
    if kernel == "arm-dotprod":
        return Int8Layout("uint8", "int8", False,
                          "ARM dot-product instructions accumulate in 32 bits: full 8-bit weights")
    return Int8Layout("uint8", "int8", True,
                      f"{kernel}: no 32-bit dot-product instruction detected; weights keep 7 bits")


def _linux_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def parse_features(arch: str, cpuinfo: str) -> CpuFeatures:
    """Features from an architecture name and ``/proc/cpuinfo`` text (kept pure for tests)."""
    arch = {"amd64": "x86_64", "aarch64": "arm64"}.get(arch.lower(), arch.lower())
    known = _ARM_FLAGS if arch == "arm64" else _X86_FLAGS
    return CpuFeatures(arch, frozenset(_linux_flags(cpuinfo) & set(known)))


def _macos_flags() -> set[str]:
    def sysctl(name: str) -> str:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    flags = set()
    if sysctl("hw.optional.arm.FEAT_DotProd") == "1":
        flags.add("asimddp")
    if sysctl("hw.optional.arm.FEAT_I8MM") == "1":
        flags.add("i8mm")
    if sysctl("hw.optional.avx2_0") == "1":
        flags.add("avx2")
    return flags


@cache
def detect() -> CpuFeatures:
    """This machine's features (cached for the process)."""
    arch = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return parse_features(arch, cpuinfo.read_text(errors="replace"))
    if platform.system() == "Darwin":
        normal = parse_features(arch, "")
        return CpuFeatures(normal.arch, frozenset(_macos_flags()))
    return parse_features(arch, "")
