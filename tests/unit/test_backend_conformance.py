"""Every backend implements the whole Backend protocol with the protocol's signatures (checked on the source,
so it runs without importing torch or paddle)."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from backends.base import Backend

ROOT = Path(__file__).resolve().parents[2]


def _protocol_methods() -> dict[str, list[str]]:
    out = {}
    for name, fn in inspect.getmembers(Backend, inspect.isfunction):
        if not name.startswith("_"):
            out[name] = list(inspect.signature(fn).parameters)
    return out


def _backend_methods(backend: str) -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "backends" / backend / "__init__.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Backend"))
    return {f.name: [a.arg for a in f.args.args + f.args.kwonlyargs] for f in cls.body
            if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_backend_implements_the_protocol(backend):
    have = _backend_methods(backend)
    for name, params in _protocol_methods().items():
        assert name in have, f"backends/{backend} lacks {name}"
        assert have[name] == params, f"backends/{backend}.{name}{tuple(have[name])} != protocol {tuple(params)}"
