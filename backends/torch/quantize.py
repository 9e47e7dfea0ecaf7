"""int8 quantization with torch.ao.quantization FX graph mode, deployed as a frozen TorchScript file.

The quantized engine is fbgemm: with `x86` or `onednn` an int8 model is fast only for the first input
shape it runs and ~10x slower on any other (docs/ARCHITECTURE.md, section 6), which would make batch-N latency dishonest.
Everything engine-specific sits in `FxFbgemmEngine`; torchao's pt2e flow (the maintained successor, fast only
after torch.compile) is the second engine, `torch_engine: pt2e` (backends/torch/pt2e.py), behind the same methods.
`torch.export` cannot take FX int8 models; TorchScript (trace + freeze) is the file such a model ships as.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

from backends.base import ExportedArtifact, QuantizedModel
from backends.torch import pt2e
from backends.torch.export import ONNX_OPSET, write_onnx
from backends.torch.prune import get_masks, without_reparametrization
from backends.torch.train import observers_held
from backends.capture import merge_distinct, recorded_warnings
from common.errors import UnsupportedStage

if TYPE_CHECKING:  # the stage module imports backends.base: a runtime import would be circular
    from common.stages.quantize import QuantizeStage

RUNTIME = "TorchScript (frozen) int8 kernels, fbgemm engine"
# Why the int8 file has no `best` candidates beside RUNTIME (the export stage searches them for fp32 files only).
ONLY_RUNTIME = ("an FX int8 model runs on fbgemm's int8 kernels from eager Python or TorchScript, and frozen "
                "TorchScript is the one that deploys without Python; PyTorch's other int8 path is "
                "`torch_engine: pt2e` (Inductor)")
FORMAT = "TorchScript (.pt: torch.jit.trace + freeze of the FX int8 model)"

_ACTIVATION_OBSERVERS = {"histogram": tq.HistogramObserver, "minmax": tq.MinMaxObserver,
                         "moving_average": tq.MovingAverageMinMaxObserver}


class FxFbgemmEngine:
    """torch.ao.quantization FX graph mode on the fbgemm kernels."""

    name = "fx-fbgemm"
    backend_config = "fbgemm"

    def activate(self) -> None:
        torch.backends.quantized.engine = self.backend_config

    def qconfig_mapping(self, cfg: QuantizeStage) -> tq.QConfigMapping:
        # fbgemm without VNNI needs 7-bit activations (reduce_range) to avoid overflow in its int16 accumulation.
        act = _ACTIVATION_OBSERVERS[cfg.calibration].with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                                               reduce_range=True)
        if cfg.per_channel_weights:
            weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        else:
            weight = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        return tq.QConfigMapping().set_global(tq.QConfig(activation=act, weight=weight))

    def qat_mapping(self, cfg: QuantizeStage) -> tq.QConfigMapping:
        mapping = tq.get_default_qat_qconfig_mapping(self.backend_config)  # moving-average fake-quant, per-channel
        if not cfg.per_channel_weights:
            qc = tq.QConfig(activation=mapping.global_qconfig.activation,
                            weight=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=-128,
                                                             quant_max=127, dtype=torch.qint8,
                                                             qscheme=torch.per_tensor_symmetric))
            mapping = tq.QConfigMapping().set_global(qc)
        return mapping

    def lowering(self, cfg: QuantizeStage) -> dict[str, str]:
        weights = "int8 per-channel symmetric" if cfg.per_channel_weights else "int8 per-tensor symmetric"
        if cfg.mode == "dynamic":
            return {"tool": "torch.ao.quantization.quantize_dynamic (nn.Linear)", "engine": self.name,
                    "weights": weights + " (Linear only)", "activations": "quantized at run time per batch",
                    "calibration": "none (dynamic)", "runtime": RUNTIME, "only_runtime": ONLY_RUNTIME}
        tool = ("prepare_qat_fx / convert_fx (get_default_qat_qconfig_mapping('fbgemm'))" if cfg.mode == "qat"
                else "prepare_fx / convert_fx")
        calibration = ("fake-quant ranges learned during fine-tuning (moving-average min/max)" if cfg.mode == "qat"
                       else f"{_ACTIVATION_OBSERVERS[cfg.calibration].__name__} over {cfg.calibration_batches} batches")
        return {"tool": f"torch.ao.quantization FX graph mode: {tool}", "engine": self.name, "weights": weights,
                "activations": "uint8 per-tensor affine, 7-bit range (reduce_range for fbgemm)",
                "calibration": calibration, "runtime": RUNTIME, "only_runtime": ONLY_RUNTIME}


ENGINE = FxFbgemmEngine()


def _fp32_copy(model: nn.Module, train: bool) -> nn.Module:
    m = without_reparametrization(model).cpu()  # int8 kernels are CPU kernels
    return m.train() if train else m.eval()


def lowering(cfg: QuantizeStage) -> dict[str, str]:
    return pt2e.lowering(cfg) if cfg.torch_engine == "pt2e" else ENGINE.lowering(cfg)


def quantize_static(model: nn.Module, cfg: QuantizeStage, calibration: list[np.ndarray], example: np.ndarray,
                    fp32_artifact: ExportedArtifact, out_dir: Path, threads: int) -> QuantizedModel:
    """FX quantization works on the module (a torch.export program cannot be FX-quantized); the fp32
    artifact is the same weights and is not needed here. `torch_engine: pt2e` takes torchao's flow instead."""
    if cfg.torch_engine == "pt2e":
        return pt2e.quantize_static(_fp32_copy(model, train=False), cfg, calibration, example, out_dir, threads)
    ENGINE.activate()
    x = torch.from_numpy(example)

    def run() -> nn.Module:
        prepared = prepare_fx(_fp32_copy(model, train=False), ENGINE.qconfig_mapping(cfg), (x,))
        with torch.inference_mode():
            for batch in calibration:
                prepared(torch.from_numpy(batch))
        return convert_fx(prepared)

    converted, caught = recorded_warnings(run)
    return _save(converted, example, out_dir, threads, caught)


