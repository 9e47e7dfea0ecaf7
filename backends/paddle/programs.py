"""Static programs whose depthwise convolutions run on Paddle's oneDNN kernels (runtime.cpu_tuning).

Why: Paddle 2.6 dygraph never uses oneDNN on the CPU (ONEDNN_VERBOSE shows no primitive, even with
FLAGS_use_mkldnn=1), and its native depthwise-convolution kernel is a single-threaded loop of per-sample,
per-channel GEMMs: 92% of a MobileNetV2 training step. FLAGS_use_mkldnn=1 under paddle.jit.to_static moves every op to oneDNN,
whose conv2d weight gradients are wrong in Paddle 2.6 (relative error ~1.4; ResNet50 aborts), so only the
depthwise ops are switched, through the `use_mkldnn` op attribute that Paddle's own static programs use. The
parameters stay the dygraph model's: the optimizer, masks, checkpoints and export see them as usual.

In an eval-mode program those ops also get is_test=False. Why: with is_test=True (what to_static's inference
clone sets) oneDNN keeps a reordered copy of each filter between runs, keyed by variable name, and in Paddle 2.6
a later run sometimes computed with a copy taken before an optimizer step: per-epoch validation of a MobileNetV2
student fell to 68.5% top-1 where dygraph scored the same weights at 95%+ (issue 18). With is_test=False the
filters are reordered on every run, as in a training program (61k floats for MobileNetV2). Before this,
evaluation programs were traced anew whenever the filters changed, and Paddle kept every traced program's
executor and oneDNN state: a Paddle worker grew ~350 MB per validated MobileNetV2 epoch (22.7 GB at the end of
kd_methods' seed 2).
Gradients are checked against float64 in tests/integration/test_paddle_training_program.py; speed and
gradient error per configuration in benchmarks/paddle_cpu_training.py.
"""
from __future__ import annotations

import paddle
from paddle import nn
from paddle.static import InputSpec

from common.pruning import is_depthwise

ONEDNN_OPS = ("depthwise_conv2d",)
NOTE = ("models with depthwise convolutions train, predict and recalibrate batch norm through paddle.jit.to_static "
        "programs whose depthwise convolutions run on Paddle's oneDNN kernels (the op's use_mkldnn attribute); "
        "dygraph runs them as a single-threaded loop of per-sample, per-channel GEMMs (MobileNetV2 training steps "
        "8x slower, evaluation 9x); a distilling teacher's forward runs on a Paddle Inference predictor (oneDNN, IR "
        "optimisation) built in memory (ResNet50 5x faster than dygraph's im2col + MKL GEMM, "
        "benchmarks/paddle_teacher_forward.py)")


def depthwise_conv_count(model: nn.Layer) -> int:
    """Convolutions with one input channel per group: what Paddle's native CPU kernel is slowest at."""
    return sum(1 for m in model.sublayers() if getattr(m, "_groups", 1) > 1
               and getattr(m, "weight", None) is not None and is_depthwise(tuple(m.weight.shape)))


