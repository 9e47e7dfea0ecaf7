"""Cross-framework parity: losses, weight transfer, optimizer steps, artifact accounting.

Both backends are used in one process here; tests/conftest.py imports torch first (import order, docs/ARCHITECTURE.md, section 6).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import ModelConfig, OptimizerConfig
from tests.integration.conftest import transfer

pytestmark = [pytest.mark.torch, pytest.mark.paddle]


@pytest.mark.parametrize("arch,small", [("tiny_cnn", False), ("resnet18", True), ("resnet50", False),
                                        ("mobilenet_v2", False), ("mobilenet_v2", True),
                                        ("mobilenet_v3_small", False)])
def test_weight_transfer_reproduces_logits(backends, arch, small):
    tb, pb = backends
    tm, pm = transfer(tb, pb, arch, small)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref, got = tb.predict(tm, x), pb.predict(pm, x)
    assert np.abs(ref - got).max() / np.abs(ref).max() < 1e-5
    assert np.array_equal(ref.argmax(1), got.argmax(1))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "resnet18"])
def test_batch_statistics_probe_is_non_degenerate_agrees_and_leaves_the_model_alone(backends, arch):
    """At initialisation MobileNet eval-mode logits are ~1e-10 (a parity check on them says little); with batch
    norm on the probe batch's statistics they are O(1) and agree across frameworks like any logits do."""
    tb, pb = backends
    tm, pm = transfer(tb, pb, arch)
    x = np.random.default_rng(2).standard_normal((8, 3, 32, 32)).astype(np.float32)
    before_t, before_p = tb.predict(tm, x), pb.predict(pm, x)
    ref, got = tb.predict_batch_statistics(tm, x), pb.predict_batch_statistics(pm, x)
    assert np.abs(ref).max() > 1e-2
    assert np.abs(ref - got).max() / np.abs(ref).max() < 1e-4
    assert np.array_equal(tb.predict(tm, x), before_t) and np.array_equal(pb.predict(pm, x), before_p)
    # a wrong conversion shows: another model's weights give other batch-statistics logits
    other = tb.build_model(ModelConfig(arch=arch), 10)
    assert np.abs(tb.predict_batch_statistics(other, x) - ref).max() / np.abs(ref).max() > 1e-2


def test_paddle_state_round_trips_to_canonical(backends):
    tb, pb = backends
    tm, pm = transfer(tb, pb, "resnet18")
    a, b = tb.state_to_numpy(tm), pb.state_to_numpy(pm)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_mismatched_state_is_rejected(backends):
    tb, pb = backends
    state = tb.state_to_numpy(tb.build_model(ModelConfig(arch="tiny_cnn"), 10))
    with pytest.raises(ValueError):
        pb.load_numpy_state(pb.build_model(ModelConfig(arch="tiny_cnn_small"), 10), state)
    with pytest.raises(ValueError):
        tb.load_numpy_state(tb.build_model(ModelConfig(arch="tiny_cnn_small"), 10), state)


@pytest.mark.parametrize("opt", [OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
                                 OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.05)])
def test_optimizer_steps_match_across_frameworks(backends, opt):
    """Same start, same batches, same learning rates: losses agree step by step (SGD/Momentum, AdamW)."""
    tb, pb = backends
    tm, pm = transfer(tb, pb, "tiny_cnn")
    tt, pt = tb.trainer(tm, opt), pb.trainer(pm, opt)
    rng = np.random.default_rng(0)
    for step in range(4):
        x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
        y = rng.integers(0, 10, 16)
        lt, lp = tt.step(x, y, opt.lr * (step + 1) / 4), pt.step(x, y, opt.lr * (step + 1) / 4)
        assert lt == pytest.approx(lp, rel=1e-4, abs=1e-5)
    a, b = tb.state_to_numpy(tm), pb.state_to_numpy(pm)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-3


