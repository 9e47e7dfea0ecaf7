"""int8 quantization with PaddleSlim, deployed on Paddle Inference with oneDNN int8.

Static PTQ is PaddleSlim's `quant_post_static` on the exported fp32 inference model; QAT is PaddleSlim's
dygraph `QAT` with `onnx_format=True`. Both write real int8 weights that run correctly under
`enable_mkldnn_int8`; `paddle.quantization` and dygraph PTQ keep float32 weights and give wrong int8
outputs with oneDNN (docs/ARCHITECTURE.md, section 6), so they are not used. Paddle quantizes activations symmetrically
(abs-max scales, int8), where torch's fbgemm uses affine uint8: the report states the difference.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import paddle
from paddle import nn

from backends.base import ExportedArtifact, QuantizedModel
from backends.paddle.export import export_onnx
from backends.paddle.measure import load_predictor
from backends.paddle.prune import get_masks
from backends.paddle.train import FROZEN_LAYERS, MOVING_RANGE_LAYERS
from backends.capture import merge_distinct, recorded_warnings
from backends.capabilities import require_supported
from common.errors import UnsupportedStage

if TYPE_CHECKING:  # the stage module imports backends.base: a runtime import would be circular
    from common.stages.quantize import QuantizeStage

RUNTIME = "Paddle Inference (AnalysisPredictor, oneDNN int8, IR optim on)"
# Why the int8 file has no `best` candidates beside RUNTIME (the export stage searches them for fp32 files only).
ONLY_RUNTIME = ("Paddle Inference's int8 CPU kernels are oneDNN's: without oneDNN it folds the quantize/dequantize "
                "pairs into float weights and runs float kernels")
FORMAT = "Paddle int8 inference model (.pdmodel + .pdiparams, quantize/dequantize_linear ops)"

# calibration name -> quant_post_static algo: abs_max is the max |x| over all batches (the symmetric min-max),
# avg the mean of per-batch abs-max, hist a percentile (hist_percent) of the |x| histogram.
_PTQ_ALGOS = {"minmax": "abs_max", "moving_average": "avg", "histogram": "hist"}


def lowering(cfg: QuantizeStage) -> dict[str, str]:
    weights = "int8 per-channel symmetric (channel_wise_abs_max)" if cfg.per_channel_weights else \
        "int8 per-tensor symmetric (abs_max)"
    if cfg.mode == "dynamic":
        return {"tool": "none (not supported: backends/capabilities.py)", "engine": "paddleslim", "weights": "-",
                "activations": "-", "calibration": "-", "runtime": "-"}
    if cfg.mode == "qat":
        return {"tool": "paddleslim.QAT (onnx_format=True), save_quantized_model", "engine": "paddleslim",
                "weights": weights, "activations": "int8 per-tensor symmetric (moving_average_abs_max)",
                "calibration": "fake-quant ranges learned during fine-tuning (moving-average abs-max)",
                "runtime": RUNTIME, "only_runtime": ONLY_RUNTIME}
    return {"tool": "paddleslim.quant.quant_post_static (onnx_format=True)", "engine": "paddleslim",
            "weights": weights, "activations": "int8 per-tensor symmetric",
            "calibration": f"algo '{_PTQ_ALGOS[cfg.calibration]}' over {cfg.calibration_batches} batches",
            "runtime": RUNTIME, "only_runtime": ONLY_RUNTIME}


def _weight_type(cfg: QuantizeStage) -> str:
    return "channel_wise_abs_max" if cfg.per_channel_weights else "abs_max"


class _CalibrationLoader(paddle.io.DataLoader):
    """The shared calibration batches as feed dicts: quant_post_static accepts only a paddle.io.DataLoader
    and calls it to iterate; nothing of DataLoader's own machinery is needed."""

    def __init__(self, batches: list[np.ndarray], feed_name: str):  # noqa: super().__init__ deliberately not called
        self.batches, self.feed_name = batches, feed_name

    def __call__(self):
        for b in self.batches:
            yield {self.feed_name: np.ascontiguousarray(b, np.float32)}

    def __len__(self) -> int:
        return len(self.batches)



def _static_mode(fn: Callable[[], Any]) -> Any:
    paddle.enable_static()
    try:
        return fn()
    finally:
        paddle.disable_static()


def quantize_static(model: nn.Layer, cfg: QuantizeStage, calibration: list[np.ndarray], example: np.ndarray,
                    fp32_artifact: ExportedArtifact, out_dir: Path, threads: int) -> QuantizedModel:
    """PaddleSlim's static PTQ reads an inference model: it quantizes the very fp32 file that is measured."""
    from paddleslim.quant import quant_post_static
    staging = out_dir / "staging"

    def run() -> None:
        quant_post_static(paddle.static.Executor(paddle.CPUPlace()), str(fp32_artifact.entry.parent), str(staging),
                          data_loader=_CalibrationLoader(calibration, "x"), model_filename=fp32_artifact.entry.name,
                          params_filename=fp32_artifact.entry.with_suffix(".pdiparams").name,
                          batch_nums=len(calibration),
                          algo=_PTQ_ALGOS[cfg.calibration], weight_quantize_type=_weight_type(cfg),
                          onnx_format=True)

    _, caught = recorded_warnings(lambda: _static_mode(run))
    return _finish(staging, out_dir, threads, caught)


