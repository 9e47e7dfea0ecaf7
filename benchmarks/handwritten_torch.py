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
          device: str, teacher: torch.nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.9,
          amp: str = "off", channels_last: bool = False, compile: bool = False,
          teacher_channels_last: bool | None = None) -> float:
    """Seconds for one pass over `batches`: plain CE training, or Hinton KD when a teacher is given; `amp`
    (bf16 | fp16 with a GradScaler), `channels_last` (of the student; the teacher's by default too) and
    `compile` as a user would write them."""
    optimizer = _optimizer(model, opt["name"], lrs[0], opt["weight_decay"], opt["momentum"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    teacher_fmt = fmt if teacher_channels_last is None else (
        torch.channels_last if teacher_channels_last else torch.contiguous_format)
    model.to(memory_format=fmt)
    if teacher is not None:
        teacher.to(memory_format=teacher_fmt).eval()
    student = torch.compile(model) if compile else model
    teach = torch.compile(teacher) if compile and teacher is not None else teacher
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device) if amp == "fp16" else None
    model.train()
    t0 = time.perf_counter()
    for (x, y), lr in zip(batches, lrs):
        for g in optimizer.param_groups:
            g["lr"] = lr
        xb = torch.from_numpy(x).to(device).contiguous(memory_format=fmt)
        yb = torch.from_numpy(y).to(device)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = student(xb)
            loss = F.cross_entropy(out, yb)
            if teach is not None:
                with torch.no_grad():
                    t = teach(xb.contiguous(memory_format=teacher_fmt))
                kd = F.kl_div(F.log_softmax(out.float() / temperature, 1), F.softmax(t.float() / temperature, 1),
                              reduction="batchmean")
                loss = alpha * temperature ** 2 * kd + (1 - alpha) * loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
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
