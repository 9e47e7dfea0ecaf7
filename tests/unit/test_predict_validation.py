"""Validation through a runtime that compiles per input shape: no extra shapes, the same logits."""
from __future__ import annotations

import numpy as np
import pytest

from common.config import DataConfig
from common.data import BatchStream, load_dataset
from common.stages.loop import predict_validation


class RecordingPredictor:
    """A per-sample linear map that records the batch sizes it is fed; `compile_s` marks it as compiling per
    input shape, as the torch backend's Inductor predictor is."""

    def __init__(self, compiles: bool) -> None:
        self.sizes: list[int] = []
        self.weight = np.random.default_rng(0).normal(size=(3 * 32 * 32, 10)).astype(np.float32)
        if compiles:
            self.compile_s = 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        return x.reshape(len(x), -1) @ self.weight


@pytest.fixture(scope="module")
def stream() -> BatchStream:
    cfg = DataConfig(eval_batch_size=256)
    return BatchStream(load_dataset(cfg), cfg, 0)


def test_a_compiling_runtime_is_fed_only_the_batch_size_it_is_timed_at(stream: BatchStream):
    n_val = len(stream.data.val)
    assert n_val % 32 and n_val > 256  # the split's own chunks would be 256 and a remainder
    plain, compiling = RecordingPredictor(compiles=False), RecordingPredictor(compiles=True)
    want_logits, want_labels = predict_validation(plain, stream, compiled_batch=32)
    logits, labels = predict_validation(compiling, stream, compiled_batch=32)
    assert set(compiling.sizes) == {32}
    assert sorted(set(plain.sizes)) == [n_val - 256, 256]  # a predictor that does not compile keeps the chunks
    assert logits.shape == want_logits.shape == (n_val, 10)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-3)


def test_without_a_compiled_batch_size_a_compiling_runtime_keeps_the_splits_chunks(stream: BatchStream):
    compiling = RecordingPredictor(compiles=True)
    predict_validation(compiling, stream)
    assert set(compiling.sizes) == {256, len(stream.data.val) - 256}