def quantize_dynamic(model: nn.Module, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                     threads: int) -> QuantizedModel:
    ENGINE.activate()
    converted, caught = recorded_warnings(
        lambda: tq.quantize_dynamic(_fp32_copy(model, train=False), {nn.Linear}, dtype=torch.qint8))
    return _save(converted, example, out_dir, threads, caught)


def prepare_qat(model: nn.Module, cfg: QuantizeStage, example: np.ndarray) -> nn.Module:
    if get_masks(model):
        raise UnsupportedStage("torch", "qat on a magnitude-pruned model",
                               "fake-quant training would regrow the pruned weights; use mode: ptq_static")
    ENGINE.activate()
    device = next(model.parameters()).device
    prepared, caught = recorded_warnings(
        lambda: prepare_qat_fx(_fp32_copy(model, train=True), ENGINE.qat_mapping(cfg), (torch.from_numpy(example),)))
    prepared.to(device)
    prepared._slimbench_warnings = caught
    prepared._slimbench_qat = True
    return prepared


def predict_fake_quant(prepared: nn.Module, fn: Callable[[], np.ndarray]) -> np.ndarray:
    """Evaluate a QAT model without letting validation data move its observed ranges.

    torch's FakeQuantize observes whenever its observer is enabled, in eval mode too; Paddle's uses the
    stored scales in eval mode. Observers are frozen for the call and each is restored to its own state after
    (QAT may have frozen some for good).
    """
    with observers_held(prepared):
        return fn()


def freeze_qat_statistics(prepared: nn.Module) -> None:
    """As the PyTorch QAT tutorial does for its last epochs: torch.ao's `disable_observer` on every FakeQuantize
    (activations and weights keep the scale and zero point they last observed) and `freeze_bn_stats` on every
    conv-BN module (batch norm normalizes with its running statistics and stops updating them). Both persist
    through train()/eval(); evaluation and recalibration restore each observer to this state, and recalibration
    still recomputes the frozen statistics (backends/torch/train.py). A batch norm not fused with a convolution
    (none in the built-in architectures) is not frozen."""
    prepared.apply(tq.disable_observer)
    prepared.apply(nniqat.freeze_bn_stats)


def convert_qat(prepared: nn.Module, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                threads: int) -> QuantizedModel:
    ENGINE.activate()
    earlier = getattr(prepared, "_slimbench_warnings", [])
    converted, caught = recorded_warnings(lambda: convert_fx(copy.deepcopy(prepared).cpu().eval()))
    return _save(converted, example, out_dir, threads, merge_distinct(earlier, caught))


FBGEMM_DEPTHWISE_MULTIPLE = 8


