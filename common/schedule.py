"""Learning-rate schedules computed once, in common/, so both backends apply the very same value each step."""
from __future__ import annotations

import math

from common.config import ScheduleConfig


def lr_at(step: int, total_steps: int, steps_per_epoch: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    Warm-up is linear from base_lr/(warmup steps) to base_lr; then cosine (to min_lr), step decay at
    epoch milestones (x gamma each), or constant.
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "step":
        epoch = step // max(steps_per_epoch, 1)
        return base_lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_curve(total_steps: int, steps_per_epoch: int, base_lr: float, cfg: ScheduleConfig) -> list[float]:
    return [lr_at(s, total_steps, steps_per_epoch, base_lr, cfg) for s in range(total_steps)]
