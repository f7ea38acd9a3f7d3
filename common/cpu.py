"""What this machine's CPU is, from /proc/cpuinfo: its model name and whether it has bf16 arithmetic.

The serving runtime (which precision to run) and the trainer (whether bf16 autocast
pays) both ask; the benches record it beside every timing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPUs with these run bf16 natively; elsewhere it is emulated
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")


@cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(CPU model name, its feature flags); ("unknown", {}) where /proc/cpuinfo is missing."""
    name, flags = "unknown", frozenset[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown":
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_bf16_flag() -> str | None:
    """The flag that gives this CPU bf16 arithmetic (amx_bf16, avx512_bf16), or None."""
    flags = cpu_info()[1]
    return next((f for f in BF16_FLAGS if f in flags), None)


def cpu_summary() -> dict[str, object]:
    """The CPU as benches record it: model, the flags that matter for speed here, cores."""
    import os

    name, flags = cpu_info()
    return {"model": name, "flags": [f for f in REPORTED_FLAGS if f in flags], "cores": os.cpu_count()}
