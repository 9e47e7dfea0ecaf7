"""The `distill` stage: a student learns from a frozen teacher (Hinton KD) in the shared loop; its report part
is the KD gain over the student trained alone from the same start."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.backend_names import title
from common.config import OptimizerConfig, ScheduleConfig
from common.markdown_table import table
from common.report_index import ReportIndex, fmt_values
from common.schema import bounds
from common.stages.loop import RunContext, fit
from common.stages.registry import Stage, register
from common.stages.train import TrainingStageType
from common.stats import paired_difference
from common.validity import blocking_reason


@dataclass(frozen=True)
class DistillStage:
    name: str
    teacher: str
    student: str
    output: str | None = None
    method: Literal["hinton"] = "hinton"
    temperature: float = field(default=4.0, metadata=bounds(gt=0))
    alpha: float = field(default=0.9, metadata=bounds(ge=0, le=1))
    epochs: int = field(default=1, metadata=bounds(gt=0))
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Recompute BN running statistics over this many training batches after the last epoch ("precise BN").
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))

    def outputs(self) -> tuple[str, ...]:
        return (self.output or self.student,)

    def inputs(self) -> tuple[str, ...]:
        return (self.teacher, self.student)

    def derived_from(self) -> dict[str, str]:
        return {self.output or self.student: self.student}


def kd_pairs(run_meta: dict) -> list[tuple[str, str, str]]:
    """(distill stage, baseline slot, distilled slot): the baseline is the train stage on the same start."""
    stages = [next(iter(s.items())) for s in run_meta.get("recipe", {}).get("stages", [])]
    pairs = []
    for stype, cfg in stages:
        if stype != "distill":
            continue
        for t2, c2 in stages:
            if t2 == "train" and c2.get("model") == cfg.get("student"):
                pairs.append((cfg["name"], c2.get("output") or c2["model"], cfg.get("output") or cfg["student"]))
    return pairs


def _teacher_of(meta: dict, stage: str) -> str:
    for item in meta.get("recipe", {}).get("stages", []):
        (stype, cfg), = item.items()
        if stype == "distill" and cfg.get("name") == stage:
            return cfg.get("teacher", "")
    return ""


def _top1_by_seed(ix: ReportIndex, backend: str, slot: str) -> dict[int, float]:
    return {seed: st["models"][slot]["top1"] for seed, st in ix.stage_records(backend, "evaluate")
            if slot in st["models"]}


def _kd_verdict(d: Any, by_seed: dict[str, dict[int, float]], base: str, teacher: str, findings: list,
                family: dict[str, set[str]]) -> str:
    """Does distillation help on this backend? Only where the numbers can say so."""
    for slot in (teacher, base, *[s for s in by_seed if s not in (teacher, base)]):
        reason = blocking_reason(findings, "accuracy", slot, family)
        if reason:
            return f"no verdict: {reason}"
    t, b = by_seed.get(teacher, {}), by_seed.get(base, {})
    if t and b and sum(t.values()) / len(t) <= sum(b.values()) / len(b):
        return (f"no verdict: the teacher ({sum(t.values()) / len(t) * 100:.1f}%) does not beat the student trained "
                f"alone ({sum(b.values()) / len(b) * 100:.1f}%), so distillation has nothing to add")
    if d is None or d.significant is None:
        return "no verdict: one seed"
    if not d.significant:
        return "no verdict: within seed noise"
    return "**distillation helps**" if d.mean > 0 else "**distillation hurts**"


class Distill(TrainingStageType):
    name, config = "distill", DistillStage

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        cfg: DistillStage = stage.config
        out = cfg.output or cfg.student
        student = ctx.output_model(cfg.student, out)
        runner = ctx.backend.distiller(student, ctx.models[cfg.teacher], cfg.optimizer, cfg.temperature, cfg.alpha)
        result = fit(ctx, stage, runner, student, cfg.epochs, cfg.optimizer, cfg.schedule,
                     cfg.bn_recalibration_batches)
        return {"model": out, "teacher": cfg.teacher, "method": cfg.method, "temperature": cfg.temperature,
                "alpha": cfg.alpha, **result}

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        pairs = kd_pairs(meta)
        if not pairs:
            return ""
        findings, family = ix.validity(run_dir, meta)
        rows = []
        for stage, base, kd in pairs:
            teacher = _teacher_of(meta, stage)
            for b in ix.backends:
                by_seed = {slot: _top1_by_seed(ix, b, slot) for slot in (base, kd, teacher)}
                bv, kv = list(by_seed[base].values()), list(by_seed[kd].values())
                d = paired_difference(by_seed[base], by_seed[kd])
                gain = "–" if d is None else f"{d.mean * 100 + 0.0:+.2f} pts" + (
                    f" [{d.ci95[0] * 100 + 0.0:+.2f}, {d.ci95[1] * 100 + 0.0:+.2f}]" if d.ci95 else "")
                rows.append([stage, title(b), fmt_values(bv, 100, unit="%"), fmt_values(kv, 100, unit="%"),
                             gain, _kd_verdict(d, by_seed, base, teacher, findings, family)])
        return ("## Knowledge-distillation gain\n\n"
                + table(["distill stage", "backend", "baseline top-1", "distilled top-1",
                         "KD gain [95% CI over seeds]", "verdict"], rows)
                + "\nThe baseline is the student trained alone from the same initial weights, data stream and "
                  "schedule; the gain is paired by seed. A gain is claimed only where the teacher beats the student "
                  "trained alone and every model involved passes the validity checks.\n\n")


register(Distill())
