"""PaddlePaddle backend: paddle.vision models, paddle optimizers, jit.save artifacts, Paddle Inference.

`import zlib` must run before `import paddle`: paddle's bundled zlib otherwise clashes with Python's
zlib module and the first decompression (e.g. inside `import paddleslim`) segfaults.
"""
from __future__ import annotations

import zlib  # noqa: F401  (must precede `import paddle`, see above)
import copy
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import paddle

from backends.capabilities import NOT_APPLIED
from backends.base import DistillPlan, ExportedArtifact, QuantizedModel
from backends.paddle import distill, export, measure, models, programs, prune, quantize, train, weights
from common.errors import SlimbenchError
from common.config import ModelConfig, OptimizerConfig, RuntimeConfig

if TYPE_CHECKING:  # the stage module imports backends.base: a runtime import would be circular
    from common.stages.quantize import QuantizeStage


def _paddleslim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("paddleslim")
    except PackageNotFoundError:
        return "not installed"


class PaddleBackend:
    name = "paddle"

    def __init__(self) -> None:
        self.threads = 1
        self.onednn_depthwise = False

    def versions(self) -> dict[str, str]:
        return {"paddlepaddle": paddle.__version__, "paddleslim": _paddleslim_version(),
                "python": platform.python_version()}

    def configure(self, threads: int, device: str, seed: int, runtime: RuntimeConfig | None = None) -> dict[str, Any]:
        self.threads = threads
        runtime = runtime or RuntimeConfig()
        if device == "cuda" and not paddle.is_compiled_with_cuda():
            raise SlimbenchError("runtime.device is 'cuda' but this paddlepaddle build has no CUDA; "
                                 "use 'auto' or 'cpu', or install paddlepaddle-gpu")
        use_gpu = device == "cuda" or (device == "auto" and paddle.is_compiled_with_cuda()
                                       and paddle.device.cuda.device_count() > 0)
        paddle.set_device("gpu" if use_gpu else "cpu")
        # Paddle's CPU kernels (MKL GEMM, oneDNN) run on 1 thread (FLAGS_paddle_num_threads) unless told.
        paddle.base.core.set_num_threads(threads)
        paddle.seed(seed)
        self.onednn_depthwise = runtime.cpu_tuning and not use_gpu
        # Options declared not applied in backends/capabilities.py: recorded, so the report shows them.
        asked = {k: getattr(runtime, k) for k in NOT_APPLIED["paddle"]}
        info = {"device": paddle.get_device(), "threads": threads,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                "optimizer_notes": ["AdamW runs as Adam(use_multi_tensor=True) with decoupled weight decay "
                                    "(param *= 1 - lr * wd): the same update as paddle.optimizer.AdamW, without "
                                    "the ~1.7x slowdown its per-parameter kernel left on later convolutions on an "
                                    "AMD EPYC CPU (Paddle 2.6)"],
                "training_options": {"amp": "off", "channels_last": False, "compile": False,
                                     "cpu_tuning": runtime.cpu_tuning,
                                     **({"not_applied": asked} if asked != {"amp": "off", "channels_last": False,
                                                                              "compile": False} else {})}}
        if self.onednn_depthwise:
            info["tuning_notes"] = [programs.NOTE]
        mkl = os.environ.get("MKL_DEBUG_CPU_TYPE")
        if mkl is not None:  # read by MKL when Paddle loaded; recorded so the report lists it
            info["mkl_debug_cpu_type"] = mkl
            who = ("set by slimbench on this AMD CPU: Paddle 2.6's MKL 2019 otherwise takes its generic code path; "
                   "ResNet50 training steps 2.1x faster, gradients as exact, inference unchanged "
                   "(benchmarks/paddle_mkl_cpu_type.py)" if os.environ.get("SLIMBENCH_SET_MKL_DEBUG_CPU_TYPE")
                   else "set in the environment by the user")
            info.setdefault("tuning_notes", []).append(f"MKL_DEBUG_CPU_TYPE={mkl} ({who})")
        return info

    def build_model(self, cfg: ModelConfig, num_classes: int) -> paddle.nn.Layer:
        return models.build_model(cfg, num_classes)

    def state_to_numpy(self, model: paddle.nn.Layer) -> dict[str, np.ndarray]:
        return weights.state_to_numpy(model)

    def load_numpy_state(self, model: paddle.nn.Layer, state: dict[str, np.ndarray]) -> None:
        weights.load_numpy_state(model, state)

    def read_checkpoint(self, path: Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
        return weights.read_checkpoint(path, cfg)

    def write_user_checkpoint(self, model: paddle.nn.Layer, path: Path) -> None:
        weights.write_user_checkpoint(model, path)

    def predict(self, model: paddle.nn.Layer | QuantizedModel, x: np.ndarray) -> np.ndarray:
        if isinstance(model, QuantizedModel):
            return model.predict(x)
        model.eval()
        forward = programs.forward_program(model, "predict") if self.onednn_depthwise else None
        with paddle.no_grad():
            return (forward or model)(paddle.to_tensor(x)).numpy().astype(np.float32)

    def predict_batch_statistics(self, model: paddle.nn.Layer, x: np.ndarray) -> np.ndarray:
        """Logits with batch norm on the batch's own statistics (dropout off), on a copy of the model: at
        initialisation eval-mode outputs can be ~1e-10 (running statistics 0/1), these are O(1)."""
        probe = copy.deepcopy(model)
        probe.train()
        for m in probe.sublayers():
            if isinstance(m, paddle.nn.Dropout):
                m.eval()
        with paddle.no_grad():
            return probe(paddle.to_tensor(x)).numpy().astype(np.float32)

    def trainer(self, model: paddle.nn.Layer, opt: OptimizerConfig) -> train.Trainer:
        return train.Trainer(model, opt, self.onednn_depthwise)

    def distiller(self, student: paddle.nn.Layer, teacher: paddle.nn.Layer, opt: OptimizerConfig,
                  plan: DistillPlan) -> distill.Distiller:
        return distill.Distiller(student, teacher, opt, plan, self.onednn_depthwise)

    def feature_shapes(self, model: paddle.nn.Layer, layers: list[str], x: np.ndarray
                       ) -> dict[str, tuple[tuple[int, ...], int]]:
        return distill.feature_shapes(model, layers, x)

    def distill_loss(self, plan: DistillPlan, scales: list[float], student_logits: np.ndarray,
                     teacher_logits: np.ndarray, labels: np.ndarray, student_features: dict[str, np.ndarray],
                     teacher_features: dict[str, np.ndarray]) -> float:
        return distill.distill_loss_value(plan, scales, student_logits, teacher_logits, labels, student_features,
                                          teacher_features)

    def recalibrate_bn(self, model: paddle.nn.Layer, batches) -> None:
        train.recalibrate_bn(model, batches, self.onednn_depthwise)

    def save_checkpoint(self, model: paddle.nn.Layer, path: Path) -> None:
        """State plus pruning masks: loads into a freshly built model."""
        tmp = path.with_name(path.name + ".tmp")
        paddle.save({"state": model.state_dict(), "masks": prune.get_masks(model)}, str(tmp))
        tmp.replace(path)

    def load_checkpoint(self, model: paddle.nn.Layer, path: Path) -> None:
        data = paddle.load(str(path))
        state = data["state"]
        model.set_state_dict(state)
        if data["masks"]:
            prune.set_masks(model, {k: np.asarray(v) for k, v in data["masks"].items()})
        own = model.state_dict()
        for k, v in state.items():  # set_state_dict only warns on a mismatch: check it loaded
            if k not in own or not np.array_equal(own[k].numpy(), np.asarray(v)):
                raise ValueError(f"checkpoint {path}: tensor {k} did not load into the model")

    def checkpoint_suffix(self) -> str:
        return ".pdparams"

    def quantization_lowering(self, cfg: QuantizeStage) -> dict[str, str]:
        return quantize.lowering(cfg)

    def quantize_static(self, model: paddle.nn.Layer, cfg: QuantizeStage, calibration: list[np.ndarray],
                        example: np.ndarray, fp32_artifact: ExportedArtifact, out_dir: Path,
                        threads: int) -> QuantizedModel:
        return quantize.quantize_static(model, cfg, calibration, example, fp32_artifact, out_dir, threads)

    def quantize_dynamic(self, model: paddle.nn.Layer, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                         threads: int) -> QuantizedModel:
        return quantize.quantize_dynamic(model, cfg, example, out_dir, threads)

    def prepare_qat(self, model: paddle.nn.Layer, cfg: QuantizeStage, example: np.ndarray) -> paddle.nn.Layer:
        return quantize.prepare_qat(model, cfg, example)

    def convert_qat(self, prepared: paddle.nn.Layer, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                    threads: int) -> QuantizedModel:
        return quantize.convert_qat(prepared, cfg, example, out_dir, threads)

    def load_quantized(self, artifact: ExportedArtifact, threads: int) -> QuantizedModel:
        return quantize.load_quantized(artifact, threads)

    def prunable(self, model: paddle.nn.Layer) -> dict[str, np.ndarray]:
        return prune.prunable(model)

    def head_name(self, model: paddle.nn.Layer) -> str:
        return prune.head_name(model)

    def set_masks(self, model: paddle.nn.Layer, masks: dict[str, np.ndarray]) -> None:
        prune.set_masks(model, masks)

    def get_masks(self, model: paddle.nn.Layer) -> dict[str, np.ndarray]:
        return prune.get_masks(model)

    def pruning_lowering(self, method: str = "magnitude", criterion: str = "l1") -> str:
        return prune.lowering(method, criterion)

    def prune_filters(self, model: paddle.nn.Layer, criterion: str, ratio: float | None, layer_ratios: dict[str, float],
                      skip: list[str], example_shape: tuple[int, ...]) -> dict[str, list[int]]:
        return prune.prune_filters(model, criterion, ratio, layer_ratios, skip, example_shape)

    def export(self, model: paddle.nn.Layer, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
        return export.export_model(model, example, out_dir)

    def load_artifact(self, artifact: ExportedArtifact, threads: int):
        return measure.load_predictor(artifact, threads)

    def artifact_stats(self, artifact: ExportedArtifact, input_shape: tuple[int, ...]) -> dict[str, Any]:
        return measure.artifact_stats(artifact, input_shape)

    def runtime_name(self) -> str:
        return measure.RUNTIME + " on CPU"


def create() -> PaddleBackend:
    return PaddleBackend()
