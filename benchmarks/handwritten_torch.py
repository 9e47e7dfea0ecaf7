"""The loops a PyTorch user would write by hand: the yardstick for the project's own stages."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F


def _optimizer(model: torch.nn.Module, name: str, lr: float, wd: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


def train(model: torch.nn.Module, batches: list[tuple[np.ndarray, np.ndarray]], lrs: list[float], opt: dict,
          device: str, teacher: torch.nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9) -> float:
    """Seconds for one pass over `batches`: plain CE training, or Hinton KD when a teacher is given."""
    optimizer = _optimizer(model, opt["name"], lrs[0], opt["weight_decay"], opt["momentum"])
    model.train()
    if teacher is not None:
        teacher.eval()
    t0 = time.perf_counter()
    for (x, y), lr in zip(batches, lrs):
        for g in optimizer.param_groups:
            g["lr"] = lr
        xb, yb = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        if teacher is not None:
            with torch.no_grad():
                t = teacher(xb)
            kd = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
            loss = alpha * temperature ** 2 * kd + (1 - alpha) * loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def artifact_predictor(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """Minimal timing target: the exported program called directly."""
    module = torch.export.load(path).module()

    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return call
