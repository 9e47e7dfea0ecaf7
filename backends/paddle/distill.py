"""Distillation for the paddle backend: features tapped with forward post hooks, the plan's loss terms
(backends/paddle/distill_losses.py) on the student's and the frozen teacher's outputs.

Not PaddleSlim's Distill: it monkeypatches paddle.nn.functional and mishandles an eval-mode teacher
(docs/ARCHITECTURE.md, section 6); the hooks and losses here are the same ones the torch backend uses.
Under cpu_tuning the student's objective, taps and adapters included, runs as one to_static training program
with oneDNN depthwise convolutions, and the frozen teacher's forward, returning its logits and tapped features,
on a Paddle Inference predictor built in memory (frozen_forward.InferenceForward)."""
from __future__ import annotations

from typing import Any

import numpy as np
import paddle
from paddle import nn

from backends.base import DistillPlan
from backends.paddle import distill_losses
from backends.paddle.frozen_forward import RUNTIME as TEACHER_RUNTIME, InferenceForward
from backends.paddle.programs import ForwardOnly
from backends.paddle.train import Trainer, make_optimizer
from common.config import OptimizerConfig

TOOLS = {"features": "paddle forward post hooks (Layer.register_forward_post_hook)",
         "losses": "slimbench's own terms (backends/paddle/distill_losses.py), matched to torch's to 1e-6; "
                   "PaddleSlim's Distill not used (it monkeypatches paddle.nn.functional and mishandles an "
                   "eval-mode teacher)"}


class FeatureTaps:
    """Forward post hooks that keep the latest output of each named sublayer; removed by close()."""

    def __init__(self, model: nn.Layer, names: list[str]):
        self.names = names
        self.outputs: dict[str, paddle.Tensor] = {}
        self.calls: dict[str, int] = dict.fromkeys(names, 0)
        layers = dict(model.named_sublayers())
        self.handles = [layers[n].register_forward_post_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(_layer: nn.Layer, _inputs: Any, output: Any) -> None:  # None: the output is unchanged
            self.outputs[name] = output
            self.calls[name] += 1
        return hook

    def take(self) -> dict[str, paddle.Tensor]:
        out, self.outputs = self.outputs, {}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.outputs = [], {}


def feature_shapes(model: nn.Layer, layers: list[str], x: np.ndarray) -> dict[str, tuple[tuple[int, ...], int]]:
    """Output shape and calls per forward of each named sublayer, in eval mode (the model is left as it was)."""
    taps = FeatureTaps(model, layers)
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.to_tensor(x))
        outputs = taps.take()
    finally:
        taps.close()
        model.train() if was_training else model.eval()
    return {n: (tuple(outputs[n].shape) if isinstance(outputs.get(n), paddle.Tensor) else (), taps.calls[n])
            for n in layers}


class TappedForward(nn.Layer):
    """The teacher's forward returning [logits, *tapped features]: a program's hooks see static variables,
    which only leave the program as outputs."""

    def __init__(self, model: nn.Layer, taps: FeatureTaps):
        super().__init__()
        self.model, self.taps = model, taps

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        logits = self.model(x)
        feats = self.taps.take()
        return [logits] + [feats[n] for n in self.taps.names]


def pack(features: list[paddle.Tensor]) -> paddle.Tensor:
    """Teacher features as one (N, sum C*H*W) input: a to_static program takes a fixed argument list."""
    return paddle.concat([f.flatten(1) for f in features], axis=1)


class DistillObjective(nn.Layer):
    """Student, adapters and the plan's loss as one Layer (see train.CrossEntropyObjective): the unit that runs
    eagerly or as one training program. Teacher logits, the term scales and the packed teacher features come in
    as inputs; `teacher_shapes` (C, H, W per teacher layer) are set before the first call."""

    def __init__(self, student: nn.Layer, plan: DistillPlan, adapters: nn.LayerList, taps: FeatureTaps,
                 teacher_layers: list[str]):
        super().__init__()
        self.model, self.adapters = student, adapters
        self.plan, self.taps, self.teacher_layers = plan, taps, teacher_layers
        self.teacher_shapes: list[tuple[int, ...]] = []

    def forward(self, x: paddle.Tensor, y: paddle.Tensor, teacher_logits: paddle.Tensor, scales: paddle.Tensor,
                teacher_features: paddle.Tensor | None = None) -> paddle.Tensor:
        s = self.model(x)
        t_feats, start = {}, 0
        for name, shape in zip(self.teacher_layers, self.teacher_shapes):
            size = int(np.prod(shape))
            t_feats[name] = teacher_features[:, start:start + size].reshape([-1, *shape])
            start += size
        return distill_losses.plan_loss(self.plan, scales, s, teacher_logits, y, self.taps.take(), t_feats,
                                        self.adapters)


