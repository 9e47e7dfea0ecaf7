"""The torch backend's setup concern (backends.base.DeviceSetup): versions, threads, device, seed and the
training options it applies; the state (device, runtime options) the other concerns read."""
from __future__ import annotations

import platform
from typing import Any

import torch
import torchvision

from backends.torch.train import CPU_TUNING_NOTE
from common.config import RuntimeConfig
from common.errors import SlimbenchError


class DeviceSetup:
    """Holds the device and runtime options that Models, Training, Distillation and Runtimes use."""
    name = "torch"

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.runtime = RuntimeConfig()

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "cuda": str(torch.version.cuda), "python": platform.python_version()}

    def configure(self, threads: int, device: str, seed: int, runtime: RuntimeConfig | None = None) -> dict[str, Any]:
        torch.set_num_threads(threads)
        self.runtime = runtime or RuntimeConfig()
        if device == "cuda" and not torch.cuda.is_available():
            raise SlimbenchError("runtime.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        torch.manual_seed(seed)
        info: dict[str, Any] = {"device": str(self.device), "threads": torch.get_num_threads()}
        if use_cuda:
            info["gpu"] = torch.cuda.get_device_name(self.device)
        info["training_options"] = {"amp": self.runtime.amp, "channels_last": self.runtime.channels_last,
                                    "compile": self.runtime.compile, "cpu_tuning": self.runtime.cpu_tuning}
        if self.runtime.cpu_tuning and not use_cuda:
            info["tuning_notes"] = [CPU_TUNING_NOTE]
        return info
