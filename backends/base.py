"""The Backend protocol every adapter implements, and the loader that imports one by name.

The stage loops (epochs, steps, learning rates, data, metrics) live in common/stages/; a backend supplies the
framework-specific pieces, one small protocol per concern (setup, models, weights, training, distillation,
pruning, quantization, export, runtimes). Each backend module implements its concern as a class named after the
protocol, and the backend package composes them: no facade of one-line delegations.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import numpy as np

from common.errors import BackendUnavailable, UnsupportedStage
from common.config import ModelConfig, OptimizerConfig, RuntimeConfig

if TYPE_CHECKING:  # the stage module imports backends.base: a runtime import would be circular
    from common.stages.quantize import QuantizeStage

__all__ = ["Backend", "CONCERNS", "DeviceSetup", "Models", "Weights", "Training", "Distillation", "Pruning",
           "Quantization", "Exporting", "Runtimes", "StepRunner", "ExportedArtifact", "QuantizedModel", "DistillTerm",
           "DistillPlan", "load_backend", "UnsupportedStage"]


class StepRunner(Protocol):
    """One optimizer step on a numpy batch at a learning rate computed by common/schedule.

    A runner may also define `normalize_on_device(mean, std) -> bool`: when it returns True, `step` receives
    the uint8 images and normalizes them on its device as ((x / 255) - mean) / std in float32, the same IEEE
    operations in the same order as BatchStream.normalize, so the values stay bit-identical (a GPU then copies
    a quarter of the bytes; measured in benchmarks/README.md)."""

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float: ...


@dataclass(frozen=True)
class DistillTerm:
    """One term of a distillation loss as a backend computes it; common/stages/distill.py plans it from the
    recipe (kinds, parameters, layers resolved to the backend's own module names, adapters' initial weights)."""
    kind: str  # kd | ce | hard_label | feature | attention | dkd
    params: dict[str, Any] = field(default_factory=dict)  # temperature, alpha, beta, distance, p
    pairs: tuple[tuple[str, str], ...] = ()  # (teacher layer, student layer), the backend's module names
    # Per pair: the initial weight (teacher channels, student channels, 1, 1) of a 1x1 conv + BN adapter on the
    # student's feature, the same array on every backend; None: no adapter.
    adapters: tuple[np.ndarray | None, ...] = ()


@dataclass(frozen=True)
class DistillPlan:
    """The loss a distiller minimises: sum of scale_i * term_i, the scales given per epoch (DKD's warm-up)."""
    terms: tuple[DistillTerm, ...]

    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(t for term in self.terms for t, _ in term.pairs))

    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(s for term in self.terms for _, s in term.pairs))


@dataclass
class ExportedArtifact:
    """The deployable files of one model; `files` are what a user ships, `size_bytes` their total on disk."""
    format: str
    files: list[Path]
    entry: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass
