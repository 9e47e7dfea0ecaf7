"""The `distill` stage: a student learns from a frozen teacher in the shared loop, on a weighted sum of loss
terms (soft labels, labels, the teacher's hard labels, FitNets hints, attention transfer, DKD); its report part
is each distillation's gain over the student trained alone from the same start.

The terms are computed by each backend (backends/<name>/distill_losses.py), features tapped through the
framework's own hooks; this module plans them: layer names checked against the canonical table before any
worker starts, shapes probed before training, adapters initialised identically on every backend."""
from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from backends.base import DistillPlan, DistillTerm
from common.backend_names import title
from common.config import OptimizerConfig, ScheduleConfig
from common.errors import RecipeError, SlimbenchError
from common.report.markdown_table import table
from common.report.index import ReportIndex, fmt_values
from common.schema import bounds, parse, tagged
from common.stages.distill_layers import backend_layer_name, layer_problem
from common.stages.loop import RunContext, fit
from common.stages.registry import SlotState, Stage, register
from common.stages.train import TrainingStageType
from common.stats import paired_difference
from common.report.validity import blocking_reason


@dataclass(frozen=True)
class LayerPair:
    """A teacher layer and a student layer, in canonical (torchvision) module names."""
    teacher: str
    student: str


@dataclass(frozen=True)
class KDTerm:
    """Hinton soft labels: T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    tag: ClassVar[str] = "kd"
    weight: float = field(default=1.0, metadata=bounds(ge=0, le=1e6))
    temperature: float = field(default=4.0, metadata=bounds(gt=0, le=1e3))


@dataclass(frozen=True)
class LabelTerm:
    """Cross-entropy on the dataset's labels."""
    tag: ClassVar[str] = "ce"
    weight: float = field(default=1.0, metadata=bounds(ge=0, le=1e6))


@dataclass(frozen=True)
class HardLabelTerm:
    """Cross-entropy on the teacher's argmax (training on the teacher's hard labels)."""
    tag: ClassVar[str] = "hard_label"
    weight: float = field(default=1.0, metadata=bounds(ge=0, le=1e6))


@dataclass(frozen=True)
class FeatureTerm:
    """FitNets hint: the student's feature map, through a 1x1 conv + BN adapter initialised from the run's seed
    (identically on every backend), regresses the teacher's; mean squared error or smooth-L1 (beta 1)."""
    tag: ClassVar[str] = "feature"
    layers: tuple[LayerPair, ...] = field(metadata={"nonempty": True})
    weight: float = field(default=1.0, metadata=bounds(ge=0, le=1e6))
    adapter: bool = True
    distance: Literal["mse", "smooth_l1"] = "mse"


@dataclass(frozen=True)
class AttentionTerm:
    """Attention transfer (Zagoruyko & Komodakis 2017): per layer pair the mean squared difference of the
    L2-normalised spatial maps mean_c |f|^p; the weight 1000 is the papers' (mdistiller's) setting."""
    tag: ClassVar[str] = "attention"
    layers: tuple[LayerPair, ...] = field(metadata={"nonempty": True})
    weight: float = field(default=1000.0, metadata=bounds(ge=0, le=1e6))
    p: float = field(default=2.0, metadata=bounds(gt=0, le=8))


@dataclass(frozen=True)
class DKDTerm:
    """Decoupled KD (Zhao et al. 2022): alpha * target-class KD + beta * non-target-class KD, both T^2-scaled,
    ramped in linearly over `warmup_epochs` (epoch e, from 1, weighs min(e / warmup_epochs, 1))."""
    tag: ClassVar[str] = "dkd"
    weight: float = field(default=1.0, metadata=bounds(ge=0, le=1e6))
    alpha: float = field(default=1.0, metadata=bounds(ge=0, le=1e3))
    beta: float = field(default=8.0, metadata=bounds(ge=0, le=1e3))
    temperature: float = field(default=4.0, metadata=bounds(gt=0, le=1e3))
    warmup_epochs: int = field(default=0, metadata=bounds(ge=0, le=10_000))


LossTerm = KDTerm | LabelTerm | HardLabelTerm | FeatureTerm | AttentionTerm | DKDTerm
LOSS_TERMS: dict[str, type] = {t.tag: t for t in (KDTerm, LabelTerm, HardLabelTerm, FeatureTerm, AttentionTerm,
                                                 DKDTerm)}
FEATURE_KINDS = ("feature", "attention")


