"""Deployable fp32 artifact: a Paddle inference model (`paddle.jit.save`: .pdmodel + .pdiparams)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import paddle
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


class Exporting:
    """backends.base.Exporting on Paddle: a Paddle inference model written by paddle.jit.save."""
    export = staticmethod(export_model)
