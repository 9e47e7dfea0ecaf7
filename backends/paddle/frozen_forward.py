"""A frozen teacher's forward on Paddle Inference (AnalysisPredictor, oneDNN, IR optimisation), built in memory.

Why: a distilling teacher only runs forward, in eval mode, on weights that do not change within the stage, which
is what Paddle's inference engine is for. Its IR passes fold batch norm into the convolutions and fuse the
activations and residual adds; a to_static program with oneDNN convolutions (the default before) runs every
one of those ops on its own. ResNet50 teacher, batch 64, 32 px, 2 threads, logits and three tapped feature
maps: 0.09 s per forward against that program's 0.20 s on a 2-core AMD EPYC Zen 4
(benchmarks/paddle_teacher_forward.py).

The traced program and a copy of the weights are serialised to bytes and handed over with
Config.set_model_buffer, so nothing is written to disk. The predictor computes with the weights as they were
at its first call; `changed()` says whether the teacher's have changed since (Distiller.close refuses that).
"""
from __future__ import annotations

import hashlib

import numpy as np
import paddle
from paddle import inference, nn
from paddle.base.dygraph.base import switch_to_static_graph
from paddle.static import InputSpec

from backends.paddle.measure import cpu_config
from backends.paddle.programs import restore_sublayer_forwards

RUNTIME = "Paddle Inference (AnalysisPredictor, oneDNN, IR optim on), built in memory from a to_static trace"


def weights_digest(model: nn.Layer) -> str:
    """A digest of every parameter and buffer value (ResNet50: 94 MB, ~0.1 s): what the predictor copied."""
    digest = hashlib.blake2b(digest_size=16)
    for _, tensor in sorted(model.state_dict().items()):
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _serialise(concrete_program) -> tuple[bytes, bytes]:
    """The traced program pruned to its inputs and outputs, and its weights, as Paddle's inference files hold
    them (paddle.jit.save's steps, to bytes instead of files)."""
    scope = paddle.static.Scope()
    for param in concrete_program.parameters:  # the dygraph tensors, shared into a scope the serialiser reads
        scope.var(param.name).get_tensor()._share_data_with(param.value().get_tensor())
    # The serialiser names the output ops it appends from the process's name generator; a fresh one keeps a
    # later export of the same model byte for byte what it is in a run that never distilled (a resumed one).
    with paddle.utils.unique_name.guard():
        return _serialise_static(concrete_program, scope)


@switch_to_static_graph
def _serialise_static(concrete_program, scope: paddle.static.Scope) -> tuple[bytes, bytes]:
    program = concrete_program.main_program.clone()
    block = program.global_block()
    feeds = [block.var(v.name) for v in concrete_program.inputs if getattr(v, "name", None) in block.vars]
    fetches = [block.var(v.name) for v in concrete_program.outputs]
    with paddle.static.scope_guard(scope):
        executor = paddle.static.Executor(paddle.CPUPlace())
        return (paddle.static.serialize_program(feeds, fetches, program=program),
                paddle.static.serialize_persistables(feeds, fetches, executor, program=program))


class InferenceForward:
    """Calls `layer` (a frozen model's forward, returning a tensor or a list of them) through a Paddle Inference
    predictor, traced and built on the first call for inputs of that call's shape but any batch size. Returns
    tensors without gradients, as `layer` would under paddle.no_grad()."""

    def __init__(self, layer: nn.Layer, model: nn.Layer, threads: int):
        self.layer, self.model, self.threads = layer, model, threads
        self.predictor: inference.Predictor | None = None
        self.input: inference.Tensor | None = None  # the predictor's handles, looked up once
        self.outputs: list[inference.Tensor] = []
        self.digest = ""
        self.returns_list = False

    def _build(self, x: paddle.Tensor) -> None:
        self.layer.training = False
        spec = [InputSpec([None, *x.shape[1:]], x.dtype, "x")]
        static = paddle.jit.to_static(self.layer.forward, input_spec=spec, full_graph=True)
        concrete = static.concrete_program
        restore_sublayer_forwards(self.layer)  # tracing converted them in place (programs.py)
        self.returns_list = isinstance(concrete.outputs, (list, tuple)) and len(concrete.outputs) > 1
        program, weights = _serialise(concrete)
        config = inference.Config()
        config.set_model_buffer(program, len(program), weights, len(weights))
        self.predictor = inference.create_predictor(cpu_config(config, self.threads))
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.outputs = [self.predictor.get_output_handle(name) for name in self.predictor.get_output_names()]
        self.digest = weights_digest(self.model)

    def __call__(self, x: paddle.Tensor) -> paddle.Tensor | list[paddle.Tensor]:
        if self.predictor is None:
            self._build(x)
        self.input.reshape(list(x.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(x.numpy()))
        self.predictor.run()
        # A predictor's run leaves the process's CPU math library on another thread setting: dygraph's next
        # results differed in the last bit (the same as on 1 thread), so a run that distilled in this process
        # and one resumed after it evaluated the same weights differently. Put back what the run configured.
        paddle.base.core.set_num_threads(self.threads)
        outputs = [paddle.to_tensor(handle.copy_to_cpu()) for handle in self.outputs]
        return outputs if self.returns_list else outputs[0]

    def changed(self) -> bool:
        """Whether the model's weights differ from the copy the predictor computes with."""
        return self.predictor is not None and weights_digest(self.model) != self.digest
