"""The pruning section measures, runtime by runtime, whether a filter-pruned model runs faster than its parent,
instead of assuming that fewer MACs mean less time (on ONNX Runtime at batch 32 the pruned ResNet50 of
prune_filter_resnet50 ran ~1.5x slower than its parent on both frameworks)."""
from __future__ import annotations

from common.report.index import ReportIndex
from common.stages.prune import latency_after_pruning


def _lat(b1: float, b32: float) -> dict:
    return {"1": {"p50_ms": b1}, "32": {"p50_ms": b32}}


def _result(backend: str, seed: int, ort_pruned_b32: float) -> dict:
    ort = lambda lat: {"status": "ok", "latency": lat}  # noqa: E731
    models = {"dense": {"latency": _lat(10.0, 40.0), "runtimes": {"onnxruntime": ort(_lat(4.0, 35.0))}},
              "pruned": {"latency": _lat(6.0, 30.0), "runtimes": {"onnxruntime": ort(_lat(3.0, ort_pruned_b32))}}}
    return {"backend": backend, "seed": seed, "stages": [
        {"type": "prune", "status": "ok", "name": "prune_l1", "method": "filter", "model": "pruned",
         "source": "dense"},
        {"type": "export", "status": "ok", "name": "export", "models": models}]}


def test_a_runtime_where_the_pruned_model_is_slower_is_named():
    ix = ReportIndex([_result("torch", s, t) for s, t in ((0, 52.5), (1, 49.0))] +
                     [_result("paddle", 0, 30.0)])
    text = latency_after_pruning(ix)
    assert "| `prune_l1` | PyTorch | reference runtime | 1 | ×0.60 | ×0.60 – ×0.60 | 2 | faster |" in text
    assert "| `prune_l1` | PyTorch | ONNX Runtime | 32 | ×1.45 | ×1.40 – ×1.50 | 2 | slower |" in text
    assert "| `prune_l1` | PaddlePaddle | ONNX Runtime | 32 | ×0.86 | ×0.86 – ×0.86 | 1 | faster |" in text
    assert "did not make the model faster for PyTorch (ONNX Runtime, batch 32: ×1.45):" in text
    assert "PaddlePaddle (" not in text


def test_no_filter_pruning_no_latency_table():
    r = _result("torch", 0, 30.0)
    r["stages"][0]["method"] = "magnitude"
    assert latency_after_pruning(ReportIndex([r])) == ""
