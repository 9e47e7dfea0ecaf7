"""Seed statistics and the decision verdicts, against values computed by hand."""
from __future__ import annotations

import pytest

from common.report.decision import Metric, collect_metrics, fmt_difference, verdict
from common.stats import paired_difference, summarize, t_quantile_975


def test_t_quantiles_match_the_table():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(4) == pytest.approx(2.776, abs=1e-3)


def test_summary_uses_the_sample_standard_deviation():
    s = summarize([2.0, 4.0, 6.0])
    assert (s.n, s.mean, s.min, s.max) == (3, 4.0, 2.0, 6.0)
    assert s.std == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    assert summarize([5.0]).std == 0.0


def test_paired_difference_three_seeds():
    # d = b - a = [0.05, 0.04, 0.03]: mean 0.04, sd 0.01, half width 4.3027 * 0.01 / sqrt(3) = 0.024841
    d = paired_difference({0: 0.80, 1: 0.82, 2: 0.78}, {0: 0.85, 1: 0.86, 2: 0.81})
    assert d.n == 3
    assert d.mean == pytest.approx(0.04)
    assert d.std == pytest.approx(0.01)
    assert d.ci95 == pytest.approx((0.015159, 0.064841), abs=1e-6)
    assert d.significant is True


def test_paired_difference_is_paired_by_seed_not_by_position():
    # seed 2 only in a, seed 3 only in b: left out; d over seeds 0, 1 = [1, -1]: mean 0, sd sqrt(2)
    d = paired_difference({0: 1.0, 1: 3.0, 2: 100.0}, {1: 2.0, 0: 2.0, 3: -50.0})
    assert d.n == 2 and d.mean == pytest.approx(0.0)
    assert d.ci95 == pytest.approx((-12.7062, 12.7062), abs=1e-4)  # t(1) * sqrt(2) / sqrt(2)
    assert d.significant is False


def test_one_seed_has_no_interval_and_no_verdict_on_significance():
    d = paired_difference({0: 1.0}, {0: 1.5})
    assert d.ci95 is None and d.significant is None and d.mean == 0.5
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def _metric(higher: bool, a: dict, b: dict, unit: str = " ms", scale: float = 1.0) -> Metric:
    m = Metric("latency", "x", unit, higher, scale)
    for s, v in a.items():
        m.add("torch", s, v)
    for s, v in b.items():
        m.add("paddle", s, v)
    return m


def test_verdict_lower_is_better_relative_to_the_framework_behind():
    m = _metric(False, {0: 10.0, 1: 11.0, 2: 9.0}, {0: 5.0, 1: 5.5, 2: 4.5})
    v = verdict(m, "torch", "paddle")
    assert v.ahead == "paddle"
    assert v.relative == pytest.approx(0.5)  # 5 ms less than torch's 10 ms
    assert "50% lower" in v.text and "significant, 3 seeds" in v.text


def test_a_significant_difference_under_one_percent_does_not_read_zero_percent():
    # the committed from_checkpoint report's teacher file: 45.03 MB against 44.81 MB, identical on every seed
    m = _metric(False, {0: 45.03, 1: 45.03, 2: 45.03}, {0: 44.81, 1: 44.81, 2: 44.81})
    v = verdict(m, "torch", "paddle")
    assert v.ahead == "paddle"
    assert "0.5% lower" in v.text and "0% lower" not in v.text.replace("0.5% lower", "")


def test_verdict_accuracy_in_points_and_noise_is_called_noise():
    m = _metric(True, {0: 0.80, 1: 0.90}, {0: 0.82, 1: 0.86}, unit="%", scale=100)
    v = verdict(m, "torch", "paddle")  # d = [+0.02, -0.04]: mean -0.01 -> torch ahead by 1 pt, CI spans 0
    assert v.ahead is None and v.withheld_by == "noise"
    assert v.text == "no verdict: within seed noise (PyTorch +1.00 pts; the 95% interval spans zero, 2 seeds)"
    assert fmt_difference(m, v.difference).startswith("-1.00 [")


def test_a_single_seed_names_no_framework_ahead():
    m = _metric(False, {0: 10.0}, {0: 5.0})
    v = verdict(m, "torch", "paddle")
    assert v.ahead is None and v.withheld_by == "noise"
    assert v.text == "no verdict: within seed noise (PaddlePaddle 50% lower; 1 seed, no interval)"


def test_verdict_names_the_missing_framework():
    m = _metric(True, {0: 0.8}, {})
    assert verdict(m, "torch", "paddle").text == "no result from PaddlePaddle"


def test_collect_metrics_skips_failed_runs():
    ok = {"backend": "torch", "seed": 0, "status": "ok", "stages": [
        {"type": "evaluate", "status": "ok", "name": "evaluate", "models": {"net": {"top1": 0.5}}}]}
    failed = {"backend": "paddle", "seed": 0, "status": "failed", "stages": [
        {"type": "evaluate", "status": "ok", "name": "evaluate", "models": {"net": {"top1": 0.9}}}]}
    (m,) = collect_metrics([ok, failed])
    assert m.by_backend == {"torch": {0: 0.5}}
