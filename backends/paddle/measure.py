"""Load and measure the exported artifact on Paddle Inference with oneDNN, as a user would deploy it."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import paddle
from paddle import inference

from backends.base import ExportedArtifact
from common.metrics import conv_macs, matmul_macs
from common.pruning import sparsity_of

RUNTIME = "Paddle Inference (AnalysisPredictor, oneDNN, IR optim on)"


NATIVE = "Paddle Inference (AnalysisPredictor, native CPU kernels, IR optim on)"


def cpu_config(config: inference.Config, threads: int, onednn: bool = True) -> inference.Config:
    """A predictor's CPU settings as slimbench deploys them: IR optimisation on, `threads` math-library threads,
    oneDNN unless asked for the native kernels; shared by the measured artifacts and the distilling teacher."""
    config.disable_gpu()
    if onednn:
        config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.switch_ir_optim(True)
    config.disable_glog_info()
    return config


def load_predictor(artifact: ExportedArtifact, threads: int, int8: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A Paddle Inference predictor; `int8` turns on oneDNN's int8 kernels for a quantized model. The artifact's
    extra `runtime: native` (a deployment candidate, export stage's `best`) leaves oneDNN off."""
    params = artifact.entry.with_suffix(".pdiparams")
    config = cpu_config(inference.Config(str(artifact.entry), str(params)), threads,
                        onednn=artifact.extra.get("runtime") != "native")
    if int8:
        config.enable_mkldnn_int8()
    predictor = inference.create_predictor(config)
    inp = predictor.get_input_handle(predictor.get_input_names()[0])
    out = predictor.get_output_handle(predictor.get_output_names()[0])

    def predict(x: np.ndarray) -> np.ndarray:
        inp.reshape(list(x.shape))
        inp.copy_from_cpu(np.ascontiguousarray(x, np.float32))
        predictor.run()
        return out.copy_to_cpu()

    return predict


_CONV_OPS = {"conv2d", "depthwise_conv2d"}
_MATMUL_OPS = {"matmul_v2", "matmul", "mul"}


def artifact_stats(artifact: ExportedArtifact, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Params and MACs read from the saved program: conv and matmul ops, shapes from the program's vars."""
    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        prefix = str(artifact.entry.with_suffix(""))
        program, _, _ = paddle.static.load_inference_model(prefix, exe)
        block = program.global_block()

        def shape(name: str) -> tuple[int, ...]:
            return tuple(input_shape[0] if d == -1 else d for d in block.var(name).shape)

        # A loaded inference program lists no Parameters: count the persistable tensors that ops use as
        # weights (conv filters, BN scale/bias, matmul weights, bias adds), i.e. what torch counts as params.
        weight_inputs = {"conv2d": ["Filter"], "depthwise_conv2d": ["Filter"], "batch_norm": ["Scale", "Bias"],
                         "matmul_v2": ["Y"], "matmul": ["Y"], "mul": ["Y"], "elementwise_add": ["Y"]}
        param_names = {name for op in block.ops for slot in weight_inputs.get(op.type, [])
                       for name in op.input(slot) if block.var(name).persistable}
        params = sum(int(np.prod(block.var(n).shape)) for n in param_names)
        # Conv filters and matmul weights, in op order, read back from the loaded parameters.
        scope = paddle.static.global_scope()
        weight_names = [op.input(s)[0] for op in block.ops for s in ("Filter", "Y")
                        if op.type in _CONV_OPS | _MATMUL_OPS and s in op.input_names
                        and op.input(s) and block.var(op.input(s)[0]).persistable]
        weights = {n: np.array(scope.find_var(n).get_tensor()) for n in dict.fromkeys(weight_names)}
        macs = 0
        for op in block.ops:
            if op.type in _CONV_OPS:
                macs += conv_macs(shape(op.output("Output")[0]), shape(op.input("Filter")[0]))
            elif op.type in _MATMUL_OPS:
                x, y = shape(op.input("X")[0]), shape(op.input("Y")[0])
                if op.type == "matmul_v2" and op.attr("trans_y"):
                    y = y[:-2] + (y[-1], y[-2])
                m = int(np.prod(x[:-1]))
                macs += matmul_macs(m, x[-1], y[-1])
    finally:
        paddle.disable_static()
    return {"params": int(params), "macs": int(macs), "flops": int(2 * macs), "sparsity": sparsity_of(weights),
            "counted_by": "conv2d/depthwise_conv2d/matmul ops of the saved inference program"}


class Runtimes:
    """backends.base.Runtimes on Paddle: Paddle Inference with oneDNN on the CPU."""

    def load_artifact(self, artifact: ExportedArtifact, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        return load_predictor(artifact, threads)

    artifact_stats = staticmethod(artifact_stats)

    def runtime_name(self, artifact: ExportedArtifact | None = None) -> str:
        native = artifact is not None and artifact.extra.get("runtime") == "native"
        return (NATIVE if native else RUNTIME) + " on CPU"
