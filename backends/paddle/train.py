"""One optimizer step for the paddle backend; the loop, the data and the learning rates come from common/."""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn
from paddle.nn import functional as F
from paddle.nn.quant.quant_layers import FakeQuantMovingAverageAbsMax, MovingAverageAbsMaxScale

from backends.paddle.programs import OnednnDepthwiseProgram, depthwise_conv_count, forward_program
from backends.paddle.prune import apply_masks
from common.config import OptimizerConfig


# PaddleSlim QAT's layers whose training-mode forward updates a moving-average range (input and output scales).
MOVING_RANGE_LAYERS = (FakeQuantMovingAverageAbsMax, MovingAverageAbsMaxScale)
# The model attribute listing the layers a QAT stage froze (backends/paddle/quantize.py `freeze_qat_statistics`).
FROZEN_LAYERS = "_slimbench_frozen_layers"


def hold_frozen_layers(model: nn.Layer) -> None:
    """Back to eval mode for the layers a QAT stage froze (ranges, batch norm): Paddle's train() sets every sublayer
    training."""
    for m in model.__dict__.get(FROZEN_LAYERS, ()):
        m.eval()


class DecoupledAdamW:
    """AdamW computed as paddle.optimizer.AdamW does (param *= 1 - lr * weight_decay, then the Adam update),
    with the Adam update run by Paddle's merged multi-tensor kernel (`Adam(use_multi_tensor=True)`).

    Why: in Paddle 2.6 on a 2-core AMD EPYC VM, once the per-parameter adam/adamw kernel had stepped a
    ResNet50, every later convolution in the process ran about 1.7x slower, even of another model, and the
    process never recovered (fresh model 2.2 s per batch-64 step, then 3.8 s; benchmarks/README.md); on an
    Intel Xeon both optimizers step equally fast. Momentum, SGD, and the merged kernel did not trigger it.
    The update is the same: on a Linear layer three steps agree with
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


class CrossEntropyObjective(nn.Layer):
    """Model and loss as one Layer: the unit that runs eagerly or as one training program."""

    def __init__(self, model: nn.Layer):
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
        return F.cross_entropy(self.model(x), y)


class Trainer:
    """Cross-entropy training step; with `onednn_depthwise`, models with depthwise convolutions train through
    an OnednnDepthwiseProgram (backends/paddle/programs.py; CPU only: the op attribute is a CPU kernel choice)."""

    def __init__(self, model: nn.Layer, cfg: OptimizerConfig, onednn_depthwise: bool = False):
        self.model, self.onednn_depthwise = model, onednn_depthwise
        self.optimizer = make_optimizer(model, cfg)
        self.objective = self.make_objective(model)
        self.program = (OnednnDepthwiseProgram(self.objective)
                        if onednn_depthwise and depthwise_conv_count(model) else None)
        self.frozen_traced = 0  # how many frozen layers the program was traced with (QAT freezes some mid-training)

    def make_objective(self, model: nn.Layer) -> nn.Layer:
        return CrossEntropyObjective(model)

    def inputs(self, x: np.ndarray, y: np.ndarray) -> list[paddle.Tensor]:
        return [paddle.to_tensor(x), paddle.to_tensor(y)]

    def loss(self, x: np.ndarray, y: np.ndarray) -> paddle.Tensor:
        if not self.model.training:  # evaluation left it in eval mode; train() walks every layer, so not per step
            self.objective.train()
            hold_frozen_layers(self.model)
        frozen = len(self.model.__dict__.get(FROZEN_LAYERS, ()))
        if self.program is not None and frozen != self.frozen_traced:
            self.program.retrace()  # traced with those layers in training mode: they would keep updating
            self.frozen_traced = frozen
        return (self.program or self.objective)(*self.inputs(x, y))

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        self.optimizer.set_lr(lr)
        loss = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad(set_to_zero=False)
        apply_masks(self.model)  # pruned weights stay exactly zero (weight decay, momentum)
        return float(loss)


def recalibrate_bn(model: nn.Layer, batches, onednn_depthwise: bool = False) -> None:
    """Cumulative-average BN statistics over the given batches; mirrors the torch backend.

    Paddle has no momentum=None: batch k (0-based) uses momentum k/(k+1), since paddle updates
    running = momentum * running + (1 - momentum) * batch, which is exactly the running average.
    A program fixes the momentum when traced, so there the batches run with momentum 0 (running = batch
    statistics) and the average is taken here.

    Dropout stays off, and every layer's mode is restored: recalibrating draws no random numbers and leaves
    the model as training left it, so recalibrating before every validation does not change the weights.
    In a QAT model the layers that keep moving-average quantization ranges run in eval mode for the pass (in
    training mode they would update the ranges QAT learns); in eval mode they apply the stored ranges.
    """
    bns = [m for m in model.sublayers() if isinstance(m, nn.layer.norm._BatchNormBase)]
    saved = [m._momentum for m in bns]
    modes = [(m, m.training) for m in model.sublayers(include_self=True)]
    program = forward_program(model, "batch-norm statistics") if onednn_depthwise else None
    for m in bns:
        m._mean.set_value(paddle.zeros_like(m._mean))
        m._variance.set_value(paddle.ones_like(m._variance))
    model.train()
    for m in model.sublayers():
        if isinstance(m, (nn.Dropout, *MOVING_RANGE_LAYERS)):
            m.eval()
    sums: list[list[np.ndarray]] = [[np.zeros(m._mean.shape), np.zeros(m._variance.shape)] for m in bns]
    count = 0
    try:
        with paddle.no_grad():
            for k, x in enumerate(batches):
                for m in bns:
                    m._momentum = 0.0 if program else k / (k + 1)
                (program or model)(paddle.to_tensor(x))
                if program:
                    for acc, m in zip(sums, bns):
                        acc[0] += m._mean.numpy()
                        acc[1] += m._variance.numpy()
                count += 1
        if program and count:
            for (mean, var), m in zip(sums, bns):
                m._mean.set_value((mean / count).astype(np.float32))
                m._variance.set_value((var / count).astype(np.float32))
    finally:
        for m, momentum in zip(bns, saved):
            m._momentum = momentum
        for m, training in modes:
            m.training = training


class Training:
    """backends.base.Training on Paddle: steps in the oneDNN depthwise program where cpu_tuning is on."""
    onednn_depthwise: bool

    def trainer(self, model: nn.Layer, opt: OptimizerConfig) -> Trainer:
        return Trainer(model, opt, self.onednn_depthwise)

    def recalibrate_bn(self, model: nn.Layer, batches) -> None:
        recalibrate_bn(model, batches, self.onednn_depthwise)
