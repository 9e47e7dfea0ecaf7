"""One optimizer step for the paddle backend; the loop, the data and the learning rates come from common/."""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddle.nn import functional as F

from backends.paddle.prune import apply_masks
from common.recipe import OptimizerConfig


def make_optimizer(model: nn.Layer, cfg: OptimizerConfig) -> paddle.optimizer.Optimizer:
    params = [p for p in model.parameters() if not p.stop_gradient]
    if cfg.name == "sgd":
        # Momentum with L2Decay adds wd * param to the gradient before the momentum update, as torch SGD does.
        decay = paddle.regularizer.L2Decay(cfg.weight_decay) if cfg.weight_decay else None
        return paddle.optimizer.Momentum(learning_rate=cfg.lr, momentum=cfg.momentum, parameters=params,
                                         use_nesterov=cfg.nesterov, weight_decay=decay)
    return paddle.optimizer.AdamW(learning_rate=cfg.lr, parameters=params, weight_decay=cfg.weight_decay,
                                  beta1=0.9, beta2=0.999, epsilon=1e-8)


class Trainer:
    """Cross-entropy training step."""

    def __init__(self, model: nn.Layer, cfg: OptimizerConfig):
        self.model = model
        self.optimizer = make_optimizer(model, cfg)

    def loss(self, x: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
        return F.cross_entropy(self.model(x), y)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        self.model.train()
        self.optimizer.set_lr(lr)
        loss = self.loss(paddle.to_tensor(x), paddle.to_tensor(y))
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad(set_to_zero=False)
        apply_masks(self.model)  # pruned weights stay exactly zero (weight decay, momentum)
        return float(loss)


def recalibrate_bn(model: nn.Layer, batches) -> None:
    """Cumulative-average BN statistics over the given batches; mirrors the torch backend.

    Paddle has no momentum=None: batch k (0-based) uses momentum k/(k+1), since paddle updates
    running = momentum * running + (1 - momentum) * batch, which is exactly the running average.
    """
    bns = [m for m in model.sublayers() if isinstance(m, nn.layer.norm._BatchNormBase)]
    saved = [m._momentum for m in bns]
    for m in bns:
        m._mean.set_value(paddle.zeros_like(m._mean))
        m._variance.set_value(paddle.ones_like(m._variance))
    model.train()
    try:
        with paddle.no_grad():
            for k, x in enumerate(batches):
                for m in bns:
                    m._momentum = k / (k + 1)
                model(paddle.to_tensor(x))
    finally:
        for m, momentum in zip(bns, saved):
            m._momentum = momentum
