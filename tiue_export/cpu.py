"""What this CPU computes natively: vendor, model and the vector / matrix extensions that decide how
int8 and bf16 kernels run (bench's ISA line and peaks, calibrate's record, the test run's header).

int8: without VNNI (AVX2 only) an int8 x int8 dot product goes through ``vpmaddubsw``, whose 16-bit
intermediate sums saturate; with AVX512-VNNI / AVX-VNNI or AMX-INT8 they are 32-bit. bf16: only
AVX512-BF16 and AMX-BF16 have bf16 dot products; elsewhere bf16 is converted and run in fp32.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: Our names for the ``/proc/cpuinfo`` flags that matter here, in the order they are printed.
FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx_vnni": "AVX-VNNI",
    "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


@dataclass(frozen=True)
class CpuFeatures:
    vendor: str
    model: str
    flags: tuple[str, ...]  # names from FLAGS the CPU has, in FLAGS' order

    @property
    def vnni(self) -> bool:
        """int8 dot products with 32-bit sums (no 16-bit saturation)."""
        return bool({"AVX-VNNI", "AVX512-VNNI", "AMX-INT8"} & set(self.flags))

    @property
    def native(self) -> dict[str, bool]:
        """Which matmul precisions have dot-product instructions of their own."""
        return {"fp32": True, "bf16": bool({"AVX512-BF16", "AMX-BF16"} & set(self.flags)), "int8": self.vnni}

    def line(self) -> str:
        """``AMD EPYC (AuthenticAMD): AVX2, AVX-512, ...; int8 dot products 32-bit (VNNI)``."""
        isa = ", ".join(self.flags) or "none of " + ", ".join(FLAGS.values())
        sums = "32-bit (VNNI)" if self.vnni else "16-bit intermediate sums (no VNNI)"
        return f"{self.model} ({self.vendor}): {isa}; int8 dot products {sums}"

    def to_dict(self) -> dict:
        return {"vendor": self.vendor, "model": self.model, "flags": list(self.flags), "vnni": self.vnni}


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU, from ``/proc/cpuinfo`` (Linux); elsewhere the model only, no flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The first processor of a ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    have = set(fields.get("flags", "").split())
    return CpuFeatures(
        vendor=fields.get("vendor_id", "unknown vendor"),
        model=fields.get("model name", platform.processor() or platform.machine()),
        flags=tuple(name for flag, name in FLAGS.items() if flag in have),
    )
