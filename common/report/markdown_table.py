"""Markdown tables: one helper for every report section."""
from __future__ import annotations

from typing import Iterable


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; `_none_` when there are no rows."""
    rows = list(rows)
    if not rows:
        return "_none_\n"
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