@dataclass(frozen=True)
class Published:
    """Published top-1 (percent) of the same setting, shown beside the results for reference."""
    source: str
    baseline_top1: float = field(metadata=bounds(ge=0, le=100))
    distilled_top1: float = field(metadata=bounds(ge=0, le=100))
    teacher_top1: float | None = field(default=None, metadata=bounds(ge=0, le=100))


@dataclass(frozen=True)
class DistillStage:
    name: str
    teacher: str
    student: str
    output: str | None = None
    method: Literal["hinton"] = "hinton"  # kept for older recipes; `losses` says what is minimised
    # The two-term form: alpha * kd(temperature) + (1 - alpha) * ce; or `losses`, not both.
    temperature: float | None = field(default=None, metadata=bounds(gt=0))
    alpha: float | None = field(default=None, metadata=bounds(ge=0, le=1))
    losses: tuple[LossTerm, ...] = field(default=(), metadata=tagged(LOSS_TERMS))
    epochs: int = field(default=1, metadata=bounds(gt=0))
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Recompute BN running statistics over this many training batches before each validation ("precise BN").
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))
    published: Published | None = None

    def outputs(self) -> tuple[str, ...]:
        return (self.output or self.student,)

    def inputs(self) -> tuple[str, ...]:
        return (self.teacher, self.student)

    def derived_from(self) -> dict[str, str]:
        return {self.output or self.student: self.student}

    def terms(self) -> tuple[LossTerm, ...]:
        """The loss terms, the two-term form (temperature 4, alpha 0.9 by default) written out."""
        if self.losses:
            return self.losses
        alpha = 0.9 if self.alpha is None else self.alpha
        return (KDTerm(weight=alpha, temperature=4.0 if self.temperature is None else self.temperature),
                LabelTerm(weight=round(1.0 - alpha, 12)))  # 0.1, not 0.09999999999999998


def term_label(term: LossTerm) -> str:
    """Short human form of one term: `0.9 kd(T=4)`, `1 feature(layer2→features.6, mse, adapter)`."""
    pairs = ", ".join(f"{p.teacher}→{p.student}" for p in getattr(term, "layers", ()))
    extra = {"kd": lambda t: f"T={t.temperature:g}",
             "dkd": lambda t: f"α={t.alpha:g}, β={t.beta:g}, T={t.temperature:g}"
                              + (f", warm-up {t.warmup_epochs} ep" if t.warmup_epochs else ""),
             "feature": lambda t: f"{pairs}, {t.distance}" + (", adapter" if t.adapter else ""),
             "attention": lambda t: f"{pairs}, p={t.p:g}"}.get(term.tag)
    return f"{term.weight:g} {term.tag}" + (f"({extra(term)})" if extra else "")


def losses_label(terms: tuple[LossTerm, ...]) -> str:
    return " + ".join(term_label(t) for t in terms if t.weight)


def term_scales(terms: tuple[LossTerm, ...], epoch: int) -> list[float]:
    """Each term's factor in epoch `epoch` (from 0): its weight, times DKD's linear warm-up."""
    out = []
    for t in terms:
        ramp = min((epoch + 1) / t.warmup_epochs, 1.0) if isinstance(t, DKDTerm) and t.warmup_epochs else 1.0
        out.append(t.weight * ramp)
    return out


def _check_config(cfg: DistillStage, state: SlotState, source: str, path: str) -> None:
    if cfg.losses and (cfg.temperature is not None or cfg.alpha is not None):
        key = "temperature" if cfg.temperature is not None else "alpha"
        raise RecipeError(source, f"{path}.{key}", "no value when `losses` is given (write the kd term's "
                          "temperature and each term's weight in `losses`)", getattr(cfg, key))
    if not any(t.weight for t in cfg.terms()):
        raise RecipeError(source, f"{path}.losses", "at least one term with a weight > 0", [t.tag for t in cfg.terms()])
    for i, term in enumerate(cfg.losses):
        for j, pair in enumerate(getattr(term, "layers", ())):
            for side, slot in (("teacher", cfg.teacher), ("student", cfg.student)):
                arch = state.archs.get(slot, "")
                problem = layer_problem(arch, getattr(pair, side))
                if problem:
                    raise RecipeError(source, f"{path}.losses[{i}].{term.tag}.layers[{j}].{side}", problem,
                                      getattr(pair, side))


def _adapter_weight(seed: int, stage: str, term: int, pair: int, shape: tuple[int, int]) -> np.ndarray:
    """torch's default conv init (kaiming-uniform, a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))) drawn from
    numpy for this run's seed, stage, term and layer pair, so every backend starts the adapter identically."""
    out_ch, in_ch = shape
    rng = np.random.default_rng([seed, zlib.crc32(stage.encode()), term, pair])
    bound = 1.0 / math.sqrt(in_ch)
    return rng.uniform(-bound, bound, size=(out_ch, in_ch, 1, 1)).astype(np.float32)


