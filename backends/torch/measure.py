"""Load and measure the exported artifact: params and MACs counted from the program, predictor for timing."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from backends.base import ExportedArtifact
from common.pruning import sparsity_of

RUNTIME = "PyTorch eager (torch.export program .module(), inference_mode)"


RUNTIMES = {"torchscript": "PyTorch TorchScript (traced, frozen at load)",
            "torchscript-optimized": "PyTorch TorchScript (traced, optimize_for_inference at load)",
            "inductor": "PyTorch torch.compile (Inductor, freezing, per batch size) of the torch.export program"}


COMPILED_AT_LOAD = (1,)  # batch sizes compiled when the program is loaded; any other on its first call


def compiled_program(artifact: ExportedArtifact, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The .pt2 program compiled by Inductor with its weights frozen as constants (what lets Inductor fuse pt2e's
    quantize/dequantize pairs into int8 kernels). Static shapes: with dynamic ones Inductor cannot fold pt2e's
    weight prepacking (torch 2.14 / torchao 0.18: "UnsupportedOperatorException: onednn.qconv_prepack"), so each
    batch size compiles on its first call; the stages make that call before any timed, load-metered window, and
    feed validation at a batch size they time anyway (common/stages/loop.py, predict_validation). Compiled here
    for batch 1 (every stage's first timed size); those seconds are kept on the returned callable (`compile_s`,
    `compile_batches`)."""
    import torch._dynamo
    import torch._inductor.config
    # one compile per batch size: room for every size a run feeds (latency sizes, probe, validation chunks)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # Process-wide, not torch.compile(options=...): a later shape's compile must see it too, and with the option
    # form the pt2e graph fails the same way as with dynamic shapes. Freezing applies to graphs compiled without
    # gradients only, so a training step compiled by runtime.compile is unaffected.
    torch._inductor.config.freezing = True
    program = torch.export.load(str(artifact.entry))
    shape = next(n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder"
                 and n.name in program.graph_signature.user_inputs)
    module = torch.compile(program.module(), dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in COMPILED_AT_LOAD:
            module(torch.zeros((batch, *[int(d) for d in shape[1:]]), device=device))
    module.compile_s = time.perf_counter() - t0
    module.compile_batches = COMPILED_AT_LOAD
    return module


def load_predictor(artifact: ExportedArtifact, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    kind = artifact.extra.get("runtime")
    if kind == "torchscript":
        module = torch.jit.freeze(torch.jit.load(str(artifact.entry), map_location=device).eval())
    elif kind == "torchscript-optimized":
        module = torch.jit.optimize_for_inference(torch.jit.load(str(artifact.entry), map_location=device).eval())
    elif kind == "inductor":
        module = compiled_program(artifact, device)
    else:
        module = torch.export.load(str(artifact.entry)).module()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    predict.compile_s = getattr(module, "compile_s", None)  # type: ignore[attr-defined]
    predict.compile_batches = getattr(module, "compile_batches", ())  # type: ignore[attr-defined]
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
