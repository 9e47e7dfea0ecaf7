"""A reference-runtime latency row judges the frameworks only where both ran the same kind of runtime."""
from __future__ import annotations

import pytest

from common.report.decision import Metric, headline, runtime_family, verdict

EAGER = "PyTorch eager (torch.export program .module(), inference_mode) on CPU"
PADDLE = "Paddle Inference (AnalysisPredictor, oneDNN, IR optim on) on CPU"
ORT = "ONNX Runtime 1.32.0 (CPUExecutionProvider)"


def latency(runtime_kind: str | None, torch_rt: str | None, paddle_rt: str | None) -> Metric:
    m = Metric("latency", "batch 1 p50 `m`", " ms", False, runtime_kind=runtime_kind)
    for seed, (t, p) in enumerate([(3.0, 1.0), (3.1, 1.2), (2.9, 0.8)]):  # paddle clearly faster
        m.add("torch", seed, t, runtime=torch_rt)
        m.add("paddle", seed, p, runtime=paddle_rt)
    return m


@pytest.mark.parametrize("runtime_kind, torch_rt, paddle_rt, withheld", [
    ("reference", EAGER, PADDLE, True),      # eager against a fused oneDNN program: the runtime's difference
    ("reference", ORT, ORT, False),          # the same runtime on both sides: like with like
    (None, EAGER, PADDLE, False),            # each framework's best (or only int8) runtime: meant to differ
    ("reference", None, PADDLE, False),      # results without runtime names: nothing to compare
])
def test_reference_rows_on_unlike_runtimes_get_no_verdict(runtime_kind, torch_rt, paddle_rt, withheld):
    v = verdict(latency(runtime_kind, torch_rt, paddle_rt), "torch", "paddle")
    if withheld:
        assert v.ahead is None and v.withheld_by == "runtimes"
        assert v.text == ("no verdict: unlike runtimes (PyTorch eager against Paddle Inference); "
                          "the best-runtime and ONNX Runtime rows compare like with like")
    else:
        assert v.ahead == "paddle" and v.withheld is None


def test_a_validity_finding_is_named_before_the_runtime_mismatch_and_counted_apart():
    m = latency("reference", EAGER, PADDLE)
    assert verdict(m, "torch", "paddle", lambda _: "teacher at chance level").withheld_by == "validity"
    ok = latency(None, EAGER, PADDLE)
    ok.what = "batch 1 p50 `m` on each framework's best runtime"
    line = headline([m, ok], "torch", "paddle")[0]
    assert line == ("**latency** (2 comparisons): PaddlePaddle ahead on 1 (1 significant); "
                    "1 without verdict (unlike runtimes)")


@pytest.mark.parametrize("runtime, family", [
    (EAGER, "PyTorch eager"), (PADDLE, "Paddle Inference"), (ORT, "ONNX Runtime 1.32.0"),
    ("PyTorch TorchScript (traced, frozen at load) on CPU", "PyTorch TorchScript"),
    ("TorchScript (frozen) int8 kernels, fbgemm engine", "TorchScript"),
])
def test_runtime_family_drops_the_settings(runtime, family):
    assert runtime_family(runtime) == family
