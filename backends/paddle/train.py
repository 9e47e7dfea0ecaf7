"""One optimizer step for the paddle backend; the loop, the data and the learning rates come from common/."""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddle.nn import functional as F

from backends.paddle.prune import apply_masks
from common.recipe import OptimizerConfig


class DecoupledAdamW:
    """AdamW computed as paddle.optimizer.AdamW does (param *= 1 - lr * weight_decay, then the Adam update),
    with the Adam update run by Paddle's merged multi-tensor kernel (`Adam(use_multi_tensor=True)`).

    Why: in Paddle 2.6 on CPU, once the per-parameter adam/adamw kernel has stepped a ResNet50, every later
    convolution in the process runs about 1.7x slower, even of another model, and the process never recovers
    (fresh model 2.2 s per batch-64 step, then 3.8 s; benchmarks/README.md). Momentum, SGD, and the merged
    kernel do not trigger it. The update is the same: on a Linear layer three steps agree with
    paddle.optimizer.AdamW and torch.optim.AdamW to 1e-7 (tests/integration/test_parity.py)."""

    def __init__(self, params: list, lr: float, weight_decay: float, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8):
        self.params, self.weight_decay = params, weight_decay
        self.adam = paddle.optimizer.Adam(learning_rate=lr, parameters=params, beta1=beta1, beta2=beta2,
                                          epsilon=epsilon, use_multi_tensor=True)

    def set_lr(self, lr: float) -> None:
        self.adam.set_lr(lr)

    def get_lr(self) -> float:
        return self.adam.get_lr()

    def step(self) -> None:
        if self.weight_decay:
            keep = 1.0 - self.adam.get_lr() * self.weight_decay
            with paddle.no_grad():
                for p in self.params:
                    p.scale_(keep)
        self.adam.step()

    def clear_grad(self, set_to_zero: bool = True) -> None:
        self.adam.clear_grad(set_to_zero=set_to_zero)


def make_optimizer(model: nn.Layer, cfg: OptimizerConfig) -> paddle.optimizer.Optimizer | DecoupledAdamW:
    params = [p for p in model.parameters() if not p.stop_gradient]
    if cfg.name == "sgd":
        # Momentum with L2Decay adds wd * param to the gradient before the momentum update, as torch SGD does.
        decay = paddle.regularizer.L2Decay(cfg.weight_decay) if cfg.weight_decay else None
        return paddle.optimizer.Momentum(learning_rate=cfg.lr, momentum=cfg.momentum, parameters=params,
                                         use_nesterov=cfg.nesterov, weight_decay=decay)
    return DecoupledAdamW(params, cfg.lr, cfg.weight_decay)


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
