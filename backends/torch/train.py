"""One optimizer step for the torch backend; the loop, the data and the learning rates come from common/."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.recipe import OptimizerConfig


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)


class Trainer:
    """Cross-entropy training step."""

    def __init__(self, model: nn.Module, cfg: OptimizerConfig, device: torch.device):
        self.model, self.device = model, device
        self.optimizer = make_optimizer(model, cfg)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        xb = torch.from_numpy(x).to(self.device, non_blocking=True)
        yb = torch.from_numpy(y).to(self.device, non_blocking=True)
        loss = self.loss(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def recalibrate_bn(model: nn.Module, batches, device: torch.device) -> None:
    """Cumulative-average BN statistics (momentum=None) over the given batches; mirrors the paddle backend."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.from_numpy(x).to(device))
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
