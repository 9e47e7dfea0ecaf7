"""Hinton distillation, hand-written (not PaddleSlim's Distill: docs/ARCHITECTURE.md, section 6) to match the torch backend."""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddle.nn import functional as F

from backends.paddle.programs import forward_program
from backends.paddle.train import Trainer
from common.config import OptimizerConfig


def hinton_loss(student: paddle.Tensor, teacher: paddle.Tensor, labels: paddle.Tensor, temperature: float,
                alpha: float) -> paddle.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) averaged over the batch + (1 - alpha) * CE."""
    log_p_s = F.log_softmax(student / temperature, axis=1)
    log_p_t = F.log_softmax(teacher / temperature, axis=1)
    kl = (paddle.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=1).mean()
    return alpha * temperature * temperature * kl + (1.0 - alpha) * F.cross_entropy(student, labels)


class HintonObjective(nn.Layer):
    """Student and KD loss as one Layer (see train.CrossEntropyObjective); teacher logits come in as an input."""

    def __init__(self, student: nn.Layer, temperature: float, alpha: float):
        super().__init__()
        self.model, self.temperature, self.alpha = student, temperature, alpha

    def forward(self, x: paddle.Tensor, y: paddle.Tensor, teacher_logits: paddle.Tensor) -> paddle.Tensor:
        return hinton_loss(self.model(x), teacher_logits, y, self.temperature, self.alpha)


class Distiller(Trainer):
    """Student step against a frozen teacher kept in eval mode (the teacher runs eagerly, without gradients)."""

    def __init__(self, student: nn.Layer, teacher: nn.Layer, cfg: OptimizerConfig, temperature: float,
                 alpha: float, onednn_depthwise: bool = False):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        super().__init__(student, cfg, onednn_depthwise)
        for p in teacher.parameters():
            p.stop_gradient = True
        # Looked up once: the frozen teacher's parameters cannot change while it distils.
        self.teacher_forward = (forward_program(teacher, "predict") if onednn_depthwise else None) or teacher

    def make_objective(self, model: nn.Layer) -> nn.Layer:
        return HintonObjective(model, self.temperature, self.alpha)

    def inputs(self, x: np.ndarray, y: np.ndarray) -> list[paddle.Tensor]:
        xb, yb = super().inputs(x, y)
        if self.teacher.training:
            self.teacher.eval()
        with paddle.no_grad():
            t = self.teacher_forward(xb)
        return [xb, yb, t]


def kd_loss_value(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float, alpha: float) -> float:
    with paddle.no_grad():
        return float(hinton_loss(paddle.to_tensor(s), paddle.to_tensor(t), paddle.to_tensor(y), temperature, alpha))