class QuantizedModel:
    """An int8 model as deployed: its exported artifact and a predictor on the int8 runtime.

    Both frameworks' int8 paths end in a file (a dygraph model cannot even be called after PaddleSlim
    saves it), so an int8 slot is its artifact; `predict` is what `evaluate` and the measurements call.
    """
    artifact: ExportedArtifact
    predict: Callable[[np.ndarray], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    # The framework's in-memory int8 model, where a converter needs it rather than the file (torch's ONNX
    # exporter cannot read a frozen int8 TorchScript file); None once reopened from the file.
    module: Any = None


class DeviceSetup(Protocol):
    """Who the backend is and how it is set up for a run (`backends/<name>/device.py`)."""
    name: str

    def versions(self) -> dict[str, str]: ...

    def configure(self, threads: int, device: str, seed: int, runtime: RuntimeConfig | None = None) -> dict[str, Any]:
        """Fix threads, pick the device, seed the framework RNG, take the training options (amp,
        channels_last, compile) it supports; return what was chosen and applied (recorded)."""


class Models(Protocol):
    """Building a model slot and running it in the framework (`backends/<name>/models.py`)."""

    def build_model(self, cfg: ModelConfig, num_classes: int) -> Any: ...

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Logits in eval mode, as float32 numpy (an int8 slot predicts on its runtime)."""

    def predict_batch_statistics(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Logits with batch norm on the batch's own statistics and dropout off, leaving the model unchanged
        (the parity check's second probe: eval-mode logits at initialisation can be ~1e-10)."""


class Weights(Protocol):
    """Weights in and out: canonical numpy states, a user's checkpoint, the run's own checkpoints
    (`backends/<name>/weights.py`)."""

    def state_to_numpy(self, model: Any) -> dict[str, np.ndarray]:
        """The model's state under canonical names (torchvision naming and layouts)."""

    def load_numpy_state(self, model: Any, state: dict[str, np.ndarray]) -> None:
        """Load a canonical numpy state; raise if any tensor is missing, extra or mis-shaped."""

    def read_checkpoint(self, path: Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
        """A checkpoint file in this framework's own format, in canonical names and layouts (common/weights.py
        fits it onto a model slot); an unreadable file is a one-line WeightsError naming it."""

    def write_user_checkpoint(self, model: Any, path: Path) -> None:
        """The model's plain state dict in this framework's own format and naming (torchvision `.pth`,
        paddle.vision `.pdparams`): the file a user's code loads, which read_checkpoint reads back."""

    def save_checkpoint(self, model: Any, path: Path) -> None:
        """State plus pruning masks, written atomically: loads into a freshly built model (resume)."""

    def load_checkpoint(self, model: Any, path: Path) -> None: ...

    def checkpoint_suffix(self) -> str: ...


class Training(Protocol):
    """One optimizer step and batch-norm recalibration; the loop is common/stages (`backends/<name>/train.py`)."""

    def trainer(self, model: Any, opt: OptimizerConfig) -> StepRunner: ...

    def recalibrate_bn(self, model: Any, batches: Iterable[np.ndarray]) -> None:
        """Reset BN running stats and set them to the cumulative average over `batches` (train mode, no grad)."""


class Distillation(Protocol):
    """A student step against a frozen teacher, features through the framework's hooks
    (`backends/<name>/distill.py`)."""

    def distiller(self, student: Any, teacher: Any, opt: OptimizerConfig, plan: DistillPlan) -> StepRunner:
        """A student step against the frozen teacher (eval mode) on the plan's loss; the runner also has
        `set_scales(scales)` (one per term, from the next step on) and `close()` (removes its feature hooks)."""

    def feature_shapes(self, model: Any, layers: list[str], x: np.ndarray) -> dict[str, tuple[tuple[int, ...], int]]:
        """Output shape and calls per forward of each named layer (own module names) on input `x`, in eval mode
        through the framework's hook mechanism, leaving the model unchanged."""

    def distill_loss(self, plan: DistillPlan, scales: list[float], student_logits: np.ndarray,
                     teacher_logits: np.ndarray, labels: np.ndarray, student_features: dict[str, np.ndarray],
                     teacher_features: dict[str, np.ndarray]) -> float:
        """The backend's distillation loss on given tensors (adapters in training mode, as in a step): the
        cross-framework loss parity tests compare it."""


class Pruning(Protocol):
    """Masks that follow the shared schedule, and filters removed physically (`backends/<name>/prune.py`)."""

    def prunable(self, model: Any) -> dict[str, np.ndarray]:
        """Conv/Linear weights (masks applied) under canonical names and layouts, in module order."""

    def head_name(self, model: Any) -> str:
        """Canonical name of the classifier head's weight (skipped by default when pruning)."""

    def set_masks(self, model: Any, masks: dict[str, np.ndarray]) -> None:
        """Apply boolean keep-masks (canonical layout); they persist through training until export."""

    def get_masks(self, model: Any) -> dict[str, np.ndarray]: ...

    def pruning_lowering(self, method: str = "magnitude", criterion: str = "l1") -> str:
        """How pruning is realised in this framework (recorded in results)."""

    def prune_filters(self, model: Any, criterion: str, ratio: float | None, layer_ratios: dict[str, float],
                      skip: list[str], example_shape: tuple[int, ...]) -> dict[str, list[int]]:
        """Physically remove output channels (coupled layers follow); return removed indices per conv module."""


class Quantization(Protocol):
    """int8 models that end in a file and run on the int8 runtime (`backends/<name>/quantize.py`)."""

    def quantization_lowering(self, cfg: QuantizeStage) -> dict[str, str]:
        """How this backend realises the quantize stage: tool, engine, weight/activation schemes, calibration."""

    def quantize_static(self, model: Any, cfg: QuantizeStage, calibration: list[np.ndarray], example: np.ndarray,
                        fp32_artifact: ExportedArtifact, out_dir: Path, threads: int) -> QuantizedModel:
        """Post-training static int8: calibrate on the given batches, convert, export, load on the int8 runtime.
        `fp32_artifact` is the exported fp32 file of the same weights (a file-based tool quantizes that file)."""

    def quantize_dynamic(self, model: Any, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                         threads: int) -> QuantizedModel: ...

    def prepare_qat(self, model: Any, cfg: QuantizeStage, example: np.ndarray) -> Any:
        """A trainable fake-quant model (the common loop fine-tunes it with `trainer`)."""

    def freeze_qat_statistics(self, prepared: Any) -> None:
        """Stop the fake-quant ranges and batch-norm statistics of a QAT model from moving for the rest of its
        training (weights still train; recalibration may still recompute the statistics)."""

    def convert_qat(self, prepared: Any, cfg: QuantizeStage, example: np.ndarray, out_dir: Path,
                    threads: int) -> QuantizedModel: ...

    def load_quantized(self, artifact: ExportedArtifact, threads: int) -> QuantizedModel:
        """Reopen an int8 artifact written earlier (resume)."""

    def export_quantized_onnx(self, qm: QuantizedModel, example: np.ndarray, out_dir: Path) -> ExportedArtifact:
        """The int8 model as an ONNX file with QuantizeLinear/DequantizeLinear pairs (QDQ) for ONNX Runtime, by
        the framework's own converter; raises if the converter cannot convert it."""


class Exporting(Protocol):
    """The deployable file of an fp32 model (`backends/<name>/export.py`)."""

    def export(self, model: Any, example: np.ndarray, out_dir: Path) -> ExportedArtifact: ...

    def export_candidates(self, model: Any, artifact: ExportedArtifact, example: np.ndarray,
                          out_dir: Path) -> list[ExportedArtifact]:
        """Other deployment paths of the same model on the framework's own stack (files, or the same files with
        another runtime in `extra["runtime"]`), from which the export stage's `best` runtime is chosen by
        measurement; `load_artifact` and `runtime_name` take each of them. One with `extra["compiles"]` compiles
        per batch size at load and first call (~10 s each on a 2-core CPU): the stage tries it only on request, and
        its predictor may say how long that took (`compile_s`)."""

    def export_onnx(self, model: Any, artifact: ExportedArtifact, example: np.ndarray,
                    out_dir: Path) -> ExportedArtifact:
        """The same model as an ONNX file for ONNX Runtime, by the framework's own converter (from the model or
        from `artifact`, whichever the converter takes); raises if the converter cannot convert it."""


class Runtimes(Protocol):
    """The deployment runtime an artifact is measured on (`backends/<name>/measure.py`)."""

    def load_artifact(self, artifact: ExportedArtifact, threads: int) -> Any:
        """A predictor for the artifact on the deployment runtime: callable numpy -> numpy logits."""

    def artifact_stats(self, artifact: ExportedArtifact, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """Params and MACs/FLOPs counted from the exported artifact itself."""

    def runtime_name(self, artifact: ExportedArtifact | None = None) -> str:
        """The runtime `load_artifact` runs the artifact on (without one: the reference runtime)."""


# Backend module -> the concern it implements, as a class of the same name as the protocol. A backend package
# composes these classes and defines nothing itself (tests/integration/test_backend_conformance.py checks both).
CONCERNS: dict[str, type] = {"device": DeviceSetup, "models": Models, "weights": Weights, "train": Training,
                             "distill": Distillation, "prune": Pruning, "quantize": Quantization,
                             "export": Exporting, "measure": Runtimes}


class Backend(DeviceSetup, Models, Weights, Training, Distillation, Pruning, Quantization, Exporting, Runtimes,
              Protocol):
    """Everything the stages ask of a framework: the union of the concerns above."""


def load_backend(name: str) -> Backend:
    """Import `backends.<name>` (and its framework). Import failures are reported, never swallowed."""
    try:
        module = importlib.import_module(f"backends.{name}")
    except ImportError as e:
        raise BackendUnavailable(f"backend '{name}' cannot be imported: {e}. Install it with "
                                 f"`pip install -e .[{name}]` (or `make run`, which installs both)") from e
    return module.create()