class Distiller(Trainer):
    """Student step against a frozen teacher kept in eval mode (the teacher runs without gradients)."""

    def __init__(self, student: nn.Layer, teacher: nn.Layer, cfg: OptimizerConfig, plan: DistillPlan,
                 onednn_depthwise: bool = False, threads: int = 1):
        self.teacher, self.plan = teacher, plan
        self.adapters = distill_losses.make_adapters(plan)
        self.adapters.train()
        self.student_taps = FeatureTaps(student, plan.student_layers())
        self.teacher_taps = FeatureTaps(teacher, plan.teacher_layers())
        self.scales = paddle.to_tensor(np.ones(len(plan.terms), np.float32))
        super().__init__(student, cfg, onednn_depthwise)
        if len(self.adapters):
            self.optimizer = make_optimizer(nn.LayerList([student, self.adapters]), cfg)
        for p in teacher.parameters():
            p.stop_gradient = True
        forward = TappedForward(teacher, self.teacher_taps) if plan.teacher_layers() else ForwardOnly(teacher)
        self.teacher_forward: Any = InferenceForward(forward, teacher, threads) if onednn_depthwise else forward
        self.tools = dict(TOOLS) if plan.student_layers() else {"losses": TOOLS["losses"]}
        if self.program is not None:
            self.tools["program"] = ("the student's objective (loss terms, taps and adapters included) trains as "
                                     "one to_static program with oneDNN depthwise convolutions")
        if onednn_depthwise:
            self.tools["teacher"] = (f"the frozen teacher's forward, tapped features included, runs on "
                                     f"{TEACHER_RUNTIME} (dygraph's outputs to ~3e-6; "
                                     "benchmarks/paddle_teacher_forward.py)")

    def make_objective(self, model: nn.Layer) -> nn.Layer:
        return DistillObjective(model, self.plan, self.adapters, self.student_taps, self.plan.teacher_layers())

    def set_scales(self, scales: list[float]) -> None:
        self.scales = paddle.to_tensor(np.asarray(scales, np.float32))

    def inputs(self, x: np.ndarray, y: np.ndarray) -> list[paddle.Tensor]:
        xb, yb = super().inputs(x, y)
        if self.teacher.training:
            self.teacher.eval()
        with paddle.no_grad():
            out = self.teacher_forward(xb)
        if not isinstance(out, (list, tuple)):
            return [xb, yb, out, self.scales]
        if not self.objective.teacher_shapes:
            self.objective.teacher_shapes = [tuple(f.shape[1:]) for f in out[1:]]
        return [xb, yb, out[0], self.scales, pack(list(out[1:]))]

    def close(self) -> None:
        """Removes the hooks; refuses a teacher whose weights changed during the stage, since a predictor would
        have kept distilling from the old ones."""
        self.student_taps.close()
        self.teacher_taps.close()
        if isinstance(self.teacher_forward, InferenceForward) and self.teacher_forward.changed():
            raise RuntimeError("the teacher's weights changed during distillation, but its predictor computed "
                               "with the copy taken at the first step; a teacher must stay frozen for the stage")


class Distillation:
    """backends.base.Distillation on Paddle: the Distiller (in the oneDNN program where cpu_tuning is on) and
    the hook probes."""
    onednn_depthwise: bool
    threads: int

    def distiller(self, student: nn.Layer, teacher: nn.Layer, opt: OptimizerConfig, plan: DistillPlan
                  ) -> Distiller:
        return Distiller(student, teacher, opt, plan, self.onednn_depthwise, self.threads)

    feature_shapes = staticmethod(feature_shapes)

    def distill_loss(self, plan: DistillPlan, scales: list[float], student_logits: np.ndarray,
                     teacher_logits: np.ndarray, labels: np.ndarray, student_features: dict[str, np.ndarray],
                     teacher_features: dict[str, np.ndarray]) -> float:
        adapters = distill_losses.make_adapters(plan)
        adapters.train()
        as_p = lambda d: {k: paddle.to_tensor(v) for k, v in d.items()}  # noqa: E731
        with paddle.no_grad():
            return float(distill_losses.plan_loss(plan, paddle.to_tensor(np.asarray(scales, np.float32)),
                                                  paddle.to_tensor(student_logits), paddle.to_tensor(teacher_logits),
                                                  paddle.to_tensor(labels), as_p(student_features),
                                                  as_p(teacher_features), adapters))
