"""Model registry for the paddle backend: paddle.vision constructors plus the tiny test pair."""
from __future__ import annotations

import paddle
from paddle import nn

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
