"""ONNX Runtime, the neutral runtime both frameworks' artifacts are also measured on (issue 14, item 1).

Framework-neutral: each backend converts its own artifact (`Exporting.export_onnx`: torch.onnx.export on
PyTorch, paddle2onnx on PaddlePaddle); this module loads the .onnx file and runs it the same way for both, so a
latency difference between the two ONNX Runtime rows is the model's (its graph as converted), not the runtime's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import SlimbenchError

NAME = "onnxruntime"
# How decision rows, timing checks and progress lines name a figure measured here; the validity checks find an
# ONNX model's rows by it, so it is spelled once.
ON = "on ONNX Runtime"
INSTALL = "pip install -e .[onnx] (make install includes it)"


def require() -> None:
    """ONNX Runtime must be installed when a recipe asks for it; the error says how to get it."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise SlimbenchError(f"export stage runtime 'onnxruntime' needs the onnxruntime package ({e}); "
                             f"install it with `{INSTALL}`, or remove 'onnxruntime' from the stage's runtimes") from e


def runtime_name() -> str:
    import onnxruntime
    return (f"ONNX Runtime {onnxruntime.__version__} (CPUExecutionProvider, graph optimizations all, "
            "threads do not spin)")


def load_predictor(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A session on the CPU with the run's thread count (intra-op; inter-op 1, as the frameworks run)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads sleep between runs instead of spinning: several models are timed in alternation in one
    # process, and a session's spinning pool otherwise takes the cores from whichever model runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]

    return predict
