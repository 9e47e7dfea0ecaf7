"""How backends are named, ordered and coloured in reports, plots and comparisons: one place for all of them,
so a third backend needs an entry here and nothing else in the report code."""
from __future__ import annotations

# Known backends in report order: the reference framework first, then the others.
BACKEND_TITLES = {"torch": "PyTorch", "paddle": "PaddlePaddle"}
COLORS = {"torch": "#d6604d", "paddle": "#2166ac"}
MARKERS = {"torch": "o", "paddle": "s"}
_FALLBACK_COLORS = ("#4d9221", "#8073ac", "#e08214", "#35978f")


def title(backend: str) -> str:
    return BACKEND_TITLES.get(backend, backend)


def order_key(backend: str) -> tuple[int, str]:
    """Known backends in BACKEND_TITLES order, then any other backend by name."""
    known = list(BACKEND_TITLES)
    return (known.index(backend), backend) if backend in known else (len(known), backend)


def ordered(backends) -> list[str]:
    return sorted(set(backends), key=order_key)


def color(backend: str) -> str:
    if backend in COLORS:
        return COLORS[backend]
    return _FALLBACK_COLORS[sum(map(ord, backend)) % len(_FALLBACK_COLORS)]


def marker(backend: str) -> str:
    return MARKERS.get(backend, "^")
