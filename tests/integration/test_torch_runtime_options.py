"""The torch backend's training options (amp, channels_last, compile) change how a step runs, not what it computes."""
from __future__ import annotations

import numpy as np
import pytest

from common.recipe import ModelConfig, OptimizerConfig, RuntimeConfig

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _steps(runtime: RuntimeConfig, steps: int = 3) -> tuple[list[float], np.ndarray]:
    from backends.torch import create
    b = create()
    info = b.configure(2, "cpu", 0, runtime)
    assert info["training_options"] == {"amp": runtime.amp, "channels_last": runtime.channels_last,
                                        "compile": runtime.compile}
    model = b.build_model(ModelConfig(arch="tiny_cnn"), 10)
    trainer = b.trainer(model, OptimizerConfig(name="sgd", lr=0.05))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    losses = [trainer.step(x, y, 0.05) for _ in range(steps)]
    return losses, b.predict(model, x)


def test_channels_last_and_bf16_autocast_train_like_the_default():
    base, logits = _steps(RuntimeConfig())
    nhwc, logits_nhwc = _steps(RuntimeConfig(channels_last=True))
    assert nhwc == pytest.approx(base, rel=1e-4)
    np.testing.assert_allclose(logits_nhwc, logits, rtol=1e-3, atol=1e-4)
    bf16, _ = _steps(RuntimeConfig(amp="bf16"))
    assert bf16 == pytest.approx(base, rel=0.05)  # bf16 keeps ~3 significant digits
    assert bf16[-1] < bf16[0]


@pytest.mark.slow
def test_compile_trains_like_eager():
    base, _ = _steps(RuntimeConfig())
    compiled, _ = _steps(RuntimeConfig(compile=True))
    assert compiled == pytest.approx(base, rel=1e-3)
