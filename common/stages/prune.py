"""The `prune` stage: unstructured magnitude pruning (one-shot or gradual AGP while fine-tuning; masks computed
in common/pruning.py) and structured filter pruning that removes channels with each framework's own tool; its
report part is the Pruning section, the filter overlap across backends and the sparsity schedule figure."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.backend_names import color, marker, title
from common.config import OptimizerConfig, ScheduleConfig
from common.errors import RecipeError
from common.report.markdown_table import table
from common.metrics import classification_metrics
from common.pruning import agp_sparsity, is_depthwise, magnitude_masks, prune_steps, select_layers, sparsity_of
from common.report.index import ReportIndex, delta_table, paired_prediction_files
from common.schema import bounds
from common.stages.export import best_of, ok_onnx, own
from common.stages.loop import RunContext, evaluate_logits, fit, start_from_reference
from common.stages.registry import MetricFactory, OneModelSlots, SlotState, Stage, StageType, register

@dataclass(frozen=True)
class PruneStage(OneModelSlots):
    """`magnitude`: unstructured, one-shot or gradual (AGP) while fine-tuning.
    `filter`: structured, removes output channels for real (one-shot; fine-tune with a following train stage)."""
    name: str
    model: str
    output: str | None = None
    method: Literal["magnitude", "filter"] = "magnitude"
    sparsity: float | None = field(default=None, metadata=bounds(ge=0, lt=1))  # magnitude: share of weights zeroed
    criterion: Literal["l1", "l2", "fpgm"] = "l1"  # filter: how filters are ranked
    # Prune the reference framework's trained weights on every backend (loaded from its canonical checkpoint),
    # so both backends prune the same model; false: each prunes the model it trained itself.
    start_from_reference: bool = True
    ratio: float | None = field(default=None, metadata=bounds(ge=0, lt=1))  # filter: share of channels per layer
    layer_ratios: dict[str, float] = field(default_factory=dict)  # filter: per-layer overrides (module names)
    scope: Literal["local", "global"] = "global"
    schedule: Literal["one_shot", "agp"] = "one_shot"
    skip_layers: tuple[str, ...] = ()
    prune_head: bool = False  # a global threshold otherwise removes MobileNetV2's whole classifier (docs/ARCHITECTURE.md, section 6)
    # Depthwise convs ([C, 1, k, k]) hold few weights of small magnitude: a global threshold empties them
    # and disconnects the network (MobileNetV2 at 80% falls to chance), so they stay dense by default.
    skip_depthwise: bool = True
    # agp only: the sparsity ramps from initial_sparsity to sparsity while training for `epochs`
    initial_sparsity: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    epochs: int = field(default=1, metadata=bounds(gt=0))
    prune_every_steps: int = field(default=10, metadata=bounds(gt=0))
    ramp_end_fraction: float = field(default=0.75, metadata=bounds(gt=0, le=1))
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: ScheduleConfig = ScheduleConfig()
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))




def _check_prune(cfg: PruneStage, source: str, path: str) -> None:
    """Settings that depend on the method."""
    if cfg.method == "magnitude":
        if cfg.sparsity is None:
            raise RecipeError(source, f"{path}.sparsity", "a number in [0, 1) for method 'magnitude'", None)
        if cfg.initial_sparsity > cfg.sparsity:
            raise RecipeError(source, f"{path}.initial_sparsity", f"a value <= sparsity ({cfg.sparsity})",
                              cfg.initial_sparsity)
        return
    if cfg.ratio is None and not cfg.layer_ratios:
        raise RecipeError(source, f"{path}.ratio", "a number in [0, 1) (or layer_ratios) for method 'filter'", None)
    if cfg.schedule != "one_shot":
        raise RecipeError(source, f"{path}.schedule", "'one_shot' for method 'filter' (fine-tune with a train stage)",
                          cfg.schedule)
    for layer, ratio in cfg.layer_ratios.items():
        if not 0 <= ratio < 1:
            raise RecipeError(source, f"{path}.layer_ratios.{layer}", "a number >= 0 and < 1", ratio)




class _MaskPruner:
    """Unstructured masks on the selected layers at a target sparsity, recording the reached sparsity each time."""

    def __init__(self, ctx: RunContext, model: Any, layers: list[str], scope: str):
        self.ctx, self.model, self.layers, self.scope = ctx, model, layers, scope
        self.curve: list[dict[str, float]] = []

    def prune_to(self, target: float, step: int) -> None:
        backend = self.ctx.backend
        current = backend.prunable(self.model)
        backend.set_masks(self.model, magnitude_masks({n: current[n] for n in self.layers}, target, self.scope))
        achieved = sparsity_of({n: backend.prunable(self.model)[n] for n in self.layers})["overall"]
        self.curve.append({"step": step, "target": target, "achieved": achieved})


def run_prune(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    """Magnitude pruning: masks computed in common/pruning, applied by the backend; one-shot or AGP.
    Filter pruning: the backend's own tool removes channels (_prune_filters)."""
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
    before = classification_metrics(*evaluate_logits(ctx.backend, model, ctx.stream))
    if cfg.method == "filter":
        return dict(_prune_filters(ctx, stage, out, names, head, before), start_weights=start)
    record: dict[str, Any] = {"model": out, "method": cfg.method, "scope": cfg.scope, "schedule": cfg.schedule,
                              "target_sparsity": cfg.sparsity, "layers_pruned": len(layers),
                              "layers_skipped": [n for n in names if n not in layers],
                              "depthwise_skipped": len(depthwise),
                              "lowering": ctx.backend.pruning_lowering(), "accuracy_before": before,
                              "start_weights": start}
    pruner = _MaskPruner(ctx, model, layers, cfg.scope)
    (_one_shot if cfg.schedule == "one_shot" else _gradual)(ctx, stage, pruner, record)
    record["source"] = cfg.model
    record["achieved_sparsity"] = pruner.curve[-1]["achieved"]
    record["sparsity_curve"] = pruner.curve
    return record


