"""Statistics over seeds: summaries per backend and the paired (by seed) difference between two backends.

A seed fixes the initial weights and the data order for both frameworks, so the two runs of one seed are a
pair: the difference is taken per seed and its mean gets a Student-t interval over seeds. With one seed there
is nothing to test and the result says so instead of printing an interval of zero width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; 0 for one value), min and max of values across seeds."""
    n: int
    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class PairedDifference:
    """b - a per seed; mean with a 95% t interval (None when fewer than two seeds)."""
    n: int
    mean: float
    std: float
    ci95: tuple[float, float] | None

    @property
    def significant(self) -> bool | None:
        """The interval excludes zero; None when there is no interval to judge by."""
        if self.ci95 is None:
            return None
        return self.ci95[0] > 0 or self.ci95[1] < 0


def summarize(values: list[float]) -> Summary:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("summarize: no values")
    return Summary(int(a.size), float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   float(a.min()), float(a.max()))


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t critical value (12.706 for 1 degree of freedom, 4.303 for 2)."""
    return float(_scipy_stats.t.ppf(0.975, dof))


def paired_difference(a_by_seed: dict[int, float], b_by_seed: dict[int, float]) -> PairedDifference | None:
    """Mean of b - a over the seeds both have, with a 95% interval; None when no seed is shared."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        return None
    d = np.array([b_by_seed[s] - a_by_seed[s] for s in seeds], dtype=float)
    n = len(d)
    if n < 2:
        return PairedDifference(1, float(d[0]), 0.0, None)
    sd = float(d.std(ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    m = float(d.mean())
    return PairedDifference(n, m, sd, (m - half, m + half))
