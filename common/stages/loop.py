"""The loop every backend shares, and the run context the stage executors work in.

Epochs, steps, learning rates, batches and metrics are all decided here, so the two backends follow
the same schedule on the same data; a backend only performs one optimizer step or one inference.
The executors themselves live with their stage type (common/stages/<type>.py).
"""
from __future__ import annotations

import functools
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from backends.base import Backend, ExportedArtifact, StepRunner
from common.config import ModelConfig, OptimizerConfig, ScheduleConfig
from common.data import BatchStream
from common.errors import SlimbenchError, TrainingDiverged
from common.load import LoadMeter
from common.metrics import classification_metrics
from common.prefetch import default_workers, prefetch_map
from common.progress import Progress
from common.schedule import lr_at
from common.stages.registry import Stage

if TYPE_CHECKING:
    from common.recipe.loader import Recipe


@dataclass
class RunContext:
    backend: Backend
    recipe: Recipe
    stream: BatchStream
    num_classes: int
    out_dir: Path
    threads: int
    progress: Progress
    seed: int = 0  # the run's seed: what initialises state common/ creates (distillation adapters)
    models: dict[str, Any] = field(default_factory=dict)
    model_cfgs: dict[str, ModelConfig] = field(default_factory=dict)
    # Structural edits (filter pruning) per slot: re-applied to a fresh model to rebuild its architecture,
    # since a pruned state does not fit a freshly built model in either framework.
    structure: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def stage_key(self, stage: Stage) -> str:
        """Key path of a stage in the recipe (`stages[2].distill`), for error messages."""
        i = next(i for i, s in enumerate(self.recipe.stages) if s.name == stage.name)
        return f"stages[{i}].{stage.type}"

    def stage_path(self, stage: Stage) -> str:
        return f"{self.recipe.source}: {self.stage_key(stage)}"

    def output_model(self, src: str, dst: str) -> Any:
        """The model a stage will modify: the source itself, or a copy when the output is a new slot."""
        if dst == src:
            return self.models[src]
        clone = self.build(src)
        self.backend.load_numpy_state(clone, self.backend.state_to_numpy(self.models[src]))
        masks = self.backend.get_masks(self.models[src])
        if masks:  # a pruned model stays pruned in its copy (fine-tuning keeps the masks)
            self.backend.set_masks(clone, masks)
        self.models[dst], self.model_cfgs[dst] = clone, self.model_cfgs[src]
        self.structure[dst] = list(self.structure.get(src, []))
        return clone

    def build(self, slot: str) -> Any:
        """A fresh model with the slot's architecture, structural edits included (weights not loaded)."""
        model = self.backend.build_model(self.model_cfgs[slot], self.num_classes)
        for edit in self.structure.get(slot, []):
            self.backend.prune_filters(model, **edit)
        return model

    def apply_structure(self, slot: str, edit: dict[str, Any]) -> dict[str, list[int]]:
        removed = self.backend.prune_filters(self.models[slot], **edit)
        self.structure.setdefault(slot, []).append(edit)
        return removed


def compressed_size(files: list[Path]) -> int:
    """Bytes after zlib (level 6): what zeros from unstructured sparsity save in storage or transfer."""
    return sum(len(zlib.compress(f.read_bytes(), 6)) for f in files)


def compiles_per_shape(predict: Callable[[np.ndarray], np.ndarray]) -> bool:
    """Whether a predictor's runtime compiles each new input shape on its first call (PyTorch's Inductor, ~10 s
    per ResNet50 batch size on a 2-core CPU): such a predictor says so by carrying its load-time `compile_s`
    (backends/base.py, export_candidates)."""
    return getattr(predict, "compile_s", None) is not None


