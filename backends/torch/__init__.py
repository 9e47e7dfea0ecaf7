"""PyTorch backend: torchvision models, torch optimizers, torch.export artifacts, eager inference.

Each module implements one concern of backends/base.py as a class of the protocol's name; TorchBackend is their
composition and defines nothing itself (tests/integration/test_backend_conformance.py).
"""
from __future__ import annotations

from backends.torch.device import DeviceSetup
from backends.torch.distill import Distillation
from backends.torch.export import Exporting
from backends.torch.measure import Runtimes
from backends.torch.models import Models
from backends.torch.prune import Pruning
from backends.torch.quantize import Quantization
from backends.torch.train import Training
from backends.torch.weights import Weights


class TorchBackend(DeviceSetup, Models, Weights, Training, Distillation, Pruning, Quantization, Exporting, Runtimes):
    """The torch implementation of backends.base.Backend."""


def create() -> TorchBackend:
    return TorchBackend()
