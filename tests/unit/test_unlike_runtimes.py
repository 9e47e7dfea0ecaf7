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
    assert line == ("**latency** (2 comparisons): PaddlePaddle ahead on 1 (significant); "
                    "1 without verdict (unlike runtimes)")


@pytest.mark.parametrize("runtime, family", [
    (EAGER, "PyTorch eager"), (PADDLE, "Paddle Inference"), (ORT, "ONNX Runtime 1.32.0"),
    ("PyTorch TorchScript (traced, frozen at load) on CPU", "PyTorch TorchScript"),
    ("TorchScript (frozen) int8 kernels, fbgemm engine", "TorchScript"),
])
def test_runtime_family_drops_the_settings(runtime, family):
    assert runtime_family(runtime) == family


INDUCTOR = "PyTorch torch.compile (Inductor, freezing, per batch size) of the torch.export program on CPU"
NOT_TRIED = {INDUCTOR: "stages.export.compile_candidates=true tries it"}


def best_latency(torch_ms: float, paddle_ms: float, torch_untried: dict[str, str]) -> Metric:
    m = Metric("latency", "batch 1 p50 `m` on each framework's best runtime", " ms", False)
    for seed, jitter in enumerate([0.0, 0.1, -0.1]):
        m.add("torch", seed, torch_ms + jitter, untried=torch_untried)
        m.add("paddle", seed, paddle_ms + jitter)
    return m


@pytest.mark.parametrize("torch_ms, paddle_ms, untried, ahead", [
    (3.0, 1.0, NOT_TRIED, None),       # PyTorch behind with Inductor untried: its best may be faster, no verdict
    (1.0, 3.0, NOT_TRIED, "torch"),    # PyTorch ahead even without it: an untried path cannot undo that
    (3.0, 1.0, {}, "paddle"),          # every candidate tried: the row judges
])
def test_a_best_runtime_search_that_left_candidates_out_cannot_lose_the_row(torch_ms, paddle_ms, untried, ahead):
    v = verdict(best_latency(torch_ms, paddle_ms, untried), "torch", "paddle")
    assert v.ahead == ahead
    if ahead is None:
        assert v.withheld_by == "untried"
        assert v.text == ("no verdict: PyTorch's torch.compile not tried (stages.export.compile_candidates="
                          "true tries it), so PyTorch's best may be faster")
        line = headline([best_latency(torch_ms, paddle_ms, untried)], "torch", "paddle")[0]
        assert line == ("**latency** (1 comparison): 1 without verdict (a best-runtime search left candidates out)")
