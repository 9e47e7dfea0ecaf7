"""One optimizer step for the paddle backend; the loop, the data and the learning rates come from common/."""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddle.nn import functional as F
from paddle.static import InputSpec

from backends.paddle.prune import apply_masks
from common.recipe import OptimizerConfig

# Ops the training program runs on Paddle's oneDNN kernels. Only depthwise convolution: Paddle 2.6's oneDNN
# conv2d and batch_norm gradients are wrong or less accurate in a training program (benchmarks/README.md).
ONEDNN_OPS = ("depthwise_conv2d",)
ONEDNN_DEPTHWISE_NOTE = ("models with depthwise convolutions train through a paddle.jit.to_static program whose "
                         "depthwise convolutions run on Paddle's oneDNN kernels (the op's use_mkldnn attribute); "
                         "dygraph runs them as a loop of per-sample, per-channel GEMMs (~6x slower MobileNetV2 steps)")


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


def depthwise_conv_count(model: nn.Layer) -> int:
    """Convolutions with one input channel per group: what Paddle's native CPU kernel is slowest at."""
    return sum(1 for m in model.sublayers()
               if getattr(m, "_groups", 1) > 1 and getattr(m, "weight", None) is not None and m.weight.shape[1] == 1)


class OnednnDepthwiseProgram:
    """Runs a loss Layer as a paddle.jit.to_static training program whose depthwise convolutions use Paddle's
    oneDNN kernels; the parameters stay the dygraph model's own, so optimizer, masks and checkpoints see them.

    Why: Paddle dygraph never uses oneDNN on the CPU (ONEDNN_VERBOSE shows no primitive even with
    FLAGS_use_mkldnn=1), and its native depthwise kernel is a loop of per-sample, per-channel GEMMs: 92% of a
    MobileNetV2 step. FLAGS_use_mkldnn=1 under to_static moves every op to oneDNN, whose conv2d weight gradients
    are wrong in Paddle 2.6 (and ResNet50 aborts), so only the depthwise ops are switched, through the op
    attribute that Paddle's own static programs use. Gradients checked against float64 in
    tests/integration/test_paddle_training_program.py; speed in benchmarks/paddle_cpu_training.py."""

    def __init__(self, objective: nn.Layer):
        self.objective = objective
        self.static: paddle.jit.dy2static.program_translator.StaticFunction | None = None
        self.onednn_ops = 0  # switched in the latest program (one program per input signature)

    def __call__(self, *inputs: paddle.Tensor) -> paddle.Tensor:
        if self.static is None:
            specs = [InputSpec([None, *t.shape[1:]], t.dtype) for t in inputs]  # any batch size, one program
            self.static = paddle.jit.to_static(self.objective, input_spec=specs, full_graph=True).forward
        _, program = self.static.get_concrete_program(*inputs)
        if not getattr(program, "_slimbench_onednn", False):  # before the program first runs
            ops = [op for op in program._origin_main_program.global_block().ops if op.type in ONEDNN_OPS]
            for op in ops:
                op._set_attr("use_mkldnn", True)
            program._slimbench_onednn = True
            self.onednn_ops = len(ops)
        return self.static(*inputs)


class CrossEntropyObjective(nn.Layer):
    """Model and loss as one Layer: the unit that runs eagerly or as one training program."""

    def __init__(self, model: nn.Layer):
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
        return F.cross_entropy(self.model(x), y)


class Trainer:
    """Cross-entropy training step; with `onednn_depthwise`, models with depthwise convolutions train through
    an OnednnDepthwiseProgram (on the CPU only: the op attribute is a CPU kernel choice)."""

    def __init__(self, model: nn.Layer, cfg: OptimizerConfig, onednn_depthwise: bool = False):
        self.model = model
        self.optimizer = make_optimizer(model, cfg)
        self.objective = self.make_objective(model)
        self.program = (OnednnDepthwiseProgram(self.objective)
                        if onednn_depthwise and depthwise_conv_count(model) else None)

    def make_objective(self, model: nn.Layer) -> nn.Layer:
        return CrossEntropyObjective(model)

    def inputs(self, x: np.ndarray, y: np.ndarray) -> list[paddle.Tensor]:
        return [paddle.to_tensor(x), paddle.to_tensor(y)]

    def loss(self, x: np.ndarray, y: np.ndarray) -> paddle.Tensor:
        self.objective.train()
        return (self.program or self.objective)(*self.inputs(x, y))

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        self.optimizer.set_lr(lr)
        loss = self.loss(x, y)
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
