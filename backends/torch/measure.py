"""Load and measure the exported artifact: params and MACs counted from the program, predictor for timing."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from backends.base import ExportedArtifact
from common.pruning import sparsity_of

RUNTIME = "PyTorch eager (torch.export program .module(), inference_mode)"


RUNTIMES = {"torchscript": "PyTorch TorchScript (traced, frozen at load)",
            "torchscript-optimized": "PyTorch TorchScript (traced, optimize_for_inference at load)"}


def load_predictor(artifact: ExportedArtifact, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    kind = artifact.extra.get("runtime")
    if kind == "torchscript":
        module = torch.jit.freeze(torch.jit.load(str(artifact.entry), map_location=device).eval())
    elif kind == "torchscript-optimized":
        module = torch.jit.optimize_for_inference(torch.jit.load(str(artifact.entry), map_location=device).eval())
    else:
        module = torch.export.load(str(artifact.entry)).module()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    return predict


def artifact_stats(artifact: ExportedArtifact, input_shape: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    program = torch.export.load(str(artifact.entry))
    sig = program.graph_signature
    params = sum(program.state_dict[name].numel() for name in sig.parameters)
    module = program.module()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(torch.zeros(input_shape, device=device))
    flops = int(counter.get_total_flops())
    weights = {name: program.state_dict[name].detach().cpu().numpy() for name in sig.parameters
               if program.state_dict[name].dim() >= 2}  # conv and linear weights
    return {"params": int(params), "macs": flops // 2, "flops": flops, "sparsity": sparsity_of(weights),
            "counted_by": "torch.utils.flop_counter on the exported program (conv + matmul)"}


class Runtimes:
    """backends.base.Runtimes on torch: eager inference of the exported program on the configured device."""
    device: torch.device

    def load_artifact(self, artifact: ExportedArtifact, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        torch.set_num_threads(threads)
        return load_predictor(artifact, self.device)

    def artifact_stats(self, artifact: ExportedArtifact, input_shape: tuple[int, ...]) -> dict[str, Any]:
        return artifact_stats(artifact, input_shape, self.device)

    def runtime_name(self, artifact: ExportedArtifact | None = None) -> str:
        name = RUNTIMES.get(artifact.extra.get("runtime"), RUNTIME) if artifact is not None else RUNTIME
        return name + (" on CUDA" if self.device.type == "cuda" else " on CPU")