def plan_losses(ctx: RunContext, stage: Stage, student: Any, teacher: Any) -> tuple[DistillPlan, dict[str, Any]]:
    """The backend's loss plan: layers resolved to its module names, feature shapes probed through its hooks and
    checked (one line naming the recipe key on a mismatch), adapters initialised from the run's seed."""
    cfg: DistillStage = stage.config
    arch = {side: ctx.model_cfgs[slot].arch for side, slot in (("teacher", cfg.teacher), ("student", cfg.student))}
    own = {side: (lambda name, side=side: backend_layer_name(arch[side], name, ctx.backend.name))
           for side in arch}
    shapes = {}
    if any(t.tag in FEATURE_KINDS for t in cfg.terms()):
        probe = ctx.stream.val_images(2)
        for side, model in (("teacher", teacher), ("student", student)):
            names = list(dict.fromkeys(own[side](getattr(p, side))
                                       for t in cfg.terms() for p in getattr(t, "layers", ())))
            shapes[side] = ctx.backend.feature_shapes(model, names, probe)
    terms, taps = [], []
    for i, term in enumerate(cfg.terms()):
        pairs, adapters = [], []
        for j, pair in enumerate(getattr(term, "layers", ())):
            t_name, s_name = own["teacher"](pair.teacher), own["student"](pair.student)
            (ts, t_calls), (ss, s_calls) = shapes["teacher"][t_name], shapes["student"][s_name]
            key = f"{ctx.stage_key(stage)}.losses[{i}].{term.tag}.layers[{j}]"
            where = f"{ctx.recipe.source}: {key}"  # as ctx.stage_path writes it
            for side, name, calls, shape in (("teacher", pair.teacher, t_calls, ts),
                                             ("student", pair.student, s_calls, ss)):
                if calls != 1:
                    raise RecipeError(ctx.recipe.source, f"{key}.{side}", f"a layer that runs once per forward pass "
                                      f"('{name}' runs {calls} times, e.g. a shared activation module; tap the block "
                                      "or the convolution instead)", name)
                if len(shape) != 4:
                    raise SlimbenchError(f"{where}.{side}: '{name}' gives {list(shape[1:])} per image; feature terms "
                                         "need (C, H, W) feature maps")
            if ts[2:] != ss[2:]:
                raise SlimbenchError(f"{where}: teacher '{pair.teacher}' gives {list(ts[1:])} (C, H, W) and student "
                                     f"'{pair.student}' {list(ss[1:])} at {ctx.recipe.data.image_size} px; the spatial "
                                     "sizes must match: pick layers at the same stride")
            adapter = None
            if term.tag == "feature":
                if term.adapter:
                    adapter = _adapter_weight(ctx.seed, stage.name, i, j, (ts[1], ss[1]))
                elif ts[1] != ss[1]:
                    raise SlimbenchError(f"{where}: teacher '{pair.teacher}' has {ts[1]} channels and student "
                                         f"'{pair.student}' {ss[1]}; without an adapter they must match (set "
                                         "adapter: true)")
            pairs.append((t_name, s_name))
            adapters.append(adapter)
            taps.append({"term": term.tag, "teacher": pair.teacher, "student": pair.student,
                         "teacher_shape": list(ts[1:]), "student_shape": list(ss[1:]),
                         "adapter": None if adapter is None else f"1x1 conv {ss[1]}→{ts[1]} + BN"})
        params = {k: v for k, v in dataclasses.asdict(term).items() if k not in ("weight", "layers", "adapter")}
        terms.append(DistillTerm(term.tag, params, tuple(pairs), tuple(adapters)))
    return DistillPlan(tuple(terms)), {"losses": [term_record(t) for t in cfg.terms()],
                                       "losses_label": losses_label(cfg.terms()), "taps": taps}


