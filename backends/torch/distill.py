"""Distillation for the torch backend: features tapped with forward hooks, the plan's loss terms
(backends/torch/distill_losses.py) on the student's and the frozen teacher's outputs."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from backends.base import DistillPlan
from backends.torch import distill_losses
from backends.torch.train import Trainer, make_optimizer, prepare_module, uses_channels_last
from common.config import OptimizerConfig, RuntimeConfig

TOOLS = {"features": "torch forward hooks (nn.Module.register_forward_hook)",
         "losses": "slimbench's own terms (backends/torch/distill_losses.py), matched to Paddle's to 1e-6"}


class FeatureTaps:
    """Forward hooks that keep the latest output of each named module; removed by close()."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = dict.fromkeys(names, 0)
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:  # None: the output is unchanged
            self.outputs[name] = output
            self.calls[name] += 1
        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.outputs = self.outputs, {}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.outputs = [], {}


def feature_shapes(model: nn.Module, names: list[str], x: np.ndarray, device: torch.device
                   ) -> dict[str, tuple[tuple[int, ...], int]]:
    """Output shape and calls per forward of each named module, in eval mode (the model is left as it was)."""
    taps = FeatureTaps(model, names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.from_numpy(x).to(device))
        outputs = taps.take()
    finally:
        taps.close()
        model.train(was_training)
    return {n: (tuple(outputs[n].shape) if isinstance(outputs.get(n), torch.Tensor) else (), taps.calls[n])
            for n in names}


class Distiller(Trainer):
    """Student step against a frozen teacher kept in eval mode, on the plan's weighted loss terms."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: OptimizerConfig, device: torch.device,
                 plan: DistillPlan, runtime: RuntimeConfig = RuntimeConfig()):
        super().__init__(student, cfg, device, runtime)
        self.teacher, self.plan, self.scales = teacher, plan, [1.0] * len(plan.terms)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher_channels_last = uses_channels_last(teacher, runtime, device)
        self.teacher_forward = prepare_module(teacher, runtime, self.teacher_channels_last)
        self.adapters = distill_losses.make_adapters(plan).to(device)
        if len(self.adapters):
            self.adapters.train()
            if self.channels_last:
                self.adapters.to(memory_format=torch.channels_last)
            self.optimizer = make_optimizer(nn.ModuleList([student, self.adapters]), cfg)
        self.student_taps = FeatureTaps(student, plan.student_layers())
        self.teacher_taps = FeatureTaps(teacher, plan.teacher_layers())
        self.tools = dict(TOOLS) if plan.student_layers() else {"losses": TOOLS["losses"]}

    def set_scales(self, scales: list[float]) -> None:
        self.scales = list(scales)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher.training:
            self.teacher.eval()
        fmt = torch.channels_last if self.teacher_channels_last else torch.contiguous_format
        tx = x.contiguous(memory_format=fmt)  # the student's layout may differ (cpu_tuning)
        with torch.no_grad():
            t = self.teacher_forward(tx)
        t_feats = self.teacher_taps.take()
        s = self.forward(x)
        return distill_losses.plan_loss(self.plan, self.scales, s, t, y, self.student_taps.take(), t_feats,
                                        self.adapters)

    def close(self) -> None:
        self.student_taps.close()
        self.teacher_taps.close()


class Distillation:
    """backends.base.Distillation on torch: the Distiller and the hook probes on the configured device."""
    device: torch.device
    runtime: RuntimeConfig

    def distiller(self, student: nn.Module, teacher: nn.Module, opt: OptimizerConfig, plan: DistillPlan
                  ) -> Distiller:
        return Distiller(student, teacher, opt, self.device, plan, self.runtime)

    def feature_shapes(self, model: nn.Module, layers: list[str], x: np.ndarray
                       ) -> dict[str, tuple[tuple[int, ...], int]]:
        return feature_shapes(model, layers, x, self.device)

    def distill_loss(self, plan: DistillPlan, scales: list[float], student_logits: np.ndarray,
                     teacher_logits: np.ndarray, labels: np.ndarray, student_features: dict[str, np.ndarray],
                     teacher_features: dict[str, np.ndarray]) -> float:
        adapters = distill_losses.make_adapters(plan).train()
        as_t = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}  # noqa: E731
        with torch.no_grad():
            return float(distill_losses.plan_loss(plan, scales, torch.from_numpy(student_logits),
                                                  torch.from_numpy(teacher_logits), torch.from_numpy(labels),
                                                  as_t(student_features), as_t(teacher_features), adapters))
