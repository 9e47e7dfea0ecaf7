"""Lookups and number formats shared by the report sections (common/report/build.py and each stage type's section)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.backend_names import ordered, title
from common.report.markdown_table import table
from common.metrics import paired_predictions
from common.stats import paired_difference, summarize
from common.report.validity import Finding, blocking_reason, check_run, lineage, prediction_path


class ReportIndex:
    """Values per (stage type, model slot, backend) across seeds, from result records."""

    def __init__(self, results: list[dict]):
        self.results = results
        self.backends = ordered(r["backend"] for r in results)
        self._validity: tuple[list[Finding], dict[str, set[str]]] | None = None

    def validity(self, run_dir: Path, meta: dict) -> tuple[list[Finding], dict[str, set[str]]]:
        """The run's validity findings and slot lineage, computed once per report (the checks read every saved
        prediction file) and shared by the summary, results.json and every section that gives a verdict."""
        if self._validity is None:
            self._validity = (check_run(run_dir, self.results), lineage(meta))
        return self._validity

    def stage_records(self, backend: str, stage_type: str) -> list[tuple[int, dict]]:
        return [(r["seed"], st) for r in self.results if r["backend"] == backend
                for st in r.get("stages", []) if st["type"] == stage_type and st.get("status") == "ok"]

    def values(self, backend: str, stage_type: str, slot: str, key: str) -> list[float]:
        out = []
        for _, st in self.stage_records(backend, stage_type):
            m = st.get("models", {}).get(slot)
            if m is not None and key in m:
                out.append(m[key])
        return out


def fmt_values(values: list[float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """mean ± std over seeds (std only where n > 1), '–' for no values."""
    if not values:
        return "–"
    st = summarize([v * scale for v in values])
    return f"{st.mean:.{digits}f}{unit}" + (f" ± {st.std:.{digits}f}" if st.n > 1 else "")


def fmt_count(n: float) -> str:
    """Human count: 23.53 M, 5.5 k."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def batch_order(bs: str) -> tuple[int, str]:
    """Batch-size keys ("1", "32") in numeric order."""
    return (int(bs), bs) if str(bs).isdigit() else (1 << 30, str(bs))


def prediction_file(run_dir: Path, ix: ReportIndex, backend: str, seed: int, slot: str) -> Path | None:
    """The saved validation predictions of a model slot (from the evaluate stage), if there are any on disk."""
    for r in ix.results:
        if r["backend"] == backend and r["seed"] == seed:
            return prediction_path(run_dir, r, slot)
    return None


def paired_files(file_a: Path, file_b: Path) -> dict[str, Any]:
    """paired_predictions of two saved prediction files, which must cover the same validation samples."""
    pa, pb = np.load(file_a), np.load(file_b)
    if not np.array_equal(pa["label"], pb["label"]):
        raise ValueError(f"{file_a} and {file_b} cover different validation samples")
    return paired_predictions(pa["pred"], pb["pred"], pa["label"])


def paired_prediction_files(run_dir: Path, ix: ReportIndex, a: tuple[str, str], b: tuple[str, str],
                            seed: int) -> dict[str, Any] | None:
    """Per-sample comparison of (backend, slot) a and b on one seed, or None where predictions are missing."""
    files = [prediction_file(run_dir, ix, backend, seed, slot) for backend, slot in (a, b)]
    return paired_files(*files) if all(files) else None


def delta_table(ix: ReportIndex, run_dir: Path, meta: dict, title_: str,
                items: list[tuple[str, str, str, dict[int, float], dict[int, float], str]]) -> str:
    """Compressed model against its parent across seeds: (stage, backend, 'parent → child', parent top-1 by seed,
    child top-1 by seed, child slot) per row; the change paired by seed with its 95% interval, and a verdict only
    where the numbers can carry one (common/report/validity.py)."""
    if not items:
        return ""
    findings, family = ix.validity(run_dir, meta)
    rows = []
    for stage, backend, pair, parent, child, slot in items:
        d = paired_difference(parent, child)
        cell = "–" if d is None else f"{d.mean * 100 + 0.0:+.2f} pts" + (
            f" [{d.ci95[0] * 100 + 0.0:+.2f}, {d.ci95[1] * 100 + 0.0:+.2f}]" if d.ci95 else "")
        reason = blocking_reason(findings, "accuracy", slot, family)
        if reason:
            verdict = f"no verdict: {reason}"
        elif d is None or d.significant is None:
            verdict = "no verdict: one seed"
        elif d.significant:
            verdict = f"**{'costs' if d.mean < 0 else 'gains'} {abs(d.mean) * 100:.2f} pts** (significant, {d.n} seeds)"
        else:
            verdict = f"no significant change ({d.n} seeds)"
        rows.append([f"`{stage}`", title(backend), pair, fmt_values(list(parent.values()), 100, unit="%"),
                     fmt_values(list(child.values()), 100, unit="%"), cell, verdict])
    return (f"{title_}\n\n" + table(["stage", "backend", "parent → compressed", "parent top-1", "compressed top-1",
                                     "change, pts [95% CI over seeds]", "verdict"], rows) + "\n")
