"""What machine a run ran on: recorded in every result so reports can say it."""
from __future__ import annotations

import os
import platform
from pathlib import Path

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma")


def cpu_info() -> dict[str, object]:
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {"model": model, "logical_cores": os.cpu_count(), "machine": platform.machine(),
            "flags": sorted(f for f in _FLAGS_OF_INTEREST if f in flags)}


def platform_info() -> dict[str, object]:
    return {"python": platform.python_version(), "os": platform.platform(), "cpu": cpu_info()}
