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
    for cand in candidates:
        predict = backend.load_artifact(cand, 2)
        for batch in (1, 7):
            x = _images(batch)
            check = logit_difference(reference(x), predict(x))
            assert check["argmax_agree"] == 1.0 and check["max_rel"] < 1e-4, (backend.runtime_name(cand), check)