def _one_shot(ctx: RunContext, stage: Stage, pruner: _MaskPruner, record: dict[str, Any]) -> None:
    cfg: PruneStage = stage.config
    pruner.prune_to(cfg.sparsity, 0)
    record["accuracy_after_prune"] = classification_metrics(*evaluate_logits(ctx.backend, pruner.model, ctx.stream))
    ctx.progress.say(f"{stage.name}: {record['model']} pruned to {pruner.curve[-1]['achieved'] * 100:.1f}% sparsity "
                     f"over {len(pruner.layers)} layers; top1 {record['accuracy_before']['top1'] * 100:.2f}% -> "
                     f"{record['accuracy_after_prune']['top1'] * 100:.2f}%")


def _gradual(ctx: RunContext, stage: Stage, pruner: _MaskPruner, record: dict[str, Any]) -> None:
    """AGP (Zhu & Gupta): masks follow the shared cubic ramp while the model fine-tunes in the shared loop."""
    cfg: PruneStage = stage.config
    total = cfg.epochs * ctx.stream.steps_per_epoch
    steps, end = prune_steps(total, cfg.prune_every_steps, cfg.ramp_end_fraction)
    when = set(steps)

    def before_step(global_step: int) -> None:
        if global_step in when:
            pruner.prune_to(agp_sparsity(global_step, 0, end, cfg.initial_sparsity, cfg.sparsity), global_step)

    runner = ctx.backend.trainer(pruner.model, cfg.optimizer)
    record.update(fit(ctx, stage, runner, pruner.model, cfg.epochs, cfg.optimizer, cfg.lr_schedule,
                      cfg.bn_recalibration_batches, before_step))
    record["ramp_end_step"] = end
    ctx.progress.say(f"{stage.name}: {record['model']} at {pruner.curve[-1]['achieved'] * 100:.1f}% sparsity after "
                     f"AGP ({len(pruner.curve)} mask updates over {end} steps)")


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