def test_bn_recalibration_matches(backends):
    tb, pb = backends
    tm, pm = transfer(tb, pb, "tiny_cnn")
    batches = [np.random.default_rng(i).standard_normal((8, 3, 16, 16)).astype(np.float32) * (i + 1)
               for i in range(3)]
    tb.recalibrate_bn(tm, iter(batches))
    pb.recalibrate_bn(pm, iter(batches))
    a, b = tb.state_to_numpy(tm), pb.state_to_numpy(pm)
    mean = "features.1.running_mean"
    assert np.allclose(a[mean], b[mean], atol=1e-5)
    # Cumulative average of the three batch means (not an EMA):
    x = tm.features[0](__import__("torch").from_numpy(np.concatenate(batches))).detach().numpy()
    per_batch = x.reshape(3, 8, *x.shape[1:]).mean(axis=(1, 3, 4))
    assert np.allclose(a[mean], per_batch.mean(axis=0), atol=1e-4)
    var = "features.1.running_var"
    assert np.allclose(a[var], b[var], rtol=2e-2)  # torch keeps the unbiased batch variance, paddle the biased one


def test_bn_recalibration_draws_no_random_numbers_and_keeps_every_mode(backends):
    """The training loop recalibrates before every validation (common/stages/loop.py): that must not move the
    framework's random stream (MobileNetV2's dropout would draw from it in train mode) nor leave a layer in
    another mode than training had it in, or recalibrating would change the weights training produces."""
    import paddle
    import torch
    tb, pb = backends
    tm, pm = transfer(tb, pb, "mobilenet_v2")
    batches = [np.random.default_rng(i).standard_normal((4, 3, 32, 32)).astype(np.float32) for i in range(2)]
    for backend, model, seed, draw, modes in (
            (tb, tm, torch.manual_seed, lambda: torch.rand(4).numpy(),
             lambda m: [x.training for x in m.modules()]),
            (pb, pm, paddle.seed, lambda: paddle.rand([4]).numpy(),
             lambda m: [x.training for x in m.sublayers(include_self=True)])):
        model.train()
        before = modes(model)
        seed(11)
        expected = draw()
        seed(11)
        backend.recalibrate_bn(model, iter(batches))
        assert np.array_equal(draw(), expected), backend.name
        assert modes(model) == before, backend.name


@pytest.mark.parametrize("arch", ["tiny_cnn", "mobilenet_v2"])
def test_exported_artifacts_count_the_same_params_and_macs(backends, arch, tmp_path: Path):
    tb, pb = backends
    tm, pm = transfer(tb, pb, arch)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ta, pa = tb.export(tm, x, tmp_path / "t"), pb.export(pm, x, tmp_path / "p")
    ts, ps = tb.artifact_stats(ta, (1, 3, 32, 32)), pb.artifact_stats(pa, (1, 3, 32, 32))
    assert (ts["params"], ts["macs"]) == (ps["params"], ps["macs"])
    tpred, ppred = tb.load_artifact(ta, 2), pb.load_artifact(pa, 2)
    for batch in (1, 5):  # dynamic batch dimension in both artifacts
        xb = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        ref = tb.predict(tm, xb)
        assert np.abs(tpred(xb) - ref).max() <= 1e-4 * np.abs(ref).max()
        assert np.abs(ppred(xb) - ref).max() <= 1e-3 * np.abs(ref).max()


def test_paddle_decoupled_adamw_matches_paddle_adamw(backends):
    """The paddle backend's AdamW (merged multi-tensor Adam + decoupled decay, see backends/paddle/train.py)
    computes what paddle.optimizer.AdamW computes."""
    import paddle

    from backends.paddle.train import DecoupledAdamW
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((4, 3)).astype(np.float32)
    xb = paddle.to_tensor(rng.standard_normal((5, 4)).astype(np.float32))
    weights = []
    for kind in ("paddle", "slimbench"):
        lin = paddle.nn.Linear(4, 3)
        lin.weight.set_value(w0)
        lin.bias.set_value(np.zeros(3, np.float32))
        opt = (paddle.optimizer.AdamW(0.002, parameters=lin.parameters(), weight_decay=0.05) if kind == "paddle"
               else DecoupledAdamW(lin.parameters(), 0.002, 0.05))
        for i in range(3):
            opt.set_lr(0.002 * (i + 1) / 3)
            (lin(xb) ** 2).sum().backward()
            opt.step()
            opt.clear_grad()
        weights.append(np.concatenate([lin.weight.numpy().ravel(), lin.bias.numpy()]))
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-6, atol=1e-7)
    assert np.abs(weights[0] - np.concatenate([w0.ravel(), np.zeros(3)])).max() > 1e-3  # it did train
