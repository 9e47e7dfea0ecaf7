"""PaddlePaddle backend: paddle.vision models, paddle optimizers, jit.save artifacts, Paddle Inference.

Each module implements one concern of backends/base.py as a class of the protocol's name; PaddleBackend is their
composition and defines nothing itself (tests/integration/test_backend_conformance.py).

`import zlib` must run before `import paddle`: paddle's bundled zlib otherwise clashes with Python's
zlib module and the first decompression (e.g. inside `import paddleslim`) segfaults. Every module below is
imported through this package, so this line runs first.
"""
from __future__ import annotations

import zlib  # noqa: F401  (must precede `import paddle`, see above)

from backends.paddle.device import DeviceSetup  # noqa: E402  (after zlib)
from backends.paddle.distill import Distillation  # noqa: E402
from backends.paddle.export import Exporting  # noqa: E402
from backends.paddle.measure import Runtimes  # noqa: E402
from backends.paddle.models import Models  # noqa: E402
from backends.paddle.prune import Pruning  # noqa: E402
from backends.paddle.quantize import Quantization  # noqa: E402
from backends.paddle.train import Training  # noqa: E402
from backends.paddle.weights import Weights  # noqa: E402


class PaddleBackend(DeviceSetup, Models, Weights, Training, Distillation, Pruning, Quantization, Exporting, Runtimes):
    """The Paddle implementation of backends.base.Backend."""


def create() -> PaddleBackend:
    return PaddleBackend()
