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
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {"model": model, "vendor": cpu_vendor(), "logical_cores": os.cpu_count(), "machine": platform.machine(),
            "flags": sorted(f for f in _FLAGS_OF_INTEREST if f in flags)}


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), or "unknown"."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def project_commit() -> dict[str, object] | None:
    """The slimbench commit that produced a result, and whether the tree had local changes: a figure is only
    reproducible from a known commit. None outside a git checkout (e.g. an installed wheel)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def platform_info() -> dict[str, object]:
    return {"python": platform.python_version(), "numpy": np.__version__, "os": platform.platform(),
            "host": socket.gethostname(), "cpu": cpu_info(), "slimbench": project_commit()}
