"""Stage executors: the loops every backend shares.

Epochs, steps, learning rates, batches and metrics are all decided here, so the two backends follow
the same schedule on the same data; a backend only performs one optimizer step or one inference.
New stage types (prune, quantize) register an executor with `register_executor`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from backends.base import Backend, StepRunner
from common.data import BatchStream
from common.errors import TrainingDiverged
from common.metrics import classification_metrics, latency_summary, logit_difference, time_calls
from common.progress import Progress
from common.recipe import (DistillStage, EvaluateStage, ExportStage, ModelConfig, OptimizerConfig, Recipe,
                           ScheduleConfig, Stage, TrainStage)
from common.schedule import lr_at


@dataclass
class RunContext:
    backend: Backend
    recipe: Recipe
    stream: BatchStream
    num_classes: int
    out_dir: Path
    threads: int
    progress: Progress
    models: dict[str, Any] = field(default_factory=dict)
    model_cfgs: dict[str, ModelConfig] = field(default_factory=dict)

    def stage_path(self, stage: Stage) -> str:
        """Key path of a stage in the recipe, for error messages."""
        i = next(i for i, s in enumerate(self.recipe.stages) if s.name == stage.name)
        return f"{self.recipe.source}: stages[{i}].{stage.type}"

    def output_model(self, src: str, dst: str) -> Any:
        """The model a stage will modify: the source itself, or a copy when the output is a new slot."""
        if dst == src:
            return self.models[src]
        clone = self.backend.build_model(self.model_cfgs[src], self.num_classes)
        self.backend.load_numpy_state(clone, self.backend.state_to_numpy(self.models[src]))
        self.models[dst], self.model_cfgs[dst] = clone, self.model_cfgs[src]
        return clone


def evaluate_logits(backend: Backend, model: Any, stream: BatchStream) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = [], []
    for x, y in stream.val_batches():
        logits.append(backend.predict(model, x))
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def recalibrate_bn(ctx: RunContext, model: Any, batches: int, epoch: int) -> None:
    """Precise BN: replace the EMA running statistics by their average over `batches` training batches.

    With few steps and fast-moving weights (MobileNetV2 on small data) the EMA statistics lag so far
    that eval-mode accuracy sits at chance while train-mode accuracy is high. The batches come from
    the shared stream (epoch index `epoch`), so both backends recalibrate on identical data.
    """
    stream = (x for i, (x, _) in enumerate(ctx.stream.train_epoch(epoch)) if i < batches)
    ctx.backend.recalibrate_bn(model, stream)


def fit(ctx: RunContext, stage: Stage, runner: StepRunner, model: Any, epochs: int, opt: OptimizerConfig,
        schedule: ScheduleConfig, bn_batches: int = 0) -> dict[str, Any]:
    """The shared training loop: per-step learning rate from common/schedule, per-epoch validation."""
    spe = ctx.stream.steps_per_epoch
    total = epochs * spe
    history: list[dict[str, float]] = []
    train_time = 0.0
    ctx.progress.start_loop(stage.name, epochs, spe)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = []
        for step, (x, y) in enumerate(ctx.stream.train_epoch(epoch)):
            global_step = epoch * spe + step
            lr = lr_at(global_step, total, spe, opt.lr, schedule)
            loss = runner.step(x, y, lr)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"stage '{stage.name}' epoch {epoch + 1} step {step + 1}: loss is {loss}; "
                                       f"the run stops here. Lower {ctx.stage_path(stage)}.optimizer.lr "
                                       f"(now {opt.lr}) or add schedule.warmup_epochs")
            losses.append(loss)
            ctx.progress.step(epoch, step, loss, lr)
        if bn_batches and epoch == epochs - 1:
            recalibrate_bn(ctx, model, bn_batches, epochs)
            ctx.progress.say(f"{stage.name}: batch-norm statistics recomputed over {bn_batches} training batches")
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        logits, labels = evaluate_logits(ctx.backend, model, ctx.stream)
        val = classification_metrics(logits, labels)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "last_lr": lr,
                        "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
                        "epoch_time_s": epoch_time})
        ctx.progress.epoch_done(epoch, float(np.mean(losses)), val, epoch_time)
    return {"epochs": epochs, "steps": total, "train_time_s": train_time,
            "time_per_step_s": train_time / max(total, 1), "bn_recalibration_batches": bn_batches,
            "history": history,
            "final": history[-1] if history else {}}


def run_train(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    cfg: TrainStage = stage.config
    out = cfg.output or cfg.model
    model = ctx.output_model(cfg.model, out)
    runner = ctx.backend.trainer(model, cfg.optimizer)
    return {"model": out, **fit(ctx, stage, runner, model, cfg.epochs, cfg.optimizer, cfg.schedule,
                                 cfg.bn_recalibration_batches)}


def run_distill(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    cfg: DistillStage = stage.config
    out = cfg.output or cfg.student
    student = ctx.output_model(cfg.student, out)
    runner = ctx.backend.distiller(student, ctx.models[cfg.teacher], cfg.optimizer, cfg.temperature, cfg.alpha)
    result = fit(ctx, stage, runner, student, cfg.epochs, cfg.optimizer, cfg.schedule, cfg.bn_recalibration_batches)
    return {"model": out, "teacher": cfg.teacher, "method": cfg.method, "temperature": cfg.temperature,
            "alpha": cfg.alpha, **result}


def run_evaluate(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    cfg: EvaluateStage = stage.config
    metrics = {}
    pred_dir = ctx.out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for slot in cfg.models:
        t0 = time.perf_counter()
        logits, labels = evaluate_logits(ctx.backend, ctx.models[slot], ctx.stream)
        m = classification_metrics(logits, labels)
        m["eval_time_s"] = time.perf_counter() - t0
        path = pred_dir / f"{stage.name}__{slot}.npz"
        np.savez_compressed(path, pred=logits.argmax(1).astype(np.int16), label=labels.astype(np.int16),
                            logits=logits.astype(np.float16))
        m["predictions"] = str(path.relative_to(ctx.out_dir))
        metrics[slot] = m
        ctx.progress.say(f"{stage.name}: {slot} top1 {m['top1'] * 100:.2f}%  top5 {m['top5'] * 100:.2f}%  "
                         f"loss {m['loss']:.4f}")
    return {"models": metrics}


def run_export(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    """Export each model and measure the artifact itself: size on disk, params/MACs, accuracy, latency."""
    cfg: ExportStage = stage.config
    size = ctx.recipe.data.image_size
    out = {}
    for slot in cfg.models:
        model = ctx.models[slot]
        artifact = ctx.backend.export(model, ctx.stream.val_images(2), ctx.out_dir / "artifacts" / slot)
        stats = ctx.backend.artifact_stats(artifact, (1, 3, size, size))
        predict = ctx.backend.load_artifact(artifact, ctx.threads)
        probe = ctx.stream.val_images(ctx.recipe.parity.probe_batch)
        agreement = logit_difference(ctx.backend.predict(model, probe), predict(probe))
        logits, labels = [], []
        for x, y in ctx.stream.val_batches():
            logits.append(predict(x))
            labels.append(y)
        acc = classification_metrics(np.concatenate(logits), np.concatenate(labels))
        latency = {}
        for bs in cfg.measure.batch_sizes:
            x = ctx.stream.val_images(bs)
            ctx.progress.say(f"{stage.name}: {slot} latency at batch {bs} ({cfg.measure.warmup} warm-up, "
                             f"{cfg.measure.repeats} timed)")
            latency[str(bs)] = latency_summary(time_calls(lambda: predict(x), cfg.measure.warmup,
                                                          cfg.measure.repeats))
        rec = {"format": artifact.format, "files": [str(f.relative_to(ctx.out_dir)) for f in artifact.files],
               "size_bytes": artifact.size_bytes, "size_mb": artifact.size_bytes / 1e6, **stats,
               "runtime": ctx.backend.runtime_name(), "threads": ctx.threads,
               "artifact_vs_model": agreement, "artifact_top1": acc["top1"], "latency": latency}
        out[slot] = rec
        b1 = latency[str(cfg.measure.batch_sizes[0])]
        ctx.progress.say(f"{stage.name}: {slot} {rec['size_mb']:.2f} MB, {stats['macs'] / 1e6:.1f} MMACs, "
                         f"artifact top1 {acc['top1'] * 100:.2f}%, batch {cfg.measure.batch_sizes[0]} "
                         f"p50 {b1['p50_ms']:.2f} ms")
    return {"models": out}


EXECUTORS: dict[str, Callable[[RunContext, Stage], dict[str, Any]]] = {}


def register_executor(stage_type: str, fn: Callable[[RunContext, Stage], dict[str, Any]]) -> None:
    EXECUTORS[stage_type] = fn


for _t, _fn in (("train", run_train), ("distill", run_distill), ("evaluate", run_evaluate), ("export", run_export)):
    register_executor(_t, _fn)