def kernel_notes(converted: nn.Module) -> list[str]:
    """What in this int8 model's shapes the fbgemm kernels are known to run slowly (issue 14, item 4).

    Why: fbgemm's int8 depthwise convolution has a fast kernel only for channel counts that are multiples of 8;
    filter pruning leaves counts such as 22, 67 or 100, and those layers take a generic path. On a 2-core AMD
    EPYC (benchmarks/int8_depthwise_channels.py) a 3x3 depthwise layer of 100 channels took about 10x as long
    as one of 96, and the pruned MobileNetV2 of compress_resnet50_mobilenet ran slower in int8 than in fp32."""
    odd = sorted({m.in_channels for m in converted.modules()
                  if isinstance(m, nnq.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
                  and m.in_channels % FBGEMM_DEPTHWISE_MULTIPLE})
    if not odd:
        return []
    shown = ", ".join(map(str, odd[:6])) + (", ..." if len(odd) > 6 else "")
    return [f"fbgemm's int8 depthwise convolution is fast only for channel counts that are multiples of "
            f"{FBGEMM_DEPTHWISE_MULTIPLE}; this model's depthwise layers have {shown} channels (as filter pruning "
            "left them), which run on a generic path about 10x slower (benchmarks/int8_depthwise_channels.py): "
            "read its int8 latency with that in mind"]


def _save(converted: nn.Module, example: np.ndarray, out_dir: Path, threads: int, caught: list[str]) -> QuantizedModel:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pt"
    tmp = out_dir / "model.tmp.pt"

    def script() -> None:
        with torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(converted, torch.from_numpy(example)).eval())
        torch.jit.save(traced, str(tmp))

    _, more = recorded_warnings(script)
    tmp.replace(path)
    artifact = ExportedArtifact(format=FORMAT, files=[path], entry=path)
    qm = load_quantized(artifact, threads)
    qm.info["framework_warnings"] = merge_distinct(caught, more)
    qm.info["kernel_notes"] = kernel_notes(converted)
    qm.module = converted
    return qm


def export_quantized_onnx(qm: QuantizedModel, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    """The FX int8 model through torch.onnx.export's TorchScript-based exporter, which writes each quantized
    op as QuantizeLinear/DequantizeLinear around the float op (QDQ; ONNX Runtime fuses them into its int8
    kernels). It needs the converted module: from the frozen TorchScript file the exporter fails ("Quantized
    weight value not found amongst constant parameters"), so an int8 slot reopened on resume cannot convert."""
    if qm.info.get("engine") == pt2e.NAME:
        return pt2e.export_onnx(qm, example, out_dir)
    if qm.module is None:
        raise RuntimeError("the int8 model was reopened from its frozen TorchScript file, which torch.onnx.export "
                           "cannot convert (quantized weights are folded into constants); re-run the quantize stage")
    ENGINE.activate()
    path = write_onnx(qm.module, example, out_dir)
    return ExportedArtifact(format=f"ONNX QDQ (opset {ONNX_OPSET}, torch.onnx.export of the FX int8 model, "
                            "TorchScript-based)", files=[path], entry=path)


def load_quantized(artifact: ExportedArtifact, threads: int) -> QuantizedModel:
    if artifact.extra.get("engine") == pt2e.NAME:
        return pt2e.load_quantized(artifact, threads)
    ENGINE.activate()
    torch.set_num_threads(threads)
    module = torch.jit.load(str(artifact.entry), map_location="cpu")

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).float().numpy()

    return QuantizedModel(artifact=artifact, predict=predict, info={"runtime": RUNTIME, "engine": ENGINE.name})

class Quantization:
    """backends.base.Quantization on torch: FX graph mode with the fbgemm engine (TorchScript int8 files), or
    torchao's pt2e flow compiled by Inductor (`torch_engine: pt2e`); no backend state needed."""
    quantization_lowering = staticmethod(lowering)
    quantize_static = staticmethod(quantize_static)
    quantize_dynamic = staticmethod(quantize_dynamic)
    prepare_qat = staticmethod(prepare_qat)
    freeze_qat_statistics = staticmethod(freeze_qat_statistics)
    convert_qat = staticmethod(convert_qat)
    load_quantized = staticmethod(load_quantized)
    export_quantized_onnx = staticmethod(export_quantized_onnx)
