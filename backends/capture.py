"""Keep a framework's warnings (deprecations, fallbacks) so they reach the result file instead of a log."""
from __future__ import annotations

import warnings
from typing import Any, Callable


def recorded_warnings(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run `fn`; return its value and the distinct first lines of the warnings it raised, in order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn()
    seen: dict[str, None] = {}
    for w in caught:
        first_line = (str(w.message).strip().splitlines() or [""])[0]
        seen.setdefault(" ".join(first_line.split())[:200], None)
    return value, list(seen)


def merge_distinct(*groups: list[str]) -> list[str]:
    """Warning lists of several steps as one, each message once, in first-seen order."""
    return list(dict.fromkeys(m for g in groups for m in g))