def pruning_section(ix: ReportIndex) -> str:
    rows, curves, lowerings = [], {}, {}
    for b in ix.backends:
        exports = {slot: rec for _, st in ix.stage_records(b, "export") for slot, rec in st["models"].items()}
        for seed, st in ix.stage_records(b, "prune"):
            ex = exports.get(st["model"], {})
            src = exports.get(st.get("source", ""), {})
            sp = ex.get("sparsity") or {}
            art = sp.get("pruned_layers")
            comp = ex.get("compressed_bytes")
            after = st.get("accuracy_after_prune") or st.get("final") or {}
            after_top1 = after.get("top1", after.get("val_top1"))
            structured = st["method"] == "filter"
            macs_cut = 1 - ex["macs"] / src["macs"] if ex and src and src.get("macs") else None
            rows.append([f"`{st['name']}`", title(b), str(seed),
                         f"filter {st['criterion']}" if structured else f"{st['scope']} {st['schedule']}",
                         (f"ratio {st['ratio']}" if st.get("ratio") is not None else "per layer") if structured
                         else f"{st['target_sparsity'] * 100:.1f}%",
                         "–" if structured else f"{st['achieved_sparsity'] * 100:.2f}%",
                         f"{art * 100:.2f}%" if art is not None else "–",
                         f"{sp.get('overall', 0) * 100:.2f}%" if sp and not structured else "–",
                         f"-{macs_cut * 100:.1f}%" if macs_cut is not None else "–",
                         f"{st['accuracy_before']['top1'] * 100:.2f}%",
                         f"{after_top1 * 100:.2f}%" if after_top1 is not None else "–",
                         f"{ex['size_bytes'] / 1e6:.2f} / {comp / 1e6:.2f}" if ex and comp else
                         (f"{ex['size_bytes'] / 1e6:.2f}" if ex else "–")])
            if not structured:
                curves.setdefault(st["name"], {})[(b, seed)] = [round(c["target"], 6) for c in st["sparsity_curve"]]
            lowerings[f"{b} {st['method']}"] = st["lowering"]
    if not rows:
        return ""
    out = ["## Pruning\n",
           table(["stage", "backend", "seed", "scope / schedule", "target", "reached (in memory)",
                   "exported: pruned layers", "exported: all conv+linear", "exported MACs vs source", "top-1 before", "top-1 after (AGP: after fine-tuning)",
                   "file MB (/ zlib MB)"], rows) + "\n"]
    for name, by_run in curves.items():
        same = len({tuple(v) for v in by_run.values()}) == 1
        out.append(f"- `{name}`: the sparsity schedule ({len(next(iter(by_run.values())))} mask updates) is "
                   + ("identical on every backend and seed.\n" if same else "**different between runs**.\n"))
    out += [f"- {title(k.split()[0])} {k.split()[1]} pruning: {lw}.\n"
            for k, lw in lowerings.items()]
    starts = {f"{title(b)}: {st.get('start_weights', 'own trained weights')}"
              for b in ix.backends for _, st in ix.stage_records(b, "prune")}
    out.append("- Pruning started from " + "; ".join(sorted(starts)) + ".\n")
    out.append(filter_overlap(ix))
    if any(not k.endswith(" filter") for k in lowerings):
        out.append("- Unstructured sparsity is counted from the exported weights. Dense kernels run zeros like any "
                   "other value, so these models are not faster, and the file on disk is the same size; only a "
                   "compressed copy (zlib column) shrinks.\n")
    if any(k.endswith(" filter") for k in lowerings):
        out.append("- Filter pruning removes channels: MACs, params and file size of the exported model drop for "
                   "real (see the artifacts table); whether it runs faster is measured per runtime below.\n")
    out.append("\n")
    out.append(latency_after_pruning(ix))
    return "\n".join(out[:1]) + "\n" + "".join(out[1:])




RUNTIMES = (("reference runtime", own), ("best runtime", best_of), ("ONNX Runtime", ok_onnx))


