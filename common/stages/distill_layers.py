"""Layer names a distillation term may tap, in canonical (torchvision) naming, resolved per backend.

The table (distill_layers.json, written by backends/layer_table.py from the real models of both frameworks)
lets a recipe be checked before any worker starts: an unknown name is a one-line error with the nearest valid
names, a name only one framework has is refused, and MobileNetV3's block names map to paddle.vision's.
"""
from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path

TABLE = Path(__file__).with_name("distill_layers.json")


@functools.lru_cache(maxsize=1)
def layer_table() -> dict[str, dict]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def layer_problem(arch: str, name: str) -> str | None:
    """Why `name` cannot be tapped on every backend for `arch` (None when it can)."""
    entry = layer_table().get(arch)
    if entry is None:
        return f"feature taps are not available for arch '{arch}' (known: {', '.join(sorted(layer_table()))})"
    if name in entry["layers"]:
        return None
    if name in entry["torch_only"]:
        return (f"'{name}' exists in torchvision's {arch} but has no counterpart in paddle.vision's; layers both "
                f"backends have include {_sample(entry['layers'], name)}")
    canonical = [c for c, p in entry["paddle_names"].items() if p == name]
    if canonical or name in entry["paddle_only"]:
        hint = f"its canonical name is '{canonical[0]}'" if canonical else "it has no torchvision counterpart"
        return f"'{name}' is paddle.vision's naming ({hint}); layers are named as torchvision names them"
    return f"a layer of {arch} (nearest: {_sample(entry['layers'], name)})"


def backend_layer_name(arch: str, name: str, backend: str) -> str:
    """The backend's own module name for a canonical layer name (validated earlier)."""
    if backend == "paddle":
        return layer_table()[arch]["paddle_names"].get(name, name)
    return name


def _sample(names: list[str], near: str) -> str:
    close = difflib.get_close_matches(near, names, n=5, cutoff=0.0)
    return ", ".join(close)
