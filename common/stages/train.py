"""The `train` stage: cross-entropy training of one model slot in the shared loop (common/stages/loop.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import OptimizerConfig, ScheduleConfig
from common.errors import RecipeError
from common.metrics import classification_metrics
from common.schema import bounds
from common.stages.loop import RunContext, evaluate_logits, fit
from common.stages.registry import MetricFactory, OneModelSlots, RowSink, SlotState, Stage, StageType, register


@dataclass(frozen=True)
class TrainStage(OneModelSlots):
    name: str
    model: str
    output: str | None = None
    # 0: no training, the slot's checkpoint only evaluated (a paper profile's teacher from a published file)
    epochs: int = field(default=1, metadata=bounds(ge=0))
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Recompute BN running statistics over this many training batches before each validation ("precise BN").
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))


def training_csv_rows(add: RowSink, result: dict, record: dict) -> None:
    """The rows every training stage (train, distill) records: times, steps and the last epoch's metrics."""
    for k in ("train_time_s", "time_per_step_s", "epochs", "steps"):
        add(result, record["name"], record["model"], k, record.get(k))
    for k, v in (record.get("final") or {}).items():
        add(result, record["name"], record["model"], f"final_{k}", v)


def training_time_metric(metric: MetricFactory, backend: str, seed: int, record: dict) -> None:
    if not record.get("steps"):
        return  # nothing trained: no time to compare
    metric("training time", f"`{record['name']}` ({record['steps']} steps)", " s", False, digits=1).add(
        backend, seed, record["train_time_s"])


class TrainingStageType(StageType):
    """A stage type that trains its output in the shared loop (train, distill): the output counts as trained,
    and its record gives a training-time comparison, CSV rows and a Training-table row."""

    def update(self, cfg: Any, state: SlotState) -> None:
        super().update(cfg, state)
        state.trained.update(cfg.outputs())

    def metrics(self, metric: MetricFactory, backend: str, seed: int, result: dict, record: dict) -> None:
        training_time_metric(metric, backend, seed, record)

    def csv_rows(self, add: RowSink, result: dict, record: dict) -> None:
        training_csv_rows(add, result, record)

    def training_runs(self, record: dict) -> list[tuple[str, dict]]:
        return [(record["name"], record)] if record.get("steps") else []


class Train(TrainingStageType):
    name, config = "train", TrainStage

    def check(self, cfg: TrainStage, state: SlotState, source: str, path: str) -> None:
        if cfg.epochs == 0 and cfg.model not in state.trained:
            raise RecipeError(source, f"{path}.epochs", f"at least 1: '{cfg.model}' starts from random weights "
                              "(0 epochs only evaluates a slot that starts from a checkpoint, `models.<slot>.weights`)",
                              cfg.epochs)

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        cfg: TrainStage = stage.config
        out = cfg.output or cfg.model
        model = ctx.output_model(cfg.model, out)
        if cfg.epochs == 0:
            val = classification_metrics(*evaluate_logits(ctx.backend, model, ctx.stream))
            ctx.progress.say(f"{stage.name}: 0 epochs: {out} kept as loaded (val top-1 {val['top1'] * 100:.1f}%)")
            return {"model": out, "epochs": 0, "steps": 0, "train_time_s": 0.0, "time_per_step_s": 0.0,
                    "history": [], "final": {"val_top1": val["top1"], "val_top5": val["top5"],
                                             "val_loss": val["loss"]}, "trained": False}
        runner = ctx.backend.trainer(model, cfg.optimizer)
        return {"model": out, **fit(ctx, stage, runner, model, cfg.epochs, cfg.optimizer, cfg.schedule,
                                     cfg.bn_recalibration_batches)}


register(Train())
