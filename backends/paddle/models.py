"""Model registry for the paddle backend: paddle.vision constructors plus the tiny test pair; the Models
concern of backends/base.py (building a slot, dygraph or oneDNN-program inference)."""
from __future__ import annotations

import copy

import numpy as np
import paddle
from paddle import nn

from backends.base import QuantizedModel
from backends.paddle.programs import forward_program
from common.config import ModelConfig

TINY_WIDTHS = {"tiny_cnn": (16, 32), "tiny_cnn_small": (8, 16)}


class TinyCNN(nn.Layer):
    """Two conv-BN-ReLU blocks and a linear head; defined identically in backends/torch/models.py."""

    def __init__(self, widths: tuple[int, int], num_classes: int):
        super().__init__()
        w1, w2 = widths
        self.features = nn.Sequential(
            nn.Conv2D(3, w1, 3, padding=1, bias_attr=False), nn.BatchNorm2D(w1), nn.ReLU(),
            nn.Conv2D(w1, w2, 3, stride=2, padding=1, bias_attr=False), nn.BatchNorm2D(w2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.classifier = nn.Linear(w2, num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.classifier(paddle.flatten(self.pool(self.features(x)), 1))


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Layer:
    if cfg.arch in TINY_WIDTHS:
        model: nn.Layer = TinyCNN(TINY_WIDTHS[cfg.arch], num_classes)
    else:
        model = getattr(paddle.vision.models, cfg.arch)(num_classes=num_classes)
    if cfg.small_input:
        _small_input_stem(model, cfg.arch)
    if cfg.dropout is not None:
        for m in model.sublayers():
            if isinstance(m, nn.Dropout):
                m.p = cfg.dropout
    return model


def _small_input_stem(model: nn.Layer, arch: str) -> None:
    """3x3 stride-1 stem and no max-pool, for 32px inputs (mirrored in the torch backend)."""
    if arch.startswith("resnet"):
        model.conv1 = nn.Conv2D(3, model.conv1.weight.shape[0], 3, stride=1, padding=1, bias_attr=False)
        model.maxpool = nn.Identity()
    elif arch == "mobilenet_v2":
        old = model.features[0][0]
        model.features[0][0] = nn.Conv2D(3, old.weight.shape[0], 3, stride=1, padding=1, bias_attr=False)
    elif arch.startswith("mobilenet_v3"):
        old = model.conv[0]
        model.conv[0] = nn.Conv2D(3, old.weight.shape[0], 3, stride=1, padding=1, bias_attr=False)


class Models:
    """backends.base.Models on Paddle: eval-mode inference through the oneDNN depthwise program where
    cpu_tuning is on (an int8 slot predicts on its runtime), and batch-statistics inference on a copy."""
    onednn_depthwise: bool

    build_model = staticmethod(build_model)

    def predict(self, model: nn.Layer | QuantizedModel, x: np.ndarray) -> np.ndarray:
        if isinstance(model, QuantizedModel):
            return model.predict(x)
        model.eval()
        forward = forward_program(model, "predict") if self.onednn_depthwise else None
        with paddle.no_grad():
            return (forward or model)(paddle.to_tensor(x)).numpy().astype(np.float32)

    def predict_batch_statistics(self, model: nn.Layer, x: np.ndarray) -> np.ndarray:
        """Logits with batch norm on the batch's own statistics (dropout off), on a copy of the model: at
        initialisation eval-mode outputs can be ~1e-10 (running statistics 0/1), these are O(1)."""
        probe = copy.deepcopy(model)
        probe.train()
        for m in probe.sublayers():
            if isinstance(m, nn.Dropout):
                m.eval()
        with paddle.no_grad():
            return probe(paddle.to_tensor(x)).numpy().astype(np.float32)
