"""Deployable fp32 artifact: a `torch.export` program (.pt2) with a dynamic batch dimension."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from backends.base import ExportedArtifact


def export_model(model: nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    if example.shape[0] < 2:  # a batch-1 example makes torch.export specialize the batch dimension to 1
        example = np.concatenate([example, example])
    x = torch.from_numpy(example).to(device)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    path = out_dir / "model.pt2"
    tmp = path.with_name("model.tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return ExportedArtifact(format="torch.export (.pt2)", files=[path], entry=path)
