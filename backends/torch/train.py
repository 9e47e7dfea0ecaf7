"""One optimizer step for the torch backend; the loop, the data and the learning rates come from common/."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.quantization import FakeQuantizeBase
from torch.nn import functional as F

from common.pruning import is_depthwise
from common.config import OptimizerConfig, RuntimeConfig

CPU_TUNING_NOTE = ("models with depthwise convolutions train in channels_last (NHWC) on the CPU: torch's oneDNN "
                   "kernels run MobileNetV2 steps about 2x faster that way (ResNet50, without depthwise convolutions, "
                   "is slower in NHWC and stays NCHW)")


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)


# torch.ao's QAT conv-BN modules: their forward scales the weights by the BN running statistics.
QAT_CONV_BN = (nniqat.ConvBn1d, nniqat.ConvBn2d, nniqat.ConvBn3d, nniqat.ConvBnReLU1d, nniqat.ConvBnReLU2d,
               nniqat.ConvBnReLU3d)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def has_depthwise(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and is_depthwise(tuple(m.weight.shape))
               for m in model.modules())


def uses_channels_last(model: nn.Module, runtime: RuntimeConfig, device: torch.device) -> bool:
    """channels_last when asked, and under cpu_tuning for models with depthwise convolutions on the CPU."""
    return runtime.channels_last or (runtime.cpu_tuning and device.type == "cpu" and has_depthwise(model))


def prepare_module(model: nn.Module, runtime: RuntimeConfig, channels_last: bool) -> nn.Module:
    """The callable a training step runs: NHWC weights for channels_last, torch.compile when asked.
    The module itself stays the eager one (its parameters are shared), so evaluation and export see it."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if runtime.compile else model


def normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """((x / 255) - mean) / std in float32 with tensor operands only: bit-identical to the numpy stream.
    (Dividing by a Python scalar would let CUDA multiply by the reciprocal instead, which rounds differently.)"""
    out = x.to(torch.float32)
    out.div_(torch.full((), 255.0, dtype=torch.float32, device=x.device))
    out.sub_(mean)
    out.div_(std)
    return out


class Trainer:
    """Cross-entropy training step, with the recipe's runtime options (amp, channels_last, compile)."""

    def __init__(self, model: nn.Module, cfg: OptimizerConfig, device: torch.device,
                 runtime: RuntimeConfig = RuntimeConfig()):
        self.model, self.device, self.runtime = model, device, runtime
        self.optimizer = make_optimizer(model, cfg)
        self.channels_last = uses_channels_last(model, runtime, device)
        self.forward = prepare_module(model, runtime, self.channels_last)
        self.amp_dtype = _AMP_DTYPES.get(runtime.amp)
        # fp16 needs loss scaling against gradient underflow; bf16 has fp32's exponent range and does not.
        self.scaler = torch.amp.GradScaler(device.type) if runtime.amp == "fp16" else None
        self.norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def normalize_on_device(self, mean: np.ndarray, std: np.ndarray) -> bool:
        """Take uint8 batches and normalize them with torch's kernels, bit-identically to the numpy stream. On a
        GPU: a quarter of the host-to-device bytes and no float copy on the host. On the CPU: the data thread
        only gathers bytes, so it hardly competes for the GIL and the cores with the step (tiny models paid ~5%)."""
        self.norm = (torch.from_numpy(mean).to(self.device), torch.from_numpy(std).to(self.device))
        return True

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.forward(x), y)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        if not self.model.training:  # train() walks every module: per step it cost tiny models ~2%
            self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        xb = torch.from_numpy(x).to(self.device, non_blocking=True)
        if x.dtype == np.uint8:
            if self.norm is None:
                raise ValueError("uint8 batch given to a trainer that was not asked to normalize on its device")
            xb = normalize_uint8(xb, *self.norm)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = torch.from_numpy(y).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss(xb, yb)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())


def recalibrate_bn(model: nn.Module, batches, device: torch.device) -> None:
    """Cumulative-average BN statistics (momentum=None) over the given batches; mirrors the paddle backend.

    Dropout stays off, and every module's mode is restored: recalibrating draws no random numbers and leaves
    the model as training left it, so recalibrating before every validation does not change the weights.
    In a QAT model the fake-quant observers are held for the pass (their ranges are what QAT learns, and a
    FakeQuantize observes whenever its observer is enabled) and restored to their own state after. A QAT
    conv-BN module (torch.ao's ConvBn*d) scales its weights by the running statistics before fake-quantizing
    them, so its statistics are not reset for the pass (reset ones would scale the weights out of their frozen
    range): they stay as they are while each batch's statistics are collected, and are replaced by the
    average at the end. Its BN normalizes with batch statistics during the pass even when QAT froze it
    (freeze_bn_stats), as every other BN does: normalized with the old statistics, each layer would pass the
    next one inputs the new statistics no longer produce, and the mismatch compounds over the layers."""
    folded = {m.bn for m in model.modules() if isinstance(m, QAT_CONV_BN)}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    collected: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in folded}
    hooks = [m.register_forward_pre_hook(_collect_batch_statistics(collected[m])) for m in folded]
    for m in bns:
        if m in folded:
            m.momentum = 0.0  # running statistics unchanged by the pass; collected by the hook instead
        else:
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for m in folded:  # a frozen conv-BN (freeze_bn_stats) keeps its BN in eval mode through train(): not for the pass
        m.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        with observers_held(model), torch.no_grad():
            for x in batches:
                model(torch.from_numpy(x).to(device))
        for m, stats in collected.items():
            if stats:
                m.running_mean.copy_(torch.stack([mean for mean, _ in stats]).mean(0))
                m.running_var.copy_(torch.stack([var for _, var in stats]).mean(0))
    finally:
        for h in hooks:
            h.remove()
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def observers_held(model: nn.Module) -> Iterator[None]:
    """Every FakeQuantize's observer disabled inside the block, each restored to its own state after (QAT may have
    frozen some for good): a FakeQuantize observes whenever its observer is enabled, in eval mode too."""
    observing = [(m, m.observer_enabled.clone()) for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    for m, _ in observing:
        m.disable_observer()
    try:
        yield
    finally:
        for m, enabled in observing:
            m.observer_enabled.copy_(enabled)


def _collect_batch_statistics(into: list[tuple[torch.Tensor, torch.Tensor]]):
    """A BN forward pre-hook recording its input's per-channel mean and unbiased variance (what a
    training-mode BN folds into its running statistics)."""
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        dims = [0] + list(range(2, x.dim()))
        into.append((x.mean(dims), x.var(dims, unbiased=True)))
    return hook


class Training:
    """backends.base.Training on torch: steps on the configured device with the run's training options."""
    device: torch.device
    runtime: RuntimeConfig

    def trainer(self, model: nn.Module, opt: OptimizerConfig) -> Trainer:
        return Trainer(model, opt, self.device, self.runtime)

    def recalibrate_bn(self, model: nn.Module, batches) -> None:
        recalibrate_bn(model, batches, self.device)
