"""Metrics computed from numpy outputs only, so both backends are scored by the same code."""
from __future__ import annotations

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