def latency_after_pruning(ix: ReportIndex) -> str:
    """Filter-pruned model against its parent, runtime by runtime and batch size by batch size: fewer MACs are
    not less time everywhere (a runtime's kernels may suit the parent's channel counts better), and the report
    says where channels removed bought no speed instead of assuming they did."""
    ratios: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for b in ix.backends:
        exports: dict[int, dict] = defaultdict(dict)
        for seed, st in ix.stage_records(b, "export"):
            exports[seed].update(st["models"])
        for seed, st in ix.stage_records(b, "prune"):
            pruned, parent = exports[seed].get(st["model"]), exports[seed].get(st.get("source", ""))
            if st["method"] != "filter" or not pruned or not parent:
                continue
            for runtime, pick in RUNTIMES:
                for child, base in zip(pick(pruned), pick(parent)):
                    for bs, lat in (child.get("latency") or {}).items():
                        before = (base.get("latency") or {}).get(bs, {}).get("p50_ms")
                        if before:
                            ratios[(st["name"], b, runtime, bs)].append(lat["p50_ms"] / before)
    if not ratios:
        return ""
    rows, slower = [], []
    for (name, b, runtime, bs), r in ratios.items():
        mean = sum(r) / len(r)
        rows.append([f"`{name}`", title(b), runtime, bs, f"×{mean:.2f}", f"×{min(r):.2f} – ×{max(r):.2f}",
                     str(len(r)), "faster" if max(r) < 1 else ("slower" if min(r) > 1 else "mixed")])
        if mean >= 1:
            slower.append(f"{title(b)} ({runtime}, batch {bs}: ×{mean:.2f})")
    out = ["**Pruned against its parent, latency** (p50 of the exported pruned model / p50 of its parent's, each "
           "seed's own pair, on the same runtime and batch size):\n\n",
           table(["stage", "backend", "runtime", "batch", "pruned / parent, mean", "range over seeds", "seeds",
                  "pruned model"], rows), "\n"]
    if slower:
        out.append("Removing channels did not make the model faster for " + "; ".join(slower) + ": fewer MACs do "
                   "not buy time on every runtime, so read the speed-up where you deploy.\n\n")
    return "".join(out)


def filter_overlap(ix: ReportIndex) -> str:
    """How many of the removed filters the two backends chose alike (same seed, same stage)."""
    if len(ix.backends) != 2:
        return ""
    a, b = ix.backends
    lines = []
    recs_b = {(seed, st["name"]): st for seed, st in ix.stage_records(b, "prune") if st["method"] == "filter"}
    for seed, st in ix.stage_records(a, "prune"):
        other = recs_b.get((seed, st["name"]))
        if st["method"] != "filter" or other is None:
            continue
        ra, rb = st["removed_channels"], other["removed_channels"]
        common_layers = sorted(set(ra) & set(rb))
        inter = sum(len(set(ra[k]) & set(rb[k])) for k in common_layers)
        union = sum(len(set(ra[k]) | set(rb[k])) for k in common_layers)
        same_start = "trained weights of" in (st.get("start_weights", "") + other.get("start_weights", ""))
        why = ("Both pruned the same (reference) weights, so the difference is how the tools treat coupled layers: "
               if same_start else "Trained weights drift apart between frameworks, and ")
        lines.append(f"- `{st['name']}` seed {seed}: {len(common_layers)} convs pruned on both "
                     f"({len(ra)} by {title(a)}, {len(rb)} by {title(b)}); removed "
                     f"filters overlap {inter / max(union, 1) * 100:.1f}% (intersection over union). " + why +
                     "in residual-coupled groups the tools rank channels by different member convs (torch-pruning: the group's root, e.g. the downsample conv; PaddleSlim: "
                     "the conv it was asked to prune first). On identical weights, convs without coupling lose "
                     "the same filters in both (tests/integration/test_pruning_backends.py).\n")
    return "".join(lines)




