"""Deployable fp32 artifact: a `torch.export` program (.pt2) with a dynamic batch dimension."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from backends.base import ExportedArtifact
from backends.torch.prune import without_reparametrization


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Export what inference uses and nothing of the training history: parameters without requires_grad and
    batch-norm step counters at 0 (unused in eval mode). A teacher frozen by a distill stage and the same
    teacher reloaded from its checkpoint on resume then give byte-identical files."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    counters = [(m, m.num_batches_tracked.clone()) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None]
    for p, _ in flags:
        p.requires_grad_(False)
    for m, _ in counters:
        m.num_batches_tracked.zero_()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, value in counters:
            m.num_batches_tracked.copy_(value)


def export_model(model: nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    with _frozen(model):
        return _export(model, example, out_dir)


def _export(model: nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    model.eval()
    path = save_program(model, example, out_dir)
    return ExportedArtifact(format="torch.export (.pt2)", files=[path], entry=path)


def batch_dim() -> dict[int, torch.export.Dim]:
    """The dynamic batch dimension of every program slimbench captures."""
    return {0: torch.export.Dim("batch", min=1, max=4096)}


def capture_example(example: np.ndarray, model: nn.Module) -> torch.Tensor:
    """The example on the model's device, at least batch 2: a batch-1 example makes torch.export specialize the
    batch dimension to 1."""
    if example.shape[0] < 2:
        example = np.concatenate([example, example])
    return torch.from_numpy(example).to(next(iter(model.parameters()), torch.empty(0)).device)


def save_program(model: nn.Module, example: np.ndarray, out_dir: Path) -> Path:
    """out_dir/model.pt2: the module (in the mode it is in) as a torch.export program with a dynamic batch
    dimension, written under a temporary name first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(model, (capture_example(example, model),), dynamic_shapes=(batch_dim(),),
                                  strict=False)
    path = out_dir / "model.pt2"
    tmp = path.with_name("model.tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return path


ONNX_OPSET = 17


def export_onnx(model: nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    """The model as ONNX for ONNX Runtime, by torch.onnx.export's TorchScript-based exporter with a dynamic batch
    dimension. Why not from the .pt2 file: the exporter cannot trace an ExportedProgram's module ("Calling
    train() is not supported"), and the dynamo exporter needs onnxscript; the stage checks the ONNX outputs
    against the .pt2 artifact's, so the two files are shown to be one model."""
    with _frozen(model):
        path = write_onnx(model, example, out_dir)
    return ExportedArtifact(format=f"ONNX (opset {ONNX_OPSET}, torch.onnx.export, TorchScript-based)",
                            files=[path], entry=path)


def write_onnx(model: nn.Module, example: np.ndarray, out_dir: Path) -> Path:
    """out_dir/model.onnx by the TorchScript-based exporter, batch dimension dynamic; written under a temporary
    name first, so a failed conversion leaves no file under the final one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    path, tmp = out_dir / "model.onnx", out_dir / "model.tmp.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(example).to(device),), str(tmp), dynamo=False,
                          input_names=["x"], output_names=["logits"], opset_version=ONNX_OPSET,
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    tmp.replace(path)
    return path


def export_torchscript(model: nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    """The traced TorchScript file, the deployment path PyTorch documents for CPU inference without Python; the
    runtime freezes it when it loads it (and, as a second candidate, applies optimize_for_inference: conv+BN
    folding, MKL-DNN layouts where they pay off). Why not saved frozen: in torch 2.14 a frozen file of some
    trained models does not load again ("Unsupported value kind: Tensor"), nor one saved after
    optimize_for_inference ("required keyword attribute 'value' is undefined"). Traced at the example's batch
    size; these models have no batch-dependent control flow, so any batch size runs it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    path, tmp = out_dir / "model.pt", out_dir / "model.tmp.pt"
    with _frozen(model), torch.no_grad():
        traced = torch.jit.trace(model, torch.from_numpy(example).to(device))
    torch.jit.save(traced, str(tmp))
    tmp.replace(path)
    return ExportedArtifact(format="TorchScript (.pt, traced)", files=[path], entry=path,
                            extra={"runtime": "torchscript"})


def torchscript_candidates(model: nn.Module, example: np.ndarray, out_dir: Path) -> list[ExportedArtifact]:
    """The traced file frozen at load, and the same file through optimize_for_inference at load (a graph that
    pass rejects makes that candidate unavailable, recorded with the reason)."""
    traced = export_torchscript(model, example, out_dir)
    return [traced, dataclasses.replace(traced, extra={"runtime": "torchscript-optimized"})]


def inductor_candidate(artifact: ExportedArtifact) -> ExportedArtifact:
    """The exported program itself, run by torch.compile with Inductor and frozen weights (measure.py
    compiled_program): no second file, only another runtime. Marked `compiles`: each batch size costs a compile,
    so the export stage tries it only when its recipe asks (compile_candidates)."""
    return dataclasses.replace(artifact, extra={**artifact.extra, "runtime": "inductor", "compiles": True})


class Exporting:
    """backends.base.Exporting on torch: a torch.export program of the model without pruning
    reparametrizations (masked weights folded in, so the file holds plain tensors), its ONNX twin, and as
    candidates for the fastest deployment the traced TorchScript file and the program compiled by Inductor."""

    def export_candidates(self, model: nn.Module, artifact: ExportedArtifact, example: np.ndarray,
                          out_dir: Path) -> list[ExportedArtifact]:
        return (torchscript_candidates(without_reparametrization(model), example, out_dir / "torchscript")
                + [inductor_candidate(artifact)])

    def export(self, model: nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
        return export_model(without_reparametrization(model), example, out_dir)

    def export_onnx(self, model: nn.Module, artifact: ExportedArtifact, example: np.ndarray,
                    out_dir: Path) -> ExportedArtifact:
        return export_onnx(without_reparametrization(model), example, out_dir)
