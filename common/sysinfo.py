"""What machine a run ran on: recorded in every result so reports can say it."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma")


def cpu_info() -> dict[str, object]:
    """The CPU a figure comes from. Cloud VMs often report only "AMD EPYC" as the model name: the family and
    model numbers (25/1 is Zen 3, 25/17 Zen 4) and the SIMD flags tell the generations apart, and torch's
    kernels run at different speeds on them."""
    model, flags, numbers, vendor = platform.processor() or "unknown", set(), {}, "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model in ("unknown", "", platform.machine()):
                model = value
            elif key == "vendor_id" and vendor == "unknown":
                vendor = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("cpu family", "model") and key not in numbers and value.isdigit():
                numbers[key] = int(value)
    return {"model": model, "vendor": vendor, "family": numbers.get("cpu family"),
            "model_number": numbers.get("model"), "logical_cores": os.cpu_count(), "machine": platform.machine(),
            "flags": sorted(f for f in _FLAGS_OF_INTEREST if f in flags)}


NO_FLAGS_OF_INTEREST = "none of avx2/avx512/amx"


def _family_model(cpu: dict) -> list[str]:
    """["family F model M"] where the result recorded them (results before 2026-12-03 did not), else []."""
    return [f"family {cpu['family']} model {cpu.get('model_number', '?')}"] if cpu.get("family") is not None else []


def cpu_label(cpu: dict) -> str:
    """One CPU's name as reports print it: the model name, with family/model numbers where recorded."""
    return str(cpu.get("model", "?")) + "".join(f" ({p})" for p in _family_model(cpu))


def cpu_description(cpu: dict) -> str:
    """A CPU with its family/model numbers, core count and SIMD flags in one parenthesis, for tables."""
    parts = _family_model(cpu) + [f"{cpu.get('logical_cores', '?')} cores",
                                  " ".join(cpu.get("flags", [])) or NO_FLAGS_OF_INTEREST]
    return f"{cpu.get('model', '?')} ({'; '.join(parts)})"


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), or "unknown"."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    return "unknown"


# What a run executes: a local change anywhere else (README, docs, tests, benchmarks, or reports/, which
# `make reports` itself rewrites between recipes) cannot change a figure, so it does not make a result "dirty".
RUN_PATHS = ("common", "backends", "pyproject.toml", "Makefile")


def project_commit(root: Path = PROJECT_ROOT) -> dict[str, object] | None:
    """The slimbench commit that produced a result, and the uncommitted changes to the files a run executes
    (RUN_PATHS): a figure is only reproducible from a known commit. None outside a git checkout (e.g. an
    installed wheel)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30,
                              check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = sorted(line[3:].strip() for line in
                         git("status", "--porcelain", "--untracked-files=no", "--", *RUN_PATHS).splitlines()
                         if line.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def platform_info() -> dict[str, object]:
    return {"python": platform.python_version(), "numpy": np.__version__, "os": platform.platform(),
            "host": socket.gethostname(), "cpu": cpu_info(), "slimbench": project_commit()}
