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


def train(model: paddle.nn.Layer, batches: list[tuple[np.ndarray, np.ndarray]], lrs: list[float], opt: dict,
          device: str, teacher: paddle.nn.Layer | None = None, temperature: float = 4.0, alpha: float = 0.9) -> float:
    optimizer = _optimizer(model, opt["name"], lrs[0], opt["weight_decay"], opt["momentum"])
    model.train()
    if teacher is not None:
        teacher.eval()
    t0 = time.perf_counter()
    for (x, y), lr in zip(batches, lrs):
        optimizer.set_lr(lr)
        xb, yb = paddle.to_tensor(x), paddle.to_tensor(y)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        if teacher is not None:
            with paddle.no_grad():
                t = teacher(xb)
            kd = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
            loss = alpha * temperature ** 2 * kd + (1 - alpha) * loss
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
