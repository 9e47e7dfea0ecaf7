"""The torch backend's training options (amp, channels_last, compile) change how a step runs, not what it computes."""
from __future__ import annotations

import numpy as np
import pytest

from common.config import ModelConfig, OptimizerConfig, RuntimeConfig

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _steps(runtime: RuntimeConfig, steps: int = 3) -> tuple[list[float], np.ndarray]:
    from backends.torch import create
    b = create()
    info = b.configure(2, "cpu", 0, runtime)
    assert info["training_options"] == {"amp": runtime.amp, "channels_last": runtime.channels_last,
                                        "compile": runtime.compile, "cpu_tuning": runtime.cpu_tuning}
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


def test_device_normalization_of_uint8_batches_is_bit_identical_to_the_stream():
    """On a GPU the trainer receives uint8 batches and normalizes them itself; the values must be exactly the
    numpy stream's, or torch-on-GPU would train on other inputs than Paddle. Checked here on the CPU kernels
    (benchmarks/harness_overhead.py --device cuda checks the CUDA ones)."""
    from backends.torch.train import normalize_uint8
    from common.data import BatchStream, load_dataset
    from common.config import DataConfig, AugmentConfig
    cfg = DataConfig(dataset="synthetic", image_size=24, batch_size=32, synthetic_samples=128,
                     augment=AugmentConfig(crop_padding=3, hflip=True))
    stream = BatchStream(load_dataset(cfg), cfg, seed=5)
    assert stream.raw_available
    mean, std = (torch.from_numpy(a) for a in stream.normalization)
    for plan in stream.train_plans(0):
        expected, labels = stream.materialize(plan)
        raw, raw_labels = stream.materialize(plan, normalize=False)
        assert raw.dtype == np.uint8
        np.testing.assert_array_equal(raw_labels, labels)
        got = normalize_uint8(torch.from_numpy(raw), mean, std).numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)  # exact, not approximate


def test_trainer_takes_uint8_batches_once_asked_and_trains_on_the_same_values():
    """The stage hands the torch trainer uint8 batches (on the CPU too) once it agrees to normalize them; the
    losses are those of the float32 batches the stream would have given, exactly."""
    from backends.torch import create
    from common.data import BatchStream, load_dataset
    from common.config import DataConfig
    b = create()
    b.configure(2, "cpu", 0)
    cfg = DataConfig(dataset="synthetic", image_size=16, batch_size=16, synthetic_samples=64)
    stream = BatchStream(load_dataset(cfg), cfg, seed=1)
    plan = next(stream.train_plans(0))
    (xf, y), (xu, _) = stream.materialize(plan), stream.materialize(plan, normalize=False)
    state = b.build_model(ModelConfig(arch="tiny_cnn"), 10).state_dict()
    losses = []
    for x, ask in ((xf, False), (xu, True)):
        model = b.build_model(ModelConfig(arch="tiny_cnn"), 10)
        model.load_state_dict(state)
        trainer = b.trainer(model, OptimizerConfig(name="sgd", lr=0.05))
        if ask:
            assert trainer.normalize_on_device(*stream.normalization) is True
        else:
            with pytest.raises(ValueError, match="normalize on its device"):
                trainer.step(xu, y, 0.05)
        losses.append([trainer.step(x, y, 0.05) for _ in range(2)])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("arch,tuning,expected", [("mobilenet_v2", True, True), ("mobilenet_v2", False, False),
                                                  ("resnet18", True, False), ("tiny_cnn", True, False)])
def test_cpu_tuning_trains_models_with_depthwise_convolutions_in_channels_last(arch, tuning, expected):
    """MobileNetV2 steps run ~2x faster in NHWC on the CPU; ResNet50 runs slower, so only depthwise models switch."""
    from backends.torch import create
    b = create()
    info = b.configure(2, "cpu", 0, RuntimeConfig(cpu_tuning=tuning))
    assert ("tuning_notes" in info) is tuning
    teacher = b.build_model(ModelConfig(arch="resnet18"), 10)
    student = b.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    reference = b.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    reference.load_state_dict(student.state_dict())
    from backends.base import DistillPlan, DistillTerm
    plan = DistillPlan((DistillTerm("kd", {"temperature": 4.0}), DistillTerm("ce")))
    trainer = b.distiller(student, teacher, OptimizerConfig(name="sgd", lr=0.05), plan)
    trainer.set_scales([0.9, 0.1])
    assert trainer.channels_last is expected and trainer.teacher_channels_last is False
    first_conv = next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last) is expected
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    loss = trainer.step(x, y, 0.05)
    from backends.torch.distill_losses import kd
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():  # the same step's loss in plain NCHW eager torch
        s, t = reference.train()(xt), teacher.eval()(xt)
        expected_loss = (0.9 * kd(s, t, 4.0) + 0.1 * torch.nn.functional.cross_entropy(s, yt)).item()
    assert loss == pytest.approx(expected_loss, rel=1e-4)
