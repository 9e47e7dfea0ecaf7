"""Deployable fp32 artifact: a Paddle inference model (`paddle.jit.save`: .pdmodel + .pdiparams)."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import paddle
import paddle2onnx
from paddle import nn

from backends.base import ExportedArtifact


@contextmanager
def _frozen(model: nn.Layer) -> Iterator[None]:
    """Parameters marked stop_gradient while saving: the program records each parameter's flag, so a teacher
    frozen by a distill stage and the same teacher reloaded on resume would otherwise give different files."""
    flags = [(p, p.stop_gradient) for p in model.parameters()]
    for p, _ in flags:
        p.stop_gradient = True
    try:
        yield
    finally:
        for p, flag in flags:
            p.stop_gradient = flag


def export_model(model: nn.Layer, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = [paddle.static.InputSpec([None, *example.shape[1:]], "float32", "x")]
    prefix = out_dir / "model"
    with _frozen(model):
        paddle.jit.save(model, str(prefix), input_spec=spec)
    files = [prefix.with_suffix(".pdmodel"), prefix.with_suffix(".pdiparams")]
    for f in files:
        if not f.is_file():
            raise RuntimeError(f"paddle.jit.save did not write {f}")
    return ExportedArtifact(format="Paddle inference model (.pdmodel + .pdiparams)", files=files,
                            entry=prefix.with_suffix(".pdmodel"))


ONNX_OPSET = 13


def export_onnx(artifact: ExportedArtifact, out_dir: Path) -> ExportedArtifact:
    """The saved inference model converted by paddle2onnx (1.3.x: 2.x needs onnx<=1.17 and fails on int8), the
    tool PaddlePaddle documents for ONNX deployment; the batch dimension stays dynamic as saved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / "model.onnx", out_dir / "model.tmp.onnx"
    paddle2onnx.export(str(artifact.entry), str(artifact.entry.with_suffix(".pdiparams")), str(tmp),
                       opset_version=ONNX_OPSET, verbose=False, enable_onnx_checker=True)
    if not tmp.is_file():
        raise RuntimeError(f"paddle2onnx {paddle2onnx.__version__} did not write {tmp}")
    tmp.replace(path)
    return ExportedArtifact(format=f"ONNX (opset {ONNX_OPSET}, paddle2onnx {paddle2onnx.__version__})",
                            files=[path], entry=path)


class Exporting:
    """backends.base.Exporting on Paddle: a Paddle inference model written by paddle.jit.save, and its ONNX
    conversion by paddle2onnx."""
    export = staticmethod(export_model)

    def export_candidates(self, model: nn.Layer, artifact: ExportedArtifact, example: np.ndarray,
                          out_dir: Path) -> list[ExportedArtifact]:
        """The same files on Paddle Inference's native CPU kernels (oneDNN off): the other CPU configuration
        Paddle Inference offers; which is faster depends on the model and the CPU."""
        return [dataclasses.replace(artifact, extra={**artifact.extra, "runtime": "native"})]

    def export_onnx(self, model: nn.Layer, artifact: ExportedArtifact, example: np.ndarray,
                    out_dir: Path) -> ExportedArtifact:
        return export_onnx(artifact, out_dir)
