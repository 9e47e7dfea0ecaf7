import numpy as np
import pytest

from common.metrics import (classification_metrics, conv_macs, cross_entropy, hinton_kd_loss, latency_summary,
                            logit_difference, topk_correct)


def test_topk_and_cross_entropy_hand_computed():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = np.array([1, 2])
    assert topk_correct(logits, labels, 1).tolist() == [False, True]
    assert topk_correct(logits, labels, 2).tolist() == [True, True]
    ce0 = -np.log(np.exp(1) / (np.exp(2) + np.exp(1) + 1))
    ce1 = -np.log(np.exp(3) / (2 + np.exp(3)))
    assert cross_entropy(logits, labels) == pytest.approx((ce0 + ce1) / 2)
    m = classification_metrics(logits, labels)
    assert m["top1"] == 0.5 and m["top5"] == 1.0 and m["samples"] == 2


def test_hinton_loss_hand_computed():
    s, t, y = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([0])
    T, a = 2.0, 0.75
    ps = np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum()
    pt = np.exp([0.0, 0.5]) / np.exp([0.0, 0.5]).sum()
    kl = float((pt * np.log(pt / ps)).sum())
    ce = -np.log(np.exp(1) / (np.exp(1) + 1))
    assert hinton_kd_loss(s, t, y, T, a) == pytest.approx(a * T * T * kl + (1 - a) * ce)
    assert hinton_kd_loss(s, s, y, T, 1.0) == pytest.approx(0.0)


def test_latency_summary_and_logit_difference():
    s = latency_summary(np.array([0.001, 0.002, 0.003, 0.004, 0.010]))
    assert s["p50_ms"] == pytest.approx(3.0) and s["max_ms"] == pytest.approx(10.0) and s["repeats"] == 5
    d = logit_difference(np.array([[1.0, -4.0]]), np.array([[1.0, -3.0]]))
    assert d["max_abs"] == 1.0 and d["max_rel"] == 0.25 and d["argmax_agree"] == 1.0


def test_conv_macs():
    # 3x3 conv, 16 -> 32 channels, 8x8 output: 32*8*8 outputs x 16*3*3 MACs each
    assert conv_macs((1, 32, 8, 8), (32, 16, 3, 3)) == 32 * 64 * 144
    # depthwise: weight (C, 1, 3, 3)
    assert conv_macs((1, 32, 8, 8), (32, 1, 3, 3)) == 32 * 64 * 9


def test_mcnemar_exact_hand_computed():
    from common.metrics import mcnemar_exact_p
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)          # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact_p(9, 1) == pytest.approx(2 * 11 / 1024)   # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact_p(3, 3) == 1.0


def test_paired_predictions_hand_computed():
    from common.metrics import paired_predictions
    labels = np.array([0, 1, 2, 3, 0, 1])
    a = np.array([0, 1, 2, 3, 1, 1])   # 5 right
    b = np.array([0, 1, 2, 0, 0, 2])   # 4 right: misses 3 and 5, gets 4 (a missed it)
    r = paired_predictions(a, b, labels)
    assert r["top1_a"] == pytest.approx(5 / 6) and r["top1_b"] == pytest.approx(4 / 6)
    assert r["diff"] == pytest.approx(-1 / 6)
    d = np.array([0, 0, 0, -1, 1, -1.0])
    half = 1.96 * d.std(ddof=1) / np.sqrt(6)
    assert r["diff_ci95"] == pytest.approx([-1 / 6 - half, -1 / 6 + half])
    assert r["agreement"] == pytest.approx(3 / 6) and r["changed_predictions"] == 3
    assert (r["only_a_correct"], r["only_b_correct"]) == (2, 1)
    assert r["mcnemar_p"] == pytest.approx(1.0)  # 2 * (1 + 3) / 8 capped at 1


def test_time_alternating_interleaves_the_callables():
    from common.metrics import time_alternating
    calls: list[str] = []
    times = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(len(t) == 3 and (t >= 0).all() for t in times.values())


def test_recorded_warnings_keeps_distinct_first_lines_in_order():
    import warnings
    from backends.capture import recorded_warnings

    def noisy() -> int:
        warnings.warn("x is deprecated.   Use y\nmore detail", DeprecationWarning)
        warnings.warn("x is deprecated.   Use y\nmore detail", DeprecationWarning)
        warnings.warn("second", UserWarning)
        return 7

    assert recorded_warnings(noisy) == (7, ["x is deprecated. Use y", "second"])


def test_merge_distinct_keeps_first_seen_order():
    from backends.capture import merge_distinct
    assert merge_distinct(["a", "b"], ["b", "c", "a"], ["d"]) == ["a", "b", "c", "d"]
