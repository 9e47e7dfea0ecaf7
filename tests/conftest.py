"""Test-session setup.

Import order matters when both frameworks share one process: `import paddle` before `import torch`
segfaults (a zlib clash, docs/ARCHITECTURE.md, section 6). The product runs each backend in its own subprocess; tests that
call both backends in-process import torch first here, before anything can import paddle.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_PADDLE = importlib.util.find_spec("paddle") is not None

if HAS_TORCH:
    import torch  # noqa: F401  (must precede paddle, see above)

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    skip_torch = pytest.mark.skip(reason="PyTorch is not installed (pip install -e .[torch])")
    skip_paddle = pytest.mark.skip(reason="PaddlePaddle is not installed (pip install -e .[paddle])")
    has_cuda = False
    if HAS_TORCH:
        import torch as _torch
        has_cuda = _torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "torch" in item.keywords and not HAS_TORCH:
            item.add_marker(skip_torch)
        if "paddle" in item.keywords and not HAS_PADDLE:
            item.add_marker(skip_paddle)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