def compile_record(predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """What a compiling predictor's load cost, for its record (seconds and the batch sizes compiled then);
    empty for one that does not compile."""
    if not compiles_per_shape(predict):
        return {}
    return {"compile_s": predict.compile_s, "compile_batches": list(predict.compile_batches)}


def predict_validation(predict: Callable[[np.ndarray], np.ndarray], stream: BatchStream,
                       compiled_batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits of `predict` (a model or an artifact's predictor) and the labels, over the validation split.

    A predictor that compiles per input shape is fed every chunk at `compiled_batch` (a batch size its stage
    times anyway), the last chunk padded with copies of its last image whose outputs are dropped: the validation
    split's own chunk sizes (256 and a remainder) would each cost one more compile. Exact for inference, where no
    sample's output depends on another's (eval-mode batch norm, static int8 scales)."""
    fixed = compiled_batch if compiled_batch and compiles_per_shape(predict) else None
    logits, labels = [], []
    for x, y in stream.val_batches(fixed):
        n = len(x)
        if fixed and n < fixed:
            x = np.concatenate([x, np.repeat(x[-1:], fixed - n, axis=0)])
        logits.append(predict(x)[:n])
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_logits(backend: Backend, model: Any, stream: BatchStream) -> tuple[np.ndarray, np.ndarray]:
    return predict_validation(lambda x: backend.predict(model, x), stream)


def recalibrate_bn(ctx: RunContext, model: Any, batches: int) -> None:
    """Precise BN: replace the EMA running statistics by their average over `batches` training batches.

    With few steps and fast-moving weights (MobileNetV2 on small data) the EMA statistics lag so far
    that eval-mode accuracy sits at chance while train-mode accuracy is high. The batches are the shared
    stream's fixed recalibration draw, so both backends recalibrate on identical data, and every epoch on
    the same data (a change between epochs is the weights', not the draw's).
    """
    ctx.backend.recalibrate_bn(model, ctx.stream.recalibration_batches(batches))


def fit(ctx: RunContext, stage: Stage, runner: StepRunner, model: Any, epochs: int, opt: OptimizerConfig,
        schedule: ScheduleConfig, bn_batches: int = 0,
        before_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The shared training loop: per-step learning rate from common/schedule, per-epoch validation.

    `before_step(global_step)` runs before each optimizer step (gradual pruning updates masks there).
    """
    spe = ctx.stream.steps_per_epoch
    total = epochs * spe
    history: list[dict[str, float]] = []
    train_time = 0.0
    ctx.progress.start_loop(stage.name, epochs, spe)
    raw = (ctx.stream.raw_available and hasattr(runner, "normalize_on_device")
           and runner.normalize_on_device(*ctx.stream.normalization))
    materialize = functools.partial(ctx.stream.materialize, normalize=not raw)
    load = LoadMeter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = []
        load.start()
        batches = prefetch_map(materialize, ctx.stream.train_plans(epoch), workers=default_workers())
        for step, (x, y) in enumerate(batches):
            global_step = epoch * spe + step
            lr = lr_at(global_step, total, spe, opt.lr, schedule)
            if before_step is not None:
                before_step(global_step)
            loss = runner.step(x, y, lr)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"stage '{stage.name}' epoch {epoch + 1} step {step + 1}: loss is {loss}; "
                                       f"the run stops here. Lower {ctx.stage_path(stage)}.optimizer.lr "
                                       f"(now {opt.lr}) or add schedule.warmup_epochs")
            losses.append(loss)
            ctx.progress.step(epoch, step, loss, lr)
        epoch_time = time.perf_counter() - t0
        load.stop()
        train_time += epoch_time
        recal_time = 0.0
        if bn_batches:
            # Before every validation, not only the last: each epoch's top-1 is then measured the same way, and
            # the plateau check (common/report/validity.py) compares like with like. Recalibration draws no random
            # numbers and changes no weight; the train-mode forward reads no running statistics, except in torch's
            # QAT conv-BN modules, which scale their weights by them (there the next epoch's steps see them).
            # Timed apart from training, like the validation pass.
            t1 = time.perf_counter()
            recalibrate_bn(ctx, model, bn_batches)
            recal_time = time.perf_counter() - t1
            if epoch == epochs - 1:
                ctx.progress.say(f"{stage.name}: batch-norm statistics recomputed over the same {bn_batches} "
                                 "training batches before each validation")
        logits, labels = evaluate_logits(ctx.backend, model, ctx.stream)
        val = classification_metrics(logits, labels)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "last_lr": lr,
                        "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
                        "epoch_time_s": epoch_time, "bn_recalibration_s": recal_time})
        ctx.progress.epoch_done(epoch, float(np.mean(losses)), val, epoch_time)
    if load.warning(f"stage {stage.name}'s training"):
        ctx.progress.say(load.warning(f"stage {stage.name}'s training"))
    return {"epochs": epochs, "steps": total, "train_time_s": train_time, "load": load.record(),
            "time_per_step_s": train_time / max(total, 1), "bn_recalibration_batches": bn_batches,
            "bn_recalibrated_every_epoch": bool(bn_batches),
            "bn_recalibration_draw": "fixed" if bn_batches else None,
            "history": history,
            "final": history[-1] if history else {}}


def start_from_reference(ctx: RunContext, stage: Stage, model: Any) -> str:
    """Load the reference backend's trained weights of the stage's input slot (same seed, same run)."""
    ref, src = ctx.recipe.reference_framework, stage.config.model
    if ctx.backend.name == ref:
        return f"own trained weights ({ref} is the reference)"
    path = ctx.out_dir.parent.parent / ref / ctx.out_dir.name / "checkpoints" / f"{src}.npz"
    if not path.is_file():
        raise SlimbenchError(f"stage '{stage.name}': start_from_reference needs {path}, the {ref} run's weights of "
                             f"'{src}' (run {ref} in the same run first, e.g. --backend all), or set "
                             f"{ctx.stage_path(stage)}.start_from_reference: false")
    if ctx.backend.get_masks(model) or ctx.structure.get(src):
        raise SlimbenchError(f"stage '{stage.name}': start_from_reference applies to unpruned inputs only; "
                             f"set {ctx.stage_path(stage)}.start_from_reference: false")
    ctx.backend.load_numpy_state(model, dict(np.load(path)))
    ctx.progress.say(f"{stage.name}: starts from {ref}'s trained '{src}' weights ({path.name})")
    return f"{ref}'s trained weights of '{src}'"


def artifact_record(artifact: ExportedArtifact, root: Path) -> dict[str, Any]:
    return {"format": artifact.format, "files": [str(f.relative_to(root)) for f in artifact.files],
            "entry": str(artifact.entry.relative_to(root)), "extra": artifact.extra,
            "size_bytes": artifact.size_bytes, "size_mb": artifact.size_bytes / 1e6}


def artifact_from_record(rec: dict[str, Any], root: Path) -> ExportedArtifact:
    """The artifact a finished stage recorded (resume reopens an int8 one; the paired timing phase re-times any)."""
    return ExportedArtifact(format=rec["format"], files=[root / f for f in rec["files"]], entry=root / rec["entry"],
                            extra=dict(rec.get("extra", {})))


def failure_reason(e: Exception) -> str:
    """The exception's type and first line: what a report can show of why a path is unavailable."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]
