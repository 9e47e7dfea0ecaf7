"""The Paddle backend's setup concern (backends.base.DeviceSetup): versions, threads, device, seed and the
training options it applies or records as not applied; the state (threads, oneDNN depthwise programs) the other
concerns read."""
from __future__ import annotations

import os
import platform
from typing import Any

import paddle

from backends.capabilities import NOT_APPLIED
from backends.paddle import programs
from common.config import RuntimeConfig
from common.errors import SlimbenchError


def _paddleslim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("paddleslim")
    except PackageNotFoundError:
        return "not installed"


class DeviceSetup:
    """Holds the thread count and whether the oneDNN depthwise programs are on (Models, Training, Distillation)."""
    name = "paddle"

    def __init__(self) -> None:
        self.threads = 1
        self.onednn_depthwise = False

    def versions(self) -> dict[str, str]:
        return {"paddlepaddle": paddle.__version__, "paddleslim": _paddleslim_version(),
                "python": platform.python_version()}

    def configure(self, threads: int, device: str, seed: int, runtime: RuntimeConfig | None = None) -> dict[str, Any]:
        self.threads = threads
        runtime = runtime or RuntimeConfig()
        if device == "cuda" and not paddle.is_compiled_with_cuda():
            raise SlimbenchError("runtime.device is 'cuda' but this paddlepaddle build has no CUDA; "
                                 "use 'auto' or 'cpu', or install paddlepaddle-gpu")
        use_gpu = device == "cuda" or (device == "auto" and paddle.is_compiled_with_cuda()
                                       and paddle.device.cuda.device_count() > 0)
        paddle.set_device("gpu" if use_gpu else "cpu")
        # Paddle's CPU kernels (MKL GEMM, oneDNN) run on 1 thread (FLAGS_paddle_num_threads) unless told.
        paddle.base.core.set_num_threads(threads)
        paddle.seed(seed)
        self.onednn_depthwise = runtime.cpu_tuning and not use_gpu
        # Options declared not applied in backends/capabilities.py: recorded, so the report shows them.
        asked = {k: getattr(runtime, k) for k in NOT_APPLIED["paddle"]}
        info = {"device": paddle.get_device(), "threads": threads,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                "optimizer_notes": ["AdamW runs as Adam(use_multi_tensor=True) with decoupled weight decay "
                                    "(param *= 1 - lr * wd): the same update as paddle.optimizer.AdamW, without "
                                    "the ~1.7x slowdown its per-parameter kernel left on later convolutions on an "
                                    "AMD EPYC CPU (Paddle 2.6)"],
                "training_options": {"amp": "off", "channels_last": False, "compile": False,
                                     "cpu_tuning": runtime.cpu_tuning,
                                     **({"not_applied": asked} if asked != {"amp": "off", "channels_last": False,
                                                                              "compile": False} else {})}}
        if self.onednn_depthwise:
            info["tuning_notes"] = [programs.NOTE]
        mkl = os.environ.get("MKL_DEBUG_CPU_TYPE")
        if mkl is not None:  # read by MKL when Paddle loaded; recorded so the report lists it
            info["mkl_debug_cpu_type"] = mkl
            who = ("set by slimbench on this AMD CPU: Paddle 2.6's MKL 2019 otherwise takes its generic code path; "
                   "ResNet50 training steps 2.1x faster, gradients as exact, inference unchanged "
                   "(benchmarks/paddle_mkl_cpu_type.py)" if os.environ.get("SLIMBENCH_SET_MKL_DEBUG_CPU_TYPE")
                   else "set in the environment by the user")
            info.setdefault("tuning_notes", []).append(f"MKL_DEBUG_CPU_TYPE={mkl} ({who})")
        return info
