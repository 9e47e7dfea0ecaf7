"""Metrics computed from numpy outputs only, so both backends are scored by the same code."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per sample: is the label among the k highest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "top1": float(topk_correct(logits, labels, 1).mean()),
        "top5": float(topk_correct(logits, labels, 5).mean()),
        "loss": cross_entropy(logits, labels),
        "samples": int(len(labels)),
    }


def hinton_kd_loss(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, temperature: float,
                   alpha: float) -> float:
    """Reference value: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) (batchmean) + (1 - alpha) * CE."""
    log_p_t = log_softmax(teacher / temperature)
    log_p_s = log_softmax(student / temperature)
    kl = float((np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean())
    return alpha * temperature ** 2 * kl + (1.0 - alpha) * cross_entropy(student, labels)


def logit_difference(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Max absolute difference and the same relative to the largest reference logit magnitude."""
    diff = float(np.abs(reference.astype(np.float64) - other.astype(np.float64)).max())
    scale = float(np.abs(reference).max())
    return {"max_abs": diff, "max_rel": diff / max(scale, 1e-12), "ref_scale": scale,
            "argmax_agree": float((reference.argmax(1) == other.argmax(1)).mean())}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
    """Seconds per call over `repeats` timed calls after `warmup` untimed ones. `fn` must block until done."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def latency_summary(times_s: np.ndarray) -> dict[str, float]:
    """Latency as a distribution (ms): never a single number."""
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean()), "repeats": int(len(ms))}


def conv_macs(out_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> int:
    """MACs of one convolution: output elements x (input channels per group x kernel area).

    The weight's second dimension is already in_channels / groups, so grouped and depthwise convs need nothing more.
    """
    n_out = int(np.prod(out_shape))
    return n_out * int(np.prod(weight_shape[1:]))


def matmul_macs(m: int, k: int, n: int) -> int:
    return m * k * n


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: binomial(n = discordant pairs, 0.5) on the smaller count."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired_predictions(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Compare two models' predictions on the same samples (e.g. int8 vs its fp32 parent).

    `diff` is accuracy(b) - accuracy(a) with a 95% normal-approximation interval over the per-sample paired
    differences; `agreement` is the share of samples where both predict the same class; McNemar's exact
    test asks whether the samples only one of them gets right are lopsided.
    """
    ca, cb = pred_a == labels, pred_b == labels
    d = cb.astype(np.float64) - ca.astype(np.float64)
    n = len(d)
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    return {"samples": n, "top1_a": float(ca.mean()), "top1_b": float(cb.mean()), "diff": float(d.mean()),
            "diff_ci95": [float(d.mean()) - half, float(d.mean()) + half],
            "agreement": float((pred_a == pred_b).mean()), "changed_predictions": int((pred_a != pred_b).sum()),
            "only_a_correct": only_a, "only_b_correct": only_b, "mcnemar_p": mcnemar_exact_p(only_a, only_b)}


def time_alternating(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, np.ndarray]:
    """Seconds per call for several callables timed in alternation (A B A B ...), so that drift in machine
    load (another process, frequency changes) falls on all of them alike instead of on whichever ran last."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: np.empty(repeats) for k in fns}
    for i in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k][i] = time.perf_counter() - t0
    return times
