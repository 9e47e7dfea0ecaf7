"""The environment a backend's worker starts with: MKL_DEBUG_CPU_TYPE=5 for Paddle on AMD CPUs (cpu_tuning)."""
from __future__ import annotations

import pytest

from common.run.runner import MKL_AMD, SET_BY_SLIMBENCH, backend_env


@pytest.mark.parametrize("backend,tuning,vendor,expected", [
    ("paddle", True, "AuthenticAMD", {MKL_AMD[0]: "5", SET_BY_SLIMBENCH: "1"}),
    ("paddle", True, "GenuineIntel", {}),  # Intel CPUs get MKL's fast path already
    ("paddle", False, "AuthenticAMD", {}),  # cpu_tuning false: each framework's plain defaults
    ("torch", True, "AuthenticAMD", {}),  # torch does not use Paddle's MKL 2019
])
def test_mkl_cpu_type_only_for_paddle_on_amd_with_tuning(monkeypatch, backend, tuning, vendor, expected):
    monkeypatch.delenv(MKL_AMD[0], raising=False)
    assert backend_env(backend, tuning, vendor) == expected


def test_a_users_own_mkl_setting_is_kept(monkeypatch):
    monkeypatch.setenv(MKL_AMD[0], "2")
    assert backend_env("paddle", True, "AuthenticAMD") == {}