def quantize_dynamic(model: nn.Layer, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                     threads: int) -> QuantizedModel:
    require_supported("paddle", "quantize", cfg)  # raises: declared unsupported in backends/capabilities.py
    raise AssertionError("backends/capabilities.py must declare paddle's dynamic quantization unsupported")


def prepare_qat(model: nn.Layer, cfg: QuantizeStage, example: np.ndarray) -> nn.Layer:
    """Insert PaddleSlim fake-quant layers in place (the model is the stage's own copy)."""
    if get_masks(model):
        raise UnsupportedStage("paddle", "qat on a magnitude-pruned model",
                               "fake-quant training would regrow the pruned weights; use mode: ptq_static")
    from paddleslim import QAT
    config = {"weight_quantize_type": _weight_type(cfg), "activation_quantize_type": "moving_average_abs_max",
              "weight_bits": 8, "activation_bits": 8, "quantizable_layer_type": ["Conv2D", "Linear"],
              "onnx_format": True}
    quanter = QAT(config=config)
    _, caught = recorded_warnings(lambda: quanter.quantize(model))
    object.__setattr__(model, "_slimbench_quanter", (quanter, caught))
    return model


def freeze_qat_statistics(prepared: nn.Layer) -> None:
    """PaddleSlim's moving-average range layers (activation inputs and outputs) and the batch-norm layers held in
    eval mode: the range layers apply their stored scale and stop updating it, batch norm normalizes with its
    running statistics and stops updating them, as torch's frozen QAT does. The trainer puts them back in eval
    mode after each train() (backends/paddle/train.py `hold_frozen_layers`); recalibration still recomputes the
    statistics. Weight scales are abs-max of the current weights on every call in PaddleSlim (no state to
    freeze), where torch's weight observers freeze with the activations'."""
    frozen = [m for m in prepared.sublayers() if isinstance(m, (*MOVING_RANGE_LAYERS, nn.layer.norm._BatchNormBase))]
    object.__setattr__(prepared, FROZEN_LAYERS, frozen)
    for m in frozen:
        m.eval()


def convert_qat(prepared: nn.Layer, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                threads: int) -> QuantizedModel:
    """Save the int8 inference model. PaddleSlim leaves the dygraph model unusable after this."""
    quanter, earlier = getattr(prepared, "_slimbench_quanter")
    staging = out_dir / "staging"
    prepared.eval()
    spec = [paddle.static.InputSpec([None, *example.shape[1:]], "float32", "x")]
    _, caught = recorded_warnings(lambda: quanter.save_quantized_model(prepared, str(staging / "model"),
                                                                        input_spec=spec))
    return _finish(staging, out_dir, threads, merge_distinct(earlier, caught))


def _finish(staging: Path, out_dir: Path, threads: int, caught: list[str]) -> QuantizedModel:
    """Move the staged files into place (a half-written artifact never sits under its final name)."""
    files = []
    for name in ("model.pdmodel", "model.pdiparams"):
        src = staging / name
        if not src.is_file():
            raise RuntimeError(f"PaddleSlim did not write {src} (found: {sorted(p.name for p in staging.iterdir())})")
        src.replace(out_dir / name)
        files.append(out_dir / name)
    shutil.rmtree(staging)
    artifact = ExportedArtifact(format=FORMAT, files=files, entry=files[0])
    qm = load_quantized(artifact, threads)
    qm.info["framework_warnings"] = caught
    return qm


def load_quantized(artifact: ExportedArtifact, threads: int) -> QuantizedModel:
    return QuantizedModel(artifact=artifact, predict=load_predictor(artifact, threads, int8=True),
                          info={"runtime": RUNTIME, "engine": "paddleslim"})

def export_quantized_onnx(qm: QuantizedModel, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
    """The int8 inference model through paddle2onnx 1.3, which writes PaddleSlim's quantize/dequantize_linear
    ops (onnx_format=True) as ONNX QuantizeLinear/DequantizeLinear pairs (QDQ) for ONNX Runtime."""
    onnx = export_onnx(qm.artifact, out_dir)
    return dataclasses.replace(onnx, format=onnx.format.replace("ONNX", "ONNX QDQ", 1) + ", from the int8 model")


class Quantization:
    """backends.base.Quantization on Paddle: PaddleSlim's PTQ and QAT, Paddle Inference int8 models (no backend state needed)."""
    quantization_lowering = staticmethod(lowering)
    quantize_static = staticmethod(quantize_static)
    quantize_dynamic = staticmethod(quantize_dynamic)
    prepare_qat = staticmethod(prepare_qat)
    freeze_qat_statistics = staticmethod(freeze_qat_statistics)
    convert_qat = staticmethod(convert_qat)
    load_quantized = staticmethod(load_quantized)
    export_quantized_onnx = staticmethod(export_quantized_onnx)
