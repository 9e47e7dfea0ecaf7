"""The loops a Paddle user would write by hand: the yardstick for the project's own stages."""
from __future__ import annotations

import zlib  # noqa: F401  (must precede `import paddle`, see backends/paddle/__init__.py)
import time
from typing import Callable

import numpy as np
import paddle
from paddle import inference
from paddle.nn import functional as F


def _optimizer(model: paddle.nn.Layer, name: str, lr: float, wd: float, momentum: float):
    if name == "sgd":
        return paddle.optimizer.Momentum(learning_rate=lr, momentum=momentum, parameters=model.parameters(),
                                         weight_decay=paddle.regularizer.L2Decay(wd) if wd else None)
    return _MergedAdamW(model.parameters(), lr, wd)


class _MergedAdamW:
    """AdamW the way a Paddle 2.6 user who knows its CPU slowdown writes it (see backends/paddle/train.py): the
    harness runs both loops in one process, and paddle.optimizer.AdamW would slow the project's stage too."""

    def __init__(self, params, lr: float, wd: float):
        self.params, self.wd = params, wd
        self.adam = paddle.optimizer.Adam(learning_rate=lr, parameters=params, use_multi_tensor=True)

    def set_lr(self, lr: float) -> None:
        self.adam.set_lr(lr)

    def step(self) -> None:
        with paddle.no_grad():
            for p in self.params:
                p.scale_(1.0 - self.adam.get_lr() * self.wd)
        self.adam.step()

    def clear_grad(self) -> None:
        self.adam.clear_grad()


class _Loss(paddle.nn.Layer):
    """Cross-entropy, or Hinton KD when teacher logits come in: one Layer, so to_static can trace it."""

    def __init__(self, model: paddle.nn.Layer, temperature: float, alpha: float):
        super().__init__()
        self.model, self.temperature, self.alpha = model, temperature, alpha

    def forward(self, x, y, t):
        out = self.model(x)
        kd = F.kl_div(F.log_softmax(out / self.temperature, 1), F.softmax(t / self.temperature, 1),
                      reduction="batchmean")
        return self.alpha * self.temperature ** 2 * kd + (1 - self.alpha) * F.cross_entropy(out, y)


class _CrossEntropy(_Loss):
    def forward(self, x, y):
        return F.cross_entropy(self.model(x), y)


def _depthwise_on_onednn(loss: paddle.nn.Layer, example: list[paddle.Tensor]) -> paddle.nn.Layer:
    """to_static, then the depthwise convolution ops switched to Paddle's oneDNN kernels before the first run."""
    static = paddle.jit.to_static(loss, full_graph=True)
    _, program = static.forward.get_concrete_program(*example)
    for op in program._origin_main_program.global_block().ops:
        if op.type == "depthwise_conv2d":
            op._set_attr("use_mkldnn", True)
    return static


def train(model: paddle.nn.Layer, batches: list[tuple[np.ndarray, np.ndarray]], lrs: list[float], opt: dict,
          device: str, teacher: paddle.nn.Layer | None = None, temperature: float = 4.0, alpha: float = 0.9,
          onednn_depthwise: bool = False) -> float:
    """Seconds for one pass over `batches`; `onednn_depthwise`: the step as a to_static program whose depthwise
    convolutions run on oneDNN (what slimbench's cpu_tuning does; the batches all have one shape here)."""
    optimizer = _optimizer(model, opt["name"], lrs[0], opt["weight_decay"], opt["momentum"])
    loss_fn = (_CrossEntropy if teacher is None else _Loss)(model, temperature, alpha)
    loss_fn.train()
    if teacher is not None:
        teacher.eval()
    t0 = time.perf_counter()
    for i, ((x, y), lr) in enumerate(zip(batches, lrs)):
        optimizer.set_lr(lr)
        inputs = [paddle.to_tensor(x), paddle.to_tensor(y)]
        if teacher is not None:
            with paddle.no_grad():
                inputs.append(teacher(inputs[0]))
        if onednn_depthwise and i == 0:
            loss_fn = _depthwise_on_onednn(loss_fn, inputs)
        loss = loss_fn(*inputs)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)
    return time.perf_counter() - t0


def artifact_predictor(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """Minimal timing target: a Paddle Inference predictor with oneDNN, as the Paddle docs set it up."""
    config = inference.Config(path, path.replace(".pdmodel", ".pdiparams"))
    config.enable_mkldnn()
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    predictor = inference.create_predictor(config)
    inp = predictor.get_input_handle(predictor.get_input_names()[0])
    out = predictor.get_output_handle(predictor.get_output_names()[0])

    def call(x: np.ndarray) -> np.ndarray:
        inp.reshape(list(x.shape))
        inp.copy_from_cpu(x)
        predictor.run()
        return out.copy_to_cpu()

    return call
