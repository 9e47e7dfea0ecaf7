"""Model registry for the torch backend: torchvision constructors plus the tiny test pair."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from common.config import ModelConfig

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
TINY_WIDTHS = {"tiny_cnn": (16, 32), "tiny_cnn_small": (8, 16)}


class TinyCNN(nn.Module):
    """Two conv-BN-ReLU blocks and a linear head; defined identically in backends/paddle/models.py."""

    def __init__(self, widths: tuple[int, int], num_classes: int):
        super().__init__()
        w1, w2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.arch in TINY_WIDTHS:
        model: nn.Module = TinyCNN(TINY_WIDTHS[cfg.arch], num_classes)
    else:
        model = getattr(torchvision.models, cfg.arch)(weights=None, num_classes=num_classes)
    if cfg.small_input:
        _small_input_stem(model, cfg.arch)
    if cfg.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = cfg.dropout
    return model


def _small_input_stem(model: nn.Module, arch: str) -> None:
    """3x3 stride-1 stem and no max-pool, for 32px inputs (mirrored in the paddle backend)."""
    if arch.startswith("resnet"):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif arch.startswith("mobilenet"):
        old = model.features[0][0]
        model.features[0][0] = nn.Conv2d(3, old.out_channels, 3, stride=1, padding=1, bias=False)
    # tiny_cnn already has a stride-1 stem
