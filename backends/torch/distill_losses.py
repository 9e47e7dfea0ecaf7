"""Distillation loss terms on torch tensors, written op for op as backends/paddle/distill_losses.py so the two
agree to ~1e-6 on the same tensors (tests/integration/test_distill_losses.py checks every term against a float64
reference). The term kinds and their parameters come from common/stages/distill.py."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from backends.base import DistillPlan, DistillTerm

NEG = 1000.0  # DKD masks the target logit out by subtracting this (as mdistiller does)


def kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return temperature * temperature * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def dkd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float,
        temperature: float) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD (Zhao et al. 2022). The binary target/non-target probabilities are taken in
    log space (logsumexp of the masked logits), so a confident student gives no log(0)."""
    gt = F.one_hot(labels, student.shape[1]).to(student.dtype)

    def parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lse = torch.logsumexp(z, dim=1)
        masked = z - NEG * gt
        lse_other = torch.logsumexp(masked, dim=1)
        log_binary = torch.stack([(z * gt).sum(dim=1) - lse, lse_other - lse], dim=1)
        return log_binary, masked - lse_other[:, None]

    bin_s, other_s = parts(student / temperature)
    bin_t, other_t = parts(teacher / temperature)
    tckd = (bin_t.exp() * (bin_t - bin_s)).sum(dim=1).mean()
    nckd = (other_t.exp() * (other_t - other_s)).sum(dim=1).mean()
    return temperature * temperature * (alpha * tckd + beta * nckd)


def feature(student: torch.Tensor, teacher: torch.Tensor, distance: str) -> torch.Tensor:
    d = student - teacher
    if distance == "mse":
        return (d * d).mean()
    a = d.abs()
    return torch.where(a < 1.0, 0.5 * d * d, a - 0.5).mean()  # smooth-L1, beta 1


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    am = f.abs().pow(p).mean(dim=1).flatten(1)
    return am / (am * am).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)


def attention(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    d = attention_map(student, p) - attention_map(teacher, p)
    return (d * d).mean()


def make_adapters(plan: DistillPlan) -> nn.ModuleList:
    """One (1x1 conv + BN) adapter per feature pair that has one, set to the plan's initial weights."""
    out = nn.ModuleList()
    for term in plan.terms:
        for w in term.adapters:
            if w is None:
                continue
            conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w))
            out.append(nn.Sequential(conv, nn.BatchNorm2d(w.shape[0])))
    return out


def term_value(term: DistillTerm, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, s_feats: dict[str, Any],
               t_feats: dict[str, Any], adapters: Any) -> torch.Tensor:
    """One term on this batch; `adapters` yields this term's adapters in pair order."""
    k = term.params
    if term.kind == "kd":
        return kd(s, t, k["temperature"])
    if term.kind == "ce":
        return F.cross_entropy(s, y)
    if term.kind == "hard_label":
        return F.cross_entropy(s, t.argmax(dim=1))
    if term.kind == "dkd":
        return dkd(s, t, y, k["alpha"], k["beta"], k["temperature"])
    total = s.new_zeros(())
    for (t_name, s_name), w in zip(term.pairs, term.adapters):
        sf, tf = s_feats[s_name], t_feats[t_name]
        if term.kind == "feature":
            total = total + feature(next(adapters)(sf) if w is not None else sf, tf, k["distance"])
        else:
            total = total + attention(sf, tf, k["p"])
    return total


def plan_loss(plan: DistillPlan, scales: list[float], s: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
              s_feats: dict[str, Any], t_feats: dict[str, Any], adapters: nn.ModuleList) -> torch.Tensor:
    """sum_i scales[i] * term_i (a term whose scale is 0 is not computed)."""
    it = iter(adapters)
    total = s.new_zeros(())
    for i, term in enumerate(plan.terms):
        value = term_value(term, s, t, y, s_feats, t_feats, it)  # computed even at scale 0: adapters stay in step
        if scales[i]:
            total = total + scales[i] * value
    return total