def sparsity_figure(results: list[dict], backends: list[str]) -> Any:
    """Target and reached sparsity at each mask update of gradual pruning, per framework."""
    from common.report.plots import Figure, png, plt
    series: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for r in results:
        for st in r.get("stages", []):
            if st.get("status") == "ok" and st["type"] == "prune" and st.get("sparsity_curve"):
                series[st["name"]].setdefault(r["backend"], st["sparsity_curve"])  # one seed: schedules are equal
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 3.6), squeeze=False)
    for ax, (stage, by_b) in zip(axes[0], series.items()):
        first = next(iter(by_b.values()))
        ax.plot([c["step"] for c in first], [c["target"] * 100 for c in first], color="#333333", linestyle="--",
                label="target (common/schedule)")
        for b in backends:
            if b in by_b:
                ax.plot([c["step"] for c in by_b[b]], [c["achieved"] * 100 for c in by_b[b]],
                        marker=marker(b), markersize=3, color=color(b), linestyle="none",
                        label=f"reached, {title(b)}")
        ax.set_title(f"{stage}: sparsity schedule", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("sparsity of pruned layers (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure("sparsity_schedule", "Sparsity schedule",
                  "Reached sparsity at every mask update (first seed) against the shared target curve.", png(fig))


class Prune(StageType):
    name, config = "prune", PruneStage

    def check(self, cfg: PruneStage, state: SlotState, source: str, path: str) -> None:
        _check_prune(cfg, source, path)

    def update(self, cfg: PruneStage, state: SlotState) -> None:
        for out_slot, in_slot in cfg.derived_from().items():
            if in_slot in state.masked or cfg.method == "magnitude":
                state.masked.add(out_slot)
            else:
                state.masked.discard(out_slot)
            if in_slot in state.trained:
                state.trained.add(out_slot)

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        return run_prune(ctx, stage)

    def metrics(self, metric: MetricFactory, backend: str, seed: int, result: dict, record: dict) -> None:
        if record.get("train_time_s"):  # AGP prunes while fine-tuning
            metric("training time", f"`{record['name']}` ({record['steps']} steps)", " s", False, digits=1).add(
                backend, seed, record["train_time_s"])

    def timings(self, record: dict) -> list[tuple[str, str, str, dict | None]]:
        if not record.get("history"):  # a one-shot prune trains nothing
            return []
        return [("training time", record["name"], f"`{record['name']}`'s training", record.get("load"))]

    def histories(self, record: dict) -> list[list[dict]]:
        return [record["history"]] if record.get("history") else []

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        out = pruning_section(ix)
        items = []
        for b in ix.backends:
            evaluated = {(seed, slot): m["top1"] for seed, st in ix.stage_records(b, "evaluate")
                         for slot, m in st["models"].items()}
            by_stage: dict[str, list[tuple[int, dict]]] = {}
            for seed, st in ix.stage_records(b, "prune"):
                by_stage.setdefault(st["name"], []).append((seed, st))
            for name, recs in by_stage.items():
                st = recs[0][1]
                child = {}
                for seed, r in recs:  # the pruned model as evaluated at the end (after any fine-tuning)
                    after = r.get("accuracy_after_prune") or r.get("final") or {}
                    value = evaluated.get((seed, r["model"]), after.get("top1", after.get("val_top1")))
                    if value is not None:
                        child[seed] = value
                items.append((name, b, f"`{st['source']}` → `{st['model']}`",
                              {seed: r["accuracy_before"]["top1"] for seed, r in recs}, child, st["model"]))
        table_ = delta_table(ix, run_dir, meta, "**Pruned against its parent across seeds** (top-1 before pruning "
                             "and of the pruned model as evaluated at the end, paired by seed):", items)
        return out + table_

    def parent_rows(self, ix: ReportIndex, run_dir: Path, backend: str) -> list[list[Any]]:
        rows = []
        for seed, st in ix.stage_records(backend, "prune"):
            # A stage that started from the reference framework's weights has that framework's model as parent.
            parent_b = next((o for o in ix.backends if o != backend
                             and st.get("start_weights", "").startswith(f"{o}'s ")), backend)
            c = paired_prediction_files(run_dir, ix, (parent_b, st["source"]), (backend, st["model"]), seed)
            if c is None:
                continue
            parent = f"`{st['source']}`" + (f" ({title(parent_b)}'s)" if parent_b != backend else "")
            rows.append([title(backend), str(seed), f"{parent} → `{st['model']}`",
                         f"{st['method']} prune" + (" + fine-tune" if st.get("epochs") else ""), c])
        return rows

    def figures(self, results: list[dict], backends: list[str]) -> list[Any]:
        fig = sparsity_figure(results, backends)
        return [fig] if fig else []

    def how_note(self, who: str, record: dict) -> str | None:
        if not record.get("lowering"):
            return None
        return f"{who}, `{record['name']}` ({record['method']} pruning): {record['lowering']}"


register(Prune())
