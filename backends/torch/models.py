"""Model registry for the torch backend: torchvision constructors plus the tiny test pair; the Models concern
of backends/base.py (building a slot on the device, eager inference)."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torchvision
from torch import nn

from backends.base import QuantizedModel
from backends.torch.quantize import predict_fake_quant
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


class Models:
    """backends.base.Models on torch: models built on the configured device; eval-mode and batch-statistics
    inference (a QAT model predicts through its fake-quant observers, an int8 slot on its runtime)."""
    device: torch.device

    def build_model(self, cfg: ModelConfig, num_classes: int) -> nn.Module:
        return build_model(cfg, num_classes).to(self.device)

    def predict(self, model: nn.Module | QuantizedModel, x: np.ndarray) -> np.ndarray:
        if isinstance(model, QuantizedModel):
            return model.predict(x)
        model.eval()

        def run() -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

        return predict_fake_quant(model, run) if getattr(model, "_slimbench_qat", False) else run()

    def predict_batch_statistics(self, model: nn.Module, x: np.ndarray) -> np.ndarray:
        """Logits with batch norm on the batch's own statistics (dropout off), on a copy of the model: at
        initialisation eval-mode outputs can be ~1e-10 (running statistics 0/1), these are O(1)."""
        probe = copy.deepcopy(model).to(self.device)
        probe.train()
        for m in probe.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        with torch.no_grad():
            return probe(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
