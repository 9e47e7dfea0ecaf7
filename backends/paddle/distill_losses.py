"""Distillation loss terms on paddle tensors, written op for op as backends/torch/distill_losses.py so the two
agree to ~1e-6 on the same tensors (tests/integration/test_distill_losses.py checks every term against a float64
reference). The term kinds and their parameters come from common/stages/distill.py."""
from __future__ import annotations

from typing import Any

import paddle
from paddle import nn
from paddle.nn import functional as F

from backends.base import DistillPlan, DistillTerm

NEG = 1000.0  # DKD masks the target logit out by subtracting this (as mdistiller does)


def kd(student: paddle.Tensor, teacher: paddle.Tensor, temperature: float) -> paddle.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    log_p_s = F.log_softmax(student / temperature, axis=1)
    log_p_t = F.log_softmax(teacher / temperature, axis=1)
    return temperature * temperature * (paddle.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean()


def dkd(student: paddle.Tensor, teacher: paddle.Tensor, labels: paddle.Tensor, alpha: float, beta: float,
        temperature: float) -> paddle.Tensor:
    """alpha * TCKD + beta * NCKD (Zhao et al. 2022), the binary probabilities in log space (see the torch
    backend)."""
    gt = F.one_hot(labels, student.shape[1]).astype(student.dtype)

    def parts(z: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        lse = paddle.logsumexp(z, axis=1)
        masked = z - NEG * gt
        lse_other = paddle.logsumexp(masked, axis=1)
        log_binary = paddle.stack([(z * gt).sum(axis=1) - lse, lse_other - lse], axis=1)
        return log_binary, masked - lse_other.unsqueeze(1)

    bin_s, other_s = parts(student / temperature)
    bin_t, other_t = parts(teacher / temperature)
    tckd = (paddle.exp(bin_t) * (bin_t - bin_s)).sum(axis=1).mean()
    nckd = (paddle.exp(other_t) * (other_t - other_s)).sum(axis=1).mean()
    return temperature * temperature * (alpha * tckd + beta * nckd)


def feature(student: paddle.Tensor, teacher: paddle.Tensor, distance: str) -> paddle.Tensor:
    d = student - teacher
    if distance == "mse":
        return (d * d).mean()
    a = paddle.abs(d)
    return paddle.where(a < 1.0, 0.5 * d * d, a - 0.5).mean()  # smooth-L1, beta 1


def attention_map(f: paddle.Tensor, p: float) -> paddle.Tensor:
    am = paddle.pow(paddle.abs(f), p).mean(axis=1).flatten(1)
    return am / paddle.clip((am * am).sum(axis=1, keepdim=True).sqrt(), min=1e-12)


def attention(student: paddle.Tensor, teacher: paddle.Tensor, p: float) -> paddle.Tensor:
    d = attention_map(student, p) - attention_map(teacher, p)
    return (d * d).mean()


def make_adapters(plan: DistillPlan) -> nn.LayerList:
    """One (1x1 conv + BN) adapter per feature pair that has one, set to the plan's initial weights."""
    out = nn.LayerList()
    for term in plan.terms:
        for w in term.adapters:
            if w is None:
                continue
            conv = nn.Conv2D(w.shape[1], w.shape[0], 1, bias_attr=False)
            conv.weight.set_value(w)
            out.append(nn.Sequential(conv, nn.BatchNorm2D(w.shape[0])))
    return out


def term_value(term: DistillTerm, s: paddle.Tensor, t: paddle.Tensor, y: paddle.Tensor, s_feats: dict[str, Any],
               t_feats: dict[str, Any], adapters: Any) -> paddle.Tensor:
    """One term on this batch; `adapters` yields this term's adapters in pair order."""
    k = term.params
    if term.kind == "kd":
        return kd(s, t, k["temperature"])
    if term.kind == "ce":
        return F.cross_entropy(s, y)
    if term.kind == "hard_label":
        return F.cross_entropy(s, paddle.argmax(t, axis=1))
    if term.kind == "dkd":
        return dkd(s, t, y, k["alpha"], k["beta"], k["temperature"])
    total = None
    for (t_name, s_name), w in zip(term.pairs, term.adapters):
        sf, tf = s_feats[s_name], t_feats[t_name]
        if term.kind == "feature":
            value = feature(next(adapters)(sf) if w is not None else sf, tf, k["distance"])
        else:
            value = attention(sf, tf, k["p"])
        total = value if total is None else total + value
    return total


def plan_loss(plan: DistillPlan, scales: paddle.Tensor, s: paddle.Tensor, t: paddle.Tensor, y: paddle.Tensor,
              s_feats: dict[str, Any], t_feats: dict[str, Any], adapters: nn.LayerList) -> paddle.Tensor:
    """sum_i scales[i] * term_i; `scales` is a tensor input so that a training program traced once follows
    DKD's warm-up."""
    it = iter(adapters)
    total = None
    for i, term in enumerate(plan.terms):
        value = scales[i] * term_value(term, s, t, y, s_feats, t_feats, it)
        total = value if total is None else total + value
    return total
