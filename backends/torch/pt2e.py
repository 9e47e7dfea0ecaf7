"""int8 with torchao's pt2e flow (issue 14, item 5): the maintained successor of torch.ao.quantization FX.

`torch.export` captures the model, `prepare_pt2e` inserts observers where `X86InductorQuantizer` annotates
(conv, linear, their fused add/ReLU patterns), calibration runs the shared batches, `convert_pt2e` writes
quantize/dequantize pairs around fp32 ops with int8 weights folded in. The result is an exported program (.pt2);
it is int8 at run time only once Inductor compiles it (freezing lets Inductor fuse each dequantize-op-quantize
pattern into a oneDNN int8 kernel), so its runtime is `torch.compile` at load (backends/torch/measure.py,
runtime `inductor`), and its fp32 parent is measured compiled the same way: the int8 speed-up then compares
two compiled programs, not compilation with eager execution. Static post-training quantization only: QAT
through pt2e trains an exported graph (`move_exported_model_to_train`), which the common training loop does
not drive, so the quantize stage's validation rejects other modes for this engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from backends.base import ExportedArtifact, QuantizedModel
from backends.capture import recorded_warnings
from backends.torch.export import batch_dim, capture_example, save_program
from backends.torch.measure import RUNTIMES, load_predictor

if TYPE_CHECKING:  # the stage module imports backends.base: a runtime import would be circular
    from common.stages.quantize import QuantizeStage

NAME = "pt2e-x86-inductor"
RUNTIME = "inductor"  # backends/torch/measure.py RUNTIMES key
FORMAT = "torch.export program (.pt2) of the pt2e int8 model (quantize/dequantize pairs, int8 weights)"
ONNX_OPSET = 18  # the dynamo exporter's lowest opset


def _observers(cfg: QuantizeStage):
    """The calibration name -> torchao observer: the same three estimators the FX engine offers."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver
    return {"histogram": HistogramObserver, "minmax": MinMaxObserver,
            "moving_average": MovingAverageMinMaxObserver}[cfg.calibration]


def quantizer(cfg: QuantizeStage):
    """X86InductorQuantizer with the default x86 scheme (uint8 affine activations over the full 0..255 range,
    int8 symmetric weights), the activation observer and the weight granularity taken from the stage."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    base = xiq.get_default_x86_inductor_quantization_config()
    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                           is_dynamic=False, observer_or_fake_quant_ctr=_observers(cfg).with_args(eps=2 ** -12))
    if cfg.per_channel_weights:
        weight = base.weight
    else:
        weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                                  is_dynamic=False, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    config = type(base)(act, act, weight, base.bias, base.is_qat)
    return xiq.X86InductorQuantizer().set_global(config)


def lowering(cfg: QuantizeStage) -> dict[str, str]:
    weights = "int8 per-channel symmetric" if cfg.per_channel_weights else "int8 per-tensor symmetric"
    return {"tool": "torchao pt2e: torch.export, prepare_pt2e / convert_pt2e with X86InductorQuantizer",
            "engine": NAME, "weights": weights, "activations": "uint8 per-tensor affine, full 8-bit range",
            "calibration": f"{_observers(cfg).__name__} over {cfg.calibration_batches} batches",
            "runtime": RUNTIMES[RUNTIME] + " (int8 kernels fused by Inductor)",
            "only_runtime": "a pt2e int8 program computes in int8 only once Inductor compiles it with frozen "
                            "weights: run eagerly, its quantize/dequantize pairs compute in float"}


def quantize_static(model: nn.Module, cfg: QuantizeStage, calibration: list[np.ndarray], example: np.ndarray,
                    out_dir: Path, threads: int) -> QuantizedModel:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    x = capture_example(example, model)

    def run() -> torch.fx.GraphModule:
        program = torch.export.export(model.eval(), (x,), dynamic_shapes=(batch_dim(),), strict=True)
        prepared = prepare_pt2e(program.module(), quantizer(cfg))
        with torch.inference_mode():
            for batch in calibration:
                prepared(torch.from_numpy(batch))
        return convert_pt2e(prepared)

    converted, caught = recorded_warnings(run)
    drop_unused_weights(converted)
    path, more = recorded_warnings(lambda: save_program(converted, example, out_dir))
    artifact = ExportedArtifact(format=FORMAT, files=[path], entry=path, extra={"runtime": RUNTIME, "engine": NAME})
    qm = load_quantized(artifact, threads)
    qm.info["framework_warnings"] = list(dict.fromkeys(caught + more))
    qm.module = converted
    return qm


def drop_unused_weights(converted: torch.fx.GraphModule) -> None:
    """Delete the fp32 weights convert_pt2e leaves on the module after folding their int8 copies into constants:
    torch.export would save them too, and the int8 file would carry the fp32 model beside its int8 weights."""
    used = {n.target for n in converted.graph.nodes if n.op == "get_attr"}
    for name, _ in list(converted.named_parameters()) + list(converted.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, attr)


def load_quantized(artifact: ExportedArtifact, threads: int) -> QuantizedModel:
    import torchao.quantization.pt2e  # noqa: F401  registers the ops a saved pt2e program is made of
    torch.set_num_threads(threads)
    predict = load_predictor(artifact, torch.device("cpu"))
    return QuantizedModel(artifact=artifact, predict=predict,
                          info={"runtime": RUNTIMES[RUNTIME], "engine": NAME, "fp32_runtime": RUNTIME})


def export_onnx(qm: QuantizedModel, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    """The pt2e int8 program through torch.onnx.export's dynamo exporter (onnxscript), which writes its
    quantize/dequantize ops as QuantizeLinear/DequantizeLinear pairs (QDQ)."""
    if qm.module is None:
        raise RuntimeError("the int8 model was reopened from its file; convert it in the quantize stage")
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / "model.onnx", out_dir / "model.tmp.onnx"
    onnx_program = torch.onnx.export(qm.module, (capture_example(example, qm.module),), dynamo=True, opset_version=ONNX_OPSET,
                                     input_names=["x"], output_names=["logits"],
                                     dynamic_shapes=(batch_dim(),))
    onnx_program.save(str(tmp))
    tmp.replace(path)
    return ExportedArtifact(format=f"ONNX QDQ (opset {ONNX_OPSET}, torch.onnx.export dynamo of the pt2e int8 model)",
                            files=[path], entry=path)
