"""Stage executors: the loops every backend shares.

Epochs, steps, learning rates, batches and metrics are all decided here, so the two backends follow
the same schedule on the same data; a backend only performs one optimizer step or one inference.
New stage types (prune, quantize) register an executor with `register_executor`.
"""
from __future__ import annotations

import functools
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from backends.base import Backend, StepRunner
from common.data import BatchStream
from common.errors import RecipeError, SlimbenchError, TrainingDiverged
from common.metrics import classification_metrics, latency_summary, logit_difference, time_calls
from common.prefetch import default_workers, prefetch_map
from common.progress import Progress
from common.pruning import (agp_sparsity, is_depthwise, magnitude_masks, name_artifact_layers, prune_steps, pruned_layer_sparsity,
                            select_layers, sparsity_of)
from common.recipe import (DistillStage, EvaluateStage, ExportStage, ModelConfig, OptimizerConfig, PruneStage, Recipe,
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


def predict_validation(predict: Callable[[np.ndarray], np.ndarray], stream: BatchStream) -> tuple[np.ndarray, np.ndarray]:
    """Logits of `predict` (a model or an artifact's predictor) and the labels, over the validation split."""
    logits, labels = [], []
    for x, y in stream.val_batches():
        logits.append(predict(x))
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_logits(backend: Backend, model: Any, stream: BatchStream) -> tuple[np.ndarray, np.ndarray]:
    return predict_validation(lambda x: backend.predict(model, x), stream)


def recalibrate_bn(ctx: RunContext, model: Any, batches: int, epoch: int) -> None:
    """Precise BN: replace the EMA running statistics by their average over `batches` training batches.

    With few steps and fast-moving weights (MobileNetV2 on small data) the EMA statistics lag so far
    that eval-mode accuracy sits at chance while train-mode accuracy is high. The batches come from
    the shared stream (epoch index `epoch`), so both backends recalibrate on identical data.
    """
    stream = (x for i, (x, _) in enumerate(ctx.stream.train_epoch(epoch)) if i < batches)
    ctx.backend.recalibrate_bn(model, stream)


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
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = []
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


def run_prune(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    """Magnitude pruning: masks computed in common/pruning, applied by the backend; one-shot or AGP."""
    cfg: PruneStage = stage.config
    out = cfg.output or cfg.model
    model = ctx.output_model(cfg.model, out)
    start = start_from_reference(ctx, stage, model) if cfg.start_from_reference else "own trained weights"
    weights = ctx.backend.prunable(model)
    names = list(weights)
    head = "" if cfg.prune_head else ctx.backend.head_name(model)
    depthwise = tuple(n for n, w in weights.items() if is_depthwise(w.shape)) if cfg.skip_depthwise else ()
    layers = select_layers(names, cfg.skip_layers, head, ctx.recipe.source, f"{ctx.stage_key(stage)}.skip_layers",
                           depthwise)
    curve: list[dict[str, float]] = []

    def prune_to(target: float, step: int) -> None:
        current = ctx.backend.prunable(model)
        masks = magnitude_masks({n: current[n] for n in layers}, target, cfg.scope)
        ctx.backend.set_masks(model, masks)
        achieved = sparsity_of({n: ctx.backend.prunable(model)[n] for n in layers})["overall"]
        curve.append({"step": step, "target": target, "achieved": achieved})

    before = classification_metrics(*evaluate_logits(ctx.backend, model, ctx.stream))
    if cfg.method == "filter":
        return dict(_prune_filters(ctx, stage, out, names, head, before), start_weights=start)
    record: dict[str, Any] = {"model": out, "method": cfg.method, "scope": cfg.scope, "schedule": cfg.schedule,
                              "target_sparsity": cfg.sparsity, "layers_pruned": len(layers),
                              "layers_skipped": [n for n in names if n not in layers],
                              "depthwise_skipped": len(depthwise),
                              "lowering": ctx.backend.pruning_lowering(), "accuracy_before": before,
                              "start_weights": start}
    if cfg.schedule == "one_shot":
        prune_to(cfg.sparsity, 0)
        record["accuracy_after_prune"] = classification_metrics(*evaluate_logits(ctx.backend, model, ctx.stream))
        ctx.progress.say(f"{stage.name}: {out} pruned to {curve[-1]['achieved'] * 100:.1f}% sparsity over "
                         f"{len(layers)} layers; top1 {before['top1'] * 100:.2f}% -> "
                         f"{record['accuracy_after_prune']['top1'] * 100:.2f}%")
    else:
        total = cfg.epochs * ctx.stream.steps_per_epoch
        steps, end = prune_steps(total, cfg.prune_every_steps, cfg.ramp_end_fraction)
        when = set(steps)

        def before_step(global_step: int) -> None:
            if global_step in when:
                prune_to(agp_sparsity(global_step, 0, end, cfg.initial_sparsity, cfg.sparsity), global_step)

        runner = ctx.backend.trainer(model, cfg.optimizer)
        record.update(fit(ctx, stage, runner, model, cfg.epochs, cfg.optimizer, cfg.lr_schedule,
                          cfg.bn_recalibration_batches, before_step))
        record["ramp_end_step"] = end
        ctx.progress.say(f"{stage.name}: {out} at {curve[-1]['achieved'] * 100:.1f}% sparsity after AGP "
                         f"({len(curve)} mask updates over {end} steps)")
    record["source"] = cfg.model
    record["achieved_sparsity"] = curve[-1]["achieved"]
    record["sparsity_curve"] = curve
    return record


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


def _prune_filters(ctx: RunContext, stage: Stage, out: str, names: list[str], head: str,
                   before: dict[str, float]) -> dict[str, Any]:
    """Structured pruning: the backend's own tool removes channels; params are counted before and after."""
    cfg: PruneStage = stage.config
    modules = [n.rsplit(".weight", 1)[0] for n in names]
    for layer in cfg.layer_ratios:
        if layer not in modules:
            raise RecipeError(ctx.recipe.source, f"{ctx.stage_key(stage)}.layer_ratios.{layer}",
                              f"a prunable layer name ({', '.join(modules[:6])}, ... {len(modules)} in all)",
                              has_got=False)
    skip = list(cfg.skip_layers) + ([head.rsplit(".weight", 1)[0]] if head else [])
    size = ctx.recipe.data.image_size
    edit = {"criterion": cfg.criterion, "ratio": cfg.ratio, "layer_ratios": dict(cfg.layer_ratios), "skip": skip,
            "example_shape": (1, 3, size, size)}
    params_before = sum(w.size for w in ctx.backend.prunable(ctx.models[out]).values())
    removed = ctx.apply_structure(out, edit)
    params_after = sum(w.size for w in ctx.backend.prunable(ctx.models[out]).values())
    after = classification_metrics(*evaluate_logits(ctx.backend, ctx.models[out], ctx.stream))
    ctx.progress.say(f"{stage.name}: {out} lost {sum(map(len, removed.values()))} channels in {len(removed)} convs "
                     f"({cfg.criterion}); conv+linear weights {params_before} -> {params_after}; top1 "
                     f"{before['top1'] * 100:.2f}% -> {after['top1'] * 100:.2f}%")
    return {"model": out, "source": cfg.model, "method": "filter", "criterion": cfg.criterion, "ratio": cfg.ratio,
            "layer_ratios": dict(cfg.layer_ratios), "schedule": "one_shot", "structure_edit": edit,
            "lowering": ctx.backend.pruning_lowering("filter", cfg.criterion), "accuracy_before": before,
            "accuracy_after_prune": after, "weights_before": params_before, "weights_after": params_after,
            "removed_channels": removed}


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
        named = name_artifact_layers(stats["sparsity"]["layers"], ctx.backend.prunable(model))
        if named:
            stats["sparsity"]["layers"] = named
        pruned = sorted(ctx.backend.get_masks(model))
        stats["sparsity"]["pruned_layers"] = pruned_layer_sparsity(named, pruned) if pruned else None
        predict = ctx.backend.load_artifact(artifact, ctx.threads)
        probe = ctx.stream.val_images(ctx.recipe.parity.probe_batch)
        agreement = logit_difference(ctx.backend.predict(model, probe), predict(probe))
        acc = classification_metrics(*predict_validation(predict, ctx.stream))
        latency = {}
        for bs in cfg.measure.batch_sizes:
            x = ctx.stream.val_images(bs)
            ctx.progress.say(f"{stage.name}: {slot} latency at batch {bs} ({cfg.measure.warmup} warm-up, "
                             f"{cfg.measure.repeats} timed)")
            latency[str(bs)] = latency_summary(time_calls(lambda: predict(x), cfg.measure.warmup,
                                                          cfg.measure.repeats))
        rec = {"format": artifact.format, "files": [str(f.relative_to(ctx.out_dir)) for f in artifact.files],
               "size_bytes": artifact.size_bytes, "size_mb": artifact.size_bytes / 1e6, **stats,
               # Dense kernels store zeros like any other value: sparsity only shrinks a compressed file.
               "compressed_bytes": compressed_size(artifact.files) if stats["sparsity"]["overall"] > 0.01 else None,
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


for _t, _fn in (("train", run_train), ("distill", run_distill), ("prune", run_prune), ("evaluate", run_evaluate),
                ("export", run_export)):
    register_executor(_t, _fn)
