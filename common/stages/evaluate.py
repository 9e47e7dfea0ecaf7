"""The `evaluate` stage: top-1, top-5 and loss of model slots on the validation split, with every prediction
saved for the paired statistics; its report part is the accuracy table and the per-sample comparison of the
frameworks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.backend_names import title
from common.report.markdown_table import table
from common.metrics import classification_metrics
from common.report.index import ReportIndex, fmt_values, paired_prediction_files
from common.stages.loop import RunContext, evaluate_logits
from common.stages.registry import MetricFactory, ModelsSlots, RowSink, Stage, StageType, register


@dataclass(frozen=True)
class EvaluateStage(ModelsSlots):
    name: str
    models: tuple[str, ...] = field(metadata={"nonempty": True})


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


def accuracy_section(ix: ReportIndex) -> str:
    """Top-1 and top-5 per evaluated slot and backend; each other backend's top-1 minus the reference's."""
    eval_slots: list[str] = []
    for b in ix.backends:
        for _, st in ix.stage_records(b, "evaluate"):
            eval_slots += [s for s in st["models"] if s not in eval_slots]
    ref, others = ix.backends[0] if ix.backends else None, ix.backends[1:]
    rows = []
    for slot in eval_slots:
        per = {b: ix.values(b, "evaluate", slot, "top1") for b in ix.backends}
        row = [f"`{slot}`"] + [fmt_values(per[b], 100, unit="%") for b in ix.backends]
        for other in others:
            a, c = per[ref], per[other]
            n = min(len(a), len(c))
            row.append(fmt_values([y - x for x, y in zip(a[:n], c[:n])], 100, unit=" pts") if n else "–")
        row += [fmt_values(ix.values(b, "evaluate", slot, "top5"), 100, unit="%") for b in ix.backends]
        rows.append(row)
    header = (["model"] + [f"{title(b)} top-1" for b in ix.backends]
              + [f"Δ top-1 ({title(o)} − {title(ref)})" for o in others]
              + [f"{title(b)} top-5" for b in ix.backends])
    return "## Accuracy on the validation split\n\n" + table(header, rows) + "\n"


def agreement_section(run_dir: Path, ix: ReportIndex) -> str:
    """Per-sample comparison of each framework with the reference on the validation split (same seed and slot)."""
    if len(ix.backends) < 2:
        return ""
    a = ix.backends[0]
    out: list[str] = []
    for b in ix.backends[1:]:
        rows, missing = [], 0
        for seed, st in ix.stage_records(a, "evaluate"):
            for slot in st["models"]:
                c = paired_prediction_files(run_dir, ix, (a, slot), (b, slot), seed)
                if c is None:
                    missing += 1
                    continue
                rows.append([f"`{slot}`", str(seed), f"{c['agreement'] * 100:.1f}%", str(c["only_a_correct"]),
                             str(c["only_b_correct"]), f"{c['diff'] * 100 + 0.0:+.2f} [{c['diff_ci95'][0] * 100 + 0.0:+.2f}, "
                             f"{c['diff_ci95'][1] * 100 + 0.0:+.2f}]", f"{c['mcnemar_p']:.3g}"])
        if not rows:
            continue
        na, nb = title(a), title(b)
        heading = "## Same samples, same answers? (per-sample comparison of the frameworks)\n\n"
        out += [heading if not out else f"### {nb} against {na}\n\n",
                table(["model", "seed", "same prediction", f"only {na} right", f"only {nb} right",
                       f"Δ top-1 ({nb} − {na}), pts [95% CI]", "McNemar p"], rows),
                "\nMcNemar's exact test on the samples only one framework classifies correctly: a small p means the "
                "accuracy difference is unlikely to be chance on this validation split.\n"]
        if missing:
            out.append(f"\n({missing} model(s) without saved predictions on both backends are left out.)\n")
        out.append("\n")
    return "".join(out)


class Evaluate(StageType):
    name, config = "evaluate", EvaluateStage
    reads_int8 = True

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        return run_evaluate(ctx, stage)

    def metrics(self, metric: MetricFactory, backend: str, seed: int, result: dict, record: dict) -> None:
        for slot, m in record["models"].items():
            metric("accuracy", f"top-1 `{slot}`", "%", True, 100).add(backend, seed, m["top1"])

    def csv_rows(self, add: RowSink, result: dict, record: dict) -> None:
        for slot, m in record["models"].items():
            for k in ("top1", "top5", "loss"):
                add(result, record["name"], slot, k, m[k])

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        return accuracy_section(ix) + agreement_section(run_dir, ix)


register(Evaluate())