def term_record(term: LossTerm) -> dict[str, Any]:
    """A term as the recipe writes it ({tag: settings}), for the stage's record."""
    return {term.tag: dataclasses.asdict(term)}


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

    def check(self, cfg: DistillStage, state: SlotState, source: str, path: str) -> None:
        _check_config(cfg, state, source, path)

    def preflight(self, ctx: RunContext, stage: Stage) -> None:
        """Layer shapes probed on the models as they are before the first stage trains (a teacher that trains
        for hours first must not reach a shape error afterwards); run() checks again on the models it gets."""
        cfg: DistillStage = stage.config
        if any(t.tag in FEATURE_KINDS for t in cfg.terms()) and {cfg.teacher, cfg.student} <= set(ctx.models):
            plan_losses(ctx, stage, ctx.models[cfg.student], ctx.models[cfg.teacher])

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        cfg: DistillStage = stage.config
        out = cfg.output or cfg.student
        student = ctx.output_model(cfg.student, out)
        plan, described = plan_losses(ctx, stage, student, ctx.models[cfg.teacher])
        runner = ctx.backend.distiller(student, ctx.models[cfg.teacher], cfg.optimizer, plan)
        terms, spe, current = cfg.terms(), ctx.stream.steps_per_epoch, [term_scales(cfg.terms(), 0)]
        runner.set_scales(current[0])

        def before_step(global_step: int) -> None:  # DKD's warm-up changes the scales once per epoch
            scales = term_scales(terms, global_step // spe)
            if scales != current[0]:
                current[0] = scales
                runner.set_scales(scales)

        try:
            result = fit(ctx, stage, runner, student, cfg.epochs, cfg.optimizer, cfg.schedule,
                         cfg.bn_recalibration_batches, before_step=before_step)
        finally:
            runner.close()
        return {"model": out, "teacher": cfg.teacher, "method": cfg.method, "temperature": cfg.temperature,
                "alpha": cfg.alpha, **described, "tools": runner.tools, **result}

    def how_note(self, who: str, record: dict) -> str | None:
        tools = record.get("tools")
        if not tools:
            return None
        return f"{who}, `{record['name']}` ({record.get('losses_label', 'kd')}): " + "; ".join(
            f"{k}: {v}" for k, v in tools.items())

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        pairs = kd_pairs(meta)
        if not pairs:
            return ""
        findings, family = ix.validity(run_dir, meta)
        configs = _distill_configs(meta)
        published = {stage: configs[stage].get("published") for stage, _, _ in pairs if configs[stage].get("published")}
        rows = []
        for stage, base, kd in pairs:
            teacher = configs[stage].get("teacher", "")
            label = _losses_label(ix, stage, configs[stage])
            for b in ix.backends:
                by_seed = {slot: _top1_by_seed(ix, b, slot) for slot in (base, kd, teacher)}
                bv, kv = list(by_seed[base].values()), list(by_seed[kd].values())
                d = paired_difference(by_seed[base], by_seed[kd])
                gain = "–" if d is None else f"{d.mean * 100 + 0.0:+.2f} pts" + (
                    f" [{d.ci95[0] * 100 + 0.0:+.2f}, {d.ci95[1] * 100 + 0.0:+.2f}]" if d.ci95 else "")
                row = [stage, label, title(b), fmt_values(bv, 100, unit="%"), fmt_values(kv, 100, unit="%"),
                       gain, _kd_verdict(d, by_seed, base, teacher, findings, family)]
                if published:
                    p = published.get(stage)
                    row.append("–" if not p else f"{p['baseline_top1']:.2f}% → {p['distilled_top1']:.2f}% "
                               f"({p['distilled_top1'] - p['baseline_top1']:+.2f} pts)")
                rows.append(row)
        head = ["distill stage", "loss", "backend", "baseline top-1", "distilled top-1",
                "gain [95% CI over seeds]", "verdict"]
        sources = sorted({p["source"] for p in published.values()})
        text = ("## Knowledge-distillation gain\n\n"
                + table(head + (["published baseline → distilled"] if published else []), rows)
                + "\nThe baseline is the student trained alone from the same initial weights, data stream and "
                  "schedule; the gain is paired by seed. A gain is claimed only where the teacher beats the student "
                  "trained alone and every model involved passes the validity checks.\n\n")
        if sources:
            text += ("Published figures, for reference only (another dataset size, schedule or hardware: they are "
                     "not compared with these runs): " + "; ".join(sources) + ".\n\n")
        return text


def _distill_configs(meta: dict) -> dict[str, dict]:
    out = {}
    for item in meta.get("recipe", {}).get("stages", []):
        (stype, cfg), = item.items()
        if stype == "distill":
            out[cfg.get("name")] = cfg
    return out


def _losses_label(ix: ReportIndex, stage: str, cfg: dict) -> str:
    """The loss a distill stage minimised: from its records, else from its recorded config."""
    for b in ix.backends:
        for _, st in ix.stage_records(b, "distill"):
            if st["name"] == stage and st.get("losses_label"):
                return st["losses_label"]
    return losses_label(parse(DistillStage, cfg, "run.json", f"recipe.stages.{stage}").terms())


register(Distill())
