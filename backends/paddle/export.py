"""Deployable fp32 artifact: a Paddle inference model (`paddle.jit.save`: .pdmodel + .pdiparams)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from backends.base import ExportedArtifact


def export_model(model: nn.Layer, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = [paddle.static.InputSpec([None, *example.shape[1:]], "float32", "x")]
    prefix = out_dir / "model"
    paddle.jit.save(model, str(prefix), input_spec=spec)
    files = [prefix.with_suffix(".pdmodel"), prefix.with_suffix(".pdiparams")]
    for f in files:
        if not f.is_file():
            raise RuntimeError(f"paddle.jit.save did not write {f}")
    return ExportedArtifact(format="Paddle inference model (.pdmodel + .pdiparams)", files=files,
                            entry=prefix.with_suffix(".pdmodel"))