class OnednnDepthwiseProgram:
    """Calls a Layer as a to_static program (one per input signature and train/eval mode), with the depthwise
    convolution ops switched to oneDNN before each program first runs.

    `onednn_ops` and `native_grad_ops` exist for benchmarks/paddle_cpu_training.py's trials (issue 20, item 2):
    a grad op inherits its forward op's use_mkldnn when Paddle appends the backward, so `native_grad_ops` switches
    those back to the native kernels in the training program (e.g. conv2d forward on oneDNN, conv2d_grad native,
    whose oneDNN weight gradients are wrong). The defaults (ONEDNN_OPS, read when a program is first built, and no
    native grad ops) are what slimbench trains with."""

    def __init__(self, layer: nn.Layer, mode_of: nn.Layer | None = None, onednn_ops: tuple[str, ...] | None = None,
                 native_grad_ops: tuple[str, ...] = ()):
        self.layer, self.mode_of = layer, mode_of  # mode_of: whose train/eval mode picks the program per call
        self.onednn_op_types, self.native_grad_ops = onednn_ops, native_grad_ops
        self.static: paddle.jit.dy2static.program_translator.StaticFunction | None = None
        self.onednn_ops = 0  # switched in the latest program
        self.native_grads = 0  # grad ops switched back to native kernels in the latest training program

    def retrace(self) -> None:
        """Forget the traced programs: a program bakes in each sublayer's train/eval mode when traced (only the
        top layer's flag picks one), so a change of a sublayer's mode (QAT freezing its batch norm and ranges)
        needs new ones. Clears to_static's program cache (private in Paddle 2.6, pinned)."""
        if self.static is not None:
            self.static._program_cache.clear()

    def __call__(self, *inputs: paddle.Tensor) -> paddle.Tensor:
        if self.mode_of is not None:
            self.layer.training = self.mode_of.training  # to_static keys its programs on the layer's own flag
        if self.static is None:
            specs = [InputSpec([None, *t.shape[1:]], t.dtype) for t in inputs]  # any batch size, one program
            self.static = paddle.jit.to_static(self.layer, input_spec=specs, full_graph=True).forward
        # The program this call will run: to_static keys them on the mode too, and defaults is_train to True.
        _, program = self.static.get_concrete_program(*inputs, is_train=self.layer.training)
        if not getattr(program, "_slimbench_onednn", False):
            types = ONEDNN_OPS if self.onednn_op_types is None else self.onednn_op_types  # the module's, when run
            ops = [op for op in program._origin_main_program.global_block().ops if op.type in types]
            for op in ops:
                op._set_attr("use_mkldnn", True)
            if self.native_grad_ops and self.layer.training:
                # builds the training program now (forward with the attributes above, then its backward), before
                # its forward/backward split is derived from it on the first call
                grads = [op for op in program.train_program.global_block().ops if op.type in self.native_grad_ops]
                for op in grads:
                    op._set_attr("use_mkldnn", False)
                self.native_grads = len(grads)
            if not self.layer.training:  # the inference clone, made now, from the attributes above
                for op in program.infer_program.global_block().ops:
                    if op.type in types:
                        op._set_attr("is_test", False)  # filters re-read on every run (module docstring)
            program._slimbench_onednn = True
            self.onednn_ops = len(ops)
            restore_sublayer_forwards(self.layer)
        return self.static(*inputs)


def restore_sublayer_forwards(layer: nn.Layer) -> None:
    """Tracing a program converts, in place, the forward of every sublayer defined outside Paddle that it calls
    (paddle.vision's models are left alone; slimbench's tiny_cnn is not), and paddle.jit.save of that model then
    fails on the converted method ("forward() takes 2 positional arguments but 3 were given"). Once a program is
    traced it no longer needs them: put the originals back, as Paddle's own StaticFunction.rollback does."""
    for sub in layer.sublayers():
        for name, func in sub._original_funcs.items():
            setattr(sub, name, func.__get__(sub))


class ForwardOnly(nn.Layer):
    """The model's forward alone, wrapped so that to_static leaves the model's own forward (and export) alone."""

    def __init__(self, model: nn.Layer):
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.model(x)


def _signature(model: nn.Layer) -> tuple:
    """Which parameter tensors, of which shapes: pruning and QAT change it, and a traced program is then stale."""
    return tuple((name, id(p), tuple(p.shape)) for name, p in model.named_parameters())


def forward_program(model: nn.Layer, purpose: str) -> OnednnDepthwiseProgram | None:
    """A cached program of the model's forward for `purpose` (each traces its own: the batch-norm momentum of a
    training-mode program is fixed when traced), rebuilt when the model's parameter tensors or their shapes change
    (pruning, QAT); None without depthwise convolutions. Changes of the values in place (optimizer steps,
    set_value) need no rebuild, in eval mode too (module docstring)."""
    if not depthwise_conv_count(model):
        return None
    cache: dict = model.__dict__.setdefault("_slimbench_programs", {})
    signature = _signature(model)
    if purpose not in cache or cache[purpose][0] != signature:
        cache[purpose] = (signature, OnednnDepthwiseProgram(ForwardOnly(model), mode_of=model))
    return cache[purpose][1]
