"""Where an exported model is measured (issue 14, item 1). ONNX Runtime as neutral ground: each backend's
converter turns its exported artifact into an ONNX file that computes what the artifact computes, and a model that
does not convert is recorded with the converter's reason while the run goes on. Each framework's `best` runtime
is chosen among deployment candidates that compute what the artifact computes."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from common import onnx_runtime
from common.config import MeasureConfig, ModelConfig
from common.metrics import logit_difference

pytest.importorskip("onnxruntime")


def _backend(name: str):
    pytest.importorskip(name)
    from backends.base import load_backend
    b = load_backend(name)
    b.configure(2, "cpu", 0)
    return b


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("name,arch", [("torch", "mobilenet_v2"), ("paddle", "mobilenet_v2"),
                                       ("torch", "resnet18"), ("paddle", "resnet18")])
def test_onnx_file_computes_what_the_framework_artifact_computes(tmp_path: Path, name: str, arch: str):
    backend = _backend(name)
    model = backend.build_model(ModelConfig(arch=arch, small_input=True), 10)
    backend.recalibrate_bn(model, iter([_images(16), _images(16) * 2]))  # O(1) logits, not ~1e-7
    artifact = backend.export(model, _images(2), tmp_path / "artifact")
    onnx = backend.export_onnx(model, artifact, _images(2), tmp_path / "onnx")
    assert onnx.entry.suffix == ".onnx" and onnx.size_bytes > 0 and "ONNX" in onnx.format
    reference = backend.load_artifact(artifact, 2)
    ort = onnx_runtime.load_predictor(onnx.entry, 2)
    for batch in (1, 7):  # the batch dimension stays dynamic
        x = _images(batch)
        check = logit_difference(reference(x), ort(x))
        assert check["argmax_agree"] == 1.0 and check["max_rel"] < 1e-4, check


def test_a_model_that_does_not_convert_is_recorded_with_the_reason(tmp_path: Path, monkeypatch):
    from common.stages import export as export_stage
    backend = _backend("torch")

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(backend, "export_onnx", refuse)
    said: list[str] = []
    ctx = types.SimpleNamespace(out_dir=tmp_path, backend=backend, threads=2,
                                stream=types.SimpleNamespace(val_images=_images),
                                recipe=types.SimpleNamespace(parity=types.SimpleNamespace(probe_batch=4)),
                                progress=types.SimpleNamespace(say=said.append))
    stage = types.SimpleNamespace(name="export", config=types.SimpleNamespace(measure=MeasureConfig()))
    rec = export_stage.on_onnxruntime(ctx, stage, "student", model=None, artifact=None,
                                      artifact_predict=lambda x: x)
    assert rec["status"] == "unavailable"
    assert rec["reason"] == ("RuntimeError: Exporting the operator 'aten::fancy' to ONNX opset version 17 is not "
                             "supported.")
    assert rec["runtime"].startswith("ONNX Runtime")
    assert said == [f"export: student on ONNX Runtime unavailable ({rec['reason']})"]
    assert export_stage.ok_onnx({"runtimes": {"onnxruntime": rec}}) == []


@pytest.mark.parametrize("name,arch", [("torch", "mobilenet_v2"), ("paddle", "mobilenet_v2"), ("torch", "resnet18")])
def test_deployment_candidates_compute_what_the_artifact_computes(tmp_path: Path, name: str, arch: str):
    backend = _backend(name)
    model = backend.build_model(ModelConfig(arch=arch, small_input=True), 10)
    backend.recalibrate_bn(model, iter([_images(16), _images(16) * 2]))
    artifact = backend.export(model, _images(2), tmp_path / "artifact")
    candidates = backend.export_candidates(model, artifact, _images(2), tmp_path / "candidates")
    names = {backend.runtime_name(c) for c in candidates}
    assert len(names) == len(candidates) and backend.runtime_name() not in names  # each a distinct runtime
    reference = backend.load_artifact(artifact, 2)
    # a compiling candidate (Inductor) compiles per batch size: test_a_compiling_candidate_is_tried_on_request...
    for cand in [c for c in candidates if not c.extra.get("compiles")]:
        predict = backend.load_artifact(cand, 2)
        for batch in (1, 7):
            x = _images(batch)
            check = logit_difference(reference(x), predict(x))
            assert check["argmax_agree"] == 1.0 and check["max_rel"] < 1e-4, (backend.runtime_name(cand), check)


@pytest.mark.torch
def test_a_compiling_candidate_is_tried_on_request_and_retimed_in_a_fresh_process(tmp_path: Path):
    """torch.compile (Inductor) of the exported program is a `best` candidate only when the export stage asks for
    it (compile_candidates): then it is checked against the artifact, its compile time is recorded, and when it
    wins, the paired timing phase's worker compiles and re-times it in a fresh process."""
    import json
    import subprocess
    import sys

    from tests.integration.test_quantization import result, run_dir
    from tests.integration.test_run_recipe import ROOT, cli
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--profile", "smoke", "--backend", "torch", "--out",
            str(tmp_path), "--set", "stages.export.models=[student_kd]", "--set",
            "stages.export.compile_candidates=true")
    assert p.returncode == 0, p.stdout + p.stderr
    run = run_dir(tmp_path, "kd_resnet50_mobilenet")
    best = result(run, "torch")["stages"][-1]["models"]["student_kd"]["runtimes"]["best"]
    [inductor] = [c for c in best["candidates"] if "torch.compile" in c["runtime"]]
    assert inductor["status"] == "ok", inductor
    assert inductor["vs_artifact"]["argmax_agree"] == 1.0 and inductor["compile_s"] > 0
    assert inductor["compile_batches"] == [1]
    assert inductor["batch_1_p50_ms"] > 0
    if best["chosen"] == inductor["runtime"]:
        assert best["extra"]["runtime"] == "inductor" and best["latency"]["4"]["p50_ms"] > 0
    p = subprocess.run([sys.executable, "-m", "common.run.worker", "time", str(run), "--backend", "torch", "--seed",
                        "0", "--threads", "2", "--round", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    timed = json.loads((run / "timing" / "seed-0" / "round-0.torch.json").read_text())
    assert timed["status"] == "ok" and all(i["latency"]["1"]["p50_ms"] > 0 for i in timed["items"])


def test_a_compiling_candidate_is_listed_as_not_tried_by_default(tmp_path: Path):
    from common.stages import export as export_stage
    backend = _backend("torch")
    model = backend.build_model(ModelConfig(arch="tiny_cnn"), 10)
    artifact = backend.export(model, _images(2), tmp_path / "artifact")
    stream = types.SimpleNamespace(val_images=_images,
                                   val_batches=lambda batch_size=None: iter([(_images(8), np.arange(8) % 10)]))
    ctx = types.SimpleNamespace(out_dir=tmp_path, backend=backend, threads=2, stream=stream,
                                recipe=types.SimpleNamespace(parity=types.SimpleNamespace(probe_batch=4)),
                                progress=types.SimpleNamespace(say=lambda s: None))
    stage = types.SimpleNamespace(name="export", config=export_stage.ExportStage(
        name="export", models=("student",), measure=MeasureConfig(batch_sizes=(1,), warmup=1, repeats=3)))
    reference = backend.load_artifact(artifact, 2)
    rec = export_stage.on_best(ctx, stage, "student", model, artifact, reference)
    [inductor] = [c for c in rec["candidates"] if "torch.compile" in c["runtime"]]
    assert inductor["status"] == "not tried"
    assert inductor["reason"].endswith("stages.export.compile_candidates=true tries it")
    assert rec["chosen"] != inductor["runtime"]


def test_candidates_sharing_a_runtime_name_are_recorded_apart():
    from common.stages.export import unique_name
    assert unique_name("A", set()) == "A"
    assert unique_name("A", {"A"}) == "A #2"
    assert unique_name("A", {"A", "A #2"}) == "A #3"
