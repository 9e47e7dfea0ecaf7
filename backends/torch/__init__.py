"""PyTorch backend: torchvision models, torch optimizers, torch.export artifacts, eager inference."""
from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision

from backends.base import DistillPlan, ExportedArtifact, QuantizedModel
from backends.torch import distill, export, measure, models, prune, quantize, train, weights
from common.errors import SlimbenchError
from common.config import ModelConfig, OptimizerConfig, RuntimeConfig

if TYPE_CHECKING:  # the stage module imports backends.base: a runtime import would be circular
    from common.stages.quantize import QuantizeStage


class TorchBackend:
    name = "torch"

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.runtime = RuntimeConfig()

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "cuda": str(torch.version.cuda), "python": platform.python_version()}

    def configure(self, threads: int, device: str, seed: int, runtime: RuntimeConfig | None = None) -> dict[str, Any]:
        torch.set_num_threads(threads)
        self.runtime = runtime or RuntimeConfig()
        if device == "cuda" and not torch.cuda.is_available():
            raise SlimbenchError("runtime.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        torch.manual_seed(seed)
        info: dict[str, Any] = {"device": str(self.device), "threads": torch.get_num_threads()}
        if use_cuda:
            info["gpu"] = torch.cuda.get_device_name(self.device)
        info["training_options"] = {"amp": self.runtime.amp, "channels_last": self.runtime.channels_last,
                                    "compile": self.runtime.compile, "cpu_tuning": self.runtime.cpu_tuning}
        if self.runtime.cpu_tuning and not use_cuda:
            info["tuning_notes"] = [train.CPU_TUNING_NOTE]
        return info

    def build_model(self, cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
        return models.build_model(cfg, num_classes).to(self.device)

    def state_to_numpy(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        return weights.state_to_numpy(model)

    def load_numpy_state(self, model: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
        weights.load_numpy_state(model, state)

    def read_checkpoint(self, path: Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
        return weights.read_checkpoint(path)

    def write_user_checkpoint(self, model: torch.nn.Module, path: Path) -> None:
        weights.write_user_checkpoint(model, path)

    def predict(self, model: torch.nn.Module | QuantizedModel, x: np.ndarray) -> np.ndarray:
        if isinstance(model, QuantizedModel):
            return model.predict(x)
        model.eval()

        def run() -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

        return quantize.predict_fake_quant(model, run) if getattr(model, "_slimbench_qat", False) else run()

    def predict_batch_statistics(self, model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        """Logits with batch norm on the batch's own statistics (dropout off), on a copy of the model: at
        initialisation eval-mode outputs can be ~1e-10 (running statistics 0/1), these are O(1)."""
        probe = copy.deepcopy(model).to(self.device)
        probe.train()
        for m in probe.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        with torch.no_grad():
            return probe(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def trainer(self, model: torch.nn.Module, opt: OptimizerConfig) -> train.Trainer:
        return train.Trainer(model, opt, self.device, self.runtime)

    def distiller(self, student: torch.nn.Module, teacher: torch.nn.Module, opt: OptimizerConfig,
                  plan: DistillPlan) -> distill.Distiller:
        return distill.Distiller(student, teacher, opt, self.device, plan, self.runtime)

    def feature_shapes(self, model: torch.nn.Module, layers: list[str], x: np.ndarray
                       ) -> dict[str, tuple[tuple[int, ...], int]]:
        return distill.feature_shapes(model, layers, x, self.device)

    def distill_loss(self, plan: DistillPlan, scales: list[float], student_logits: np.ndarray,
                     teacher_logits: np.ndarray, labels: np.ndarray, student_features: dict[str, np.ndarray],
                     teacher_features: dict[str, np.ndarray]) -> float:
        return distill.distill_loss_value(plan, scales, student_logits, teacher_logits, labels, student_features,
                                          teacher_features)

    def recalibrate_bn(self, model: torch.nn.Module, batches) -> None:
        train.recalibrate_bn(model, batches, self.device)

    def save_checkpoint(self, model: torch.nn.Module, path: Path) -> None:
        """Canonical (effective) state plus pruning masks: loads into a freshly built model."""
        data = {"state": {k: torch.from_numpy(v) for k, v in weights.state_to_numpy(model).items()},
                "masks": {k: torch.from_numpy(v) for k, v in prune.get_masks(model).items()}}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(data, tmp)
        tmp.replace(path)

    def load_checkpoint(self, model: torch.nn.Module, path: Path) -> None:
        data = torch.load(path, map_location="cpu", weights_only=True)
        weights.load_numpy_state(model, {k: v.numpy() for k, v in data["state"].items()})
        if data["masks"]:
            prune.set_masks(model, {k: v.numpy() for k, v in data["masks"].items()})

    def prunable(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        return prune.prunable(model)

    def head_name(self, model: torch.nn.Module) -> str:
        return prune.head_name(model)

    def set_masks(self, model: torch.nn.Module, masks: dict[str, np.ndarray]) -> None:
        prune.set_masks(model, masks)

    def get_masks(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        return prune.get_masks(model)

    def pruning_lowering(self, method: str = "magnitude", criterion: str = "l1") -> str:
        return prune.lowering(method, criterion)

    def prune_filters(self, model: torch.nn.Module, criterion: str, ratio: float | None, layer_ratios: dict[str, float],
                      skip: list[str], example_shape: tuple[int, ...]) -> dict[str, list[int]]:
        return prune.prune_filters(model, criterion, ratio, layer_ratios, skip, example_shape)

    def checkpoint_suffix(self) -> str:
        return ".pt"

    def quantization_lowering(self, cfg: QuantizeStage) -> dict[str, str]:
        return quantize.ENGINE.lowering(cfg)

    def quantize_static(self, model: torch.nn.Module, cfg: QuantizeStage, calibration: list[np.ndarray],
                        example: np.ndarray, fp32_artifact: ExportedArtifact, out_dir: Path,
                        threads: int) -> QuantizedModel:
        return quantize.quantize_static(model, cfg, calibration, example, fp32_artifact, out_dir, threads)

    def quantize_dynamic(self, model: torch.nn.Module, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                         threads: int) -> QuantizedModel:
        return quantize.quantize_dynamic(model, cfg, example, out_dir, threads)

    def prepare_qat(self, model: torch.nn.Module, cfg: QuantizeStage, example: np.ndarray) -> torch.nn.Module:
        return quantize.prepare_qat(model, cfg, example)

    def convert_qat(self, prepared: torch.nn.Module, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                    threads: int) -> QuantizedModel:
        return quantize.convert_qat(prepared, cfg, example, out_dir, threads)

    def load_quantized(self, artifact: ExportedArtifact, threads: int) -> QuantizedModel:
        return quantize.load_quantized(artifact, threads)

    def export(self, model: torch.nn.Module, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
        return export.export_model(prune.without_reparametrization(model), example, out_dir)

    def load_artifact(self, artifact: ExportedArtifact, threads: int):
        torch.set_num_threads(threads)
        return measure.load_predictor(artifact, self.device)

    def artifact_stats(self, artifact: ExportedArtifact, input_shape: tuple[int, ...]) -> dict[str, Any]:
        return measure.artifact_stats(artifact, input_shape, self.device)

    def runtime_name(self) -> str:
        return measure.RUNTIME + (" on CUDA" if self.device.type == "cuda" else " on CPU")


def create() -> TorchBackend:
    return TorchBackend()
