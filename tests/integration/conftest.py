"""Shared fixtures for tests that drive both backends in one process (torch imported first: tests/conftest.py)."""
from __future__ import annotations

import pytest

from common.config import ModelConfig


@pytest.fixture(scope="module")
def backends():
    from backends.base import load_backend
    tb, pb = load_backend("torch"), load_backend("paddle")
    tb.configure(2, "cpu", 0)
    pb.configure(2, "cpu", 0)
    return tb, pb


def transfer(tb, pb, arch: str, small: bool = False):
    """The same architecture in both frameworks, paddle loaded with torch's initial weights."""
    cfg = ModelConfig(arch=arch, small_input=small)
    tm, pm = tb.build_model(cfg, 10), pb.build_model(cfg, 10)
    pb.load_numpy_state(pm, tb.state_to_numpy(tm))
    return tm, pm
