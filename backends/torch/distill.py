"""Hinton distillation, hand-written so it matches the paddle backend to 1e-6 on the same logits."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from backends.torch.train import Trainer, prepare_module, uses_channels_last
from common.config import OptimizerConfig, RuntimeConfig


def hinton_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) averaged over the batch + (1 - alpha) * CE."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return alpha * temperature * temperature * kl + (1.0 - alpha) * F.cross_entropy(student, labels)


class Distiller(Trainer):
    """Student step against a frozen teacher kept in eval mode."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: OptimizerConfig, device: torch.device,
                 temperature: float, alpha: float, runtime: RuntimeConfig = RuntimeConfig()):
        super().__init__(student, cfg, device, runtime)
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher_channels_last = uses_channels_last(teacher, runtime, device)
        self.teacher_forward = prepare_module(teacher, runtime, self.teacher_channels_last)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher.training:
            self.teacher.eval()
        fmt = torch.channels_last if self.teacher_channels_last else torch.contiguous_format
        tx = x.contiguous(memory_format=fmt)  # the student's layout may differ (cpu_tuning)
        with torch.no_grad():
            t = self.teacher_forward(tx)
        return hinton_loss(self.forward(x), t, y, self.temperature, self.alpha)


def kd_loss_value(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float, alpha: float) -> float:
    with torch.no_grad():
        return float(hinton_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), temperature, alpha))
