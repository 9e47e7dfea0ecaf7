"""The `export` stage: the deployable fp32 artifact of each model slot, measured from the file itself (size on
disk, params/MACs counted from the artifact, artifact accuracy, latency on the deployment runtime); its report
part is the exported-artifacts table."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from common import onnx_runtime
from common.backend_names import title
from common.config import MeasureConfig
from common.load import LoadMeter
from common.report.markdown_table import table
from common.metrics import classification_metrics, latency_summary, logit_difference, time_calls
from common.pruning import name_artifact_layers, pruned_layer_sparsity
from common.report.index import ReportIndex, batch_order, fmt_count, fmt_values
from common.stages.loop import RunContext, artifact_record, compressed_size, predict_validation
from common.stages.registry import MetricFactory, ModelsSlots, RowSink, Stage, StageType, register


@dataclass(frozen=True)
class ExportStage(ModelsSlots):
    name: str
    models: tuple[str, ...] = field(metadata={"nonempty": True})
    measure: MeasureConfig = MeasureConfig()
    # Runtimes each artifact is measured on beside its framework's own (the `reference` runtime, always
    # measured): `onnxruntime` converts it with the framework's converter and runs it on ONNX Runtime.
    runtimes: tuple[Literal["onnxruntime"], ...] = ("onnxruntime",)


def time_batches(ctx: RunContext, what: str, predict: Callable[[np.ndarray], np.ndarray],
                 measure: MeasureConfig) -> dict[str, dict]:
    """p50/p90 latency per batch size on the shared validation images, each window's background load beside it."""
    latency = {}
    for bs in measure.batch_sizes:
        x = ctx.stream.val_images(bs)
        ctx.progress.say(f"{what} latency at batch {bs} ({measure.warmup} warm-up, {measure.repeats} timed)")
        with LoadMeter() as load:
            times = time_calls(lambda: predict(x), measure.warmup, measure.repeats)
        latency[str(bs)] = {**latency_summary(times), "load": load.record()}
        if load.warning(f"{what}'s batch-{bs} latency"):
            ctx.progress.say(load.warning(f"{what}'s batch-{bs} latency"))
    return latency


def on_onnxruntime(ctx: RunContext, stage: Stage, slot: str, model: Any, artifact: Any,
                   artifact_predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """The artifact converted to ONNX by its framework's converter and measured on ONNX Runtime: outputs checked
    against the framework's artifact (max logit difference, top-1 agreement), accuracy and latency. A model the
    converter or ONNX Runtime cannot take is recorded as unavailable, with the reason, and the run goes on."""
    cfg: ExportStage = stage.config
    out_dir = ctx.out_dir / "artifacts" / f"{slot}.onnx"
    try:
        onnx = ctx.backend.export_onnx(model, artifact, ctx.stream.val_images(2), out_dir)
        predict = onnx_runtime.load_predictor(onnx.entry, ctx.threads)
        probe = ctx.stream.val_images(ctx.recipe.parity.probe_batch)
        check = logit_difference(artifact_predict(probe), predict(probe))
    except Exception as e:  # recorded and reported: a conversion failure is a finding, not a crash
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        ctx.progress.say(f"{stage.name}: {slot} on ONNX Runtime unavailable ({reason})")
        return {"status": "unavailable", "reason": reason, "runtime": onnx_runtime.runtime_name()}
    acc = classification_metrics(*predict_validation(predict, ctx.stream))
    latency = time_batches(ctx, f"{stage.name}: {slot} on ONNX Runtime", predict, cfg.measure)
    ctx.progress.say(f"{stage.name}: {slot} on ONNX Runtime: max |logit - artifact's| {check['max_abs']:.2g}, "
                     f"top-1 agreement {check['argmax_agree'] * 100:.1f}%, top1 {acc['top1'] * 100:.2f}%")
    return {"status": "ok", **artifact_record(onnx, ctx.out_dir), "runtime": onnx_runtime.runtime_name(),
            "threads": ctx.threads, "vs_artifact": check, "artifact_top1": acc["top1"], "latency": latency}


def run_export(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    """Export each model and measure the artifact itself: size on disk, params/MACs, accuracy, latency."""
    cfg: ExportStage = stage.config
    size = ctx.recipe.data.image_size
    if "onnxruntime" in cfg.runtimes:
        onnx_runtime.require()
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
        latency = time_batches(ctx, f"{stage.name}: {slot}", predict, cfg.measure)
        rec = {**artifact_record(artifact, ctx.out_dir), **stats,
               # Dense kernels store zeros like any other value: sparsity only shrinks a compressed file.
               "compressed_bytes": compressed_size(artifact.files) if stats["sparsity"]["overall"] > 0.01 else None,
               "runtime": ctx.backend.runtime_name(), "threads": ctx.threads,
               "artifact_vs_model": agreement, "artifact_top1": acc["top1"], "latency": latency}
        if "onnxruntime" in cfg.runtimes:
            rec["runtimes"] = {onnx_runtime.NAME: on_onnxruntime(ctx, stage, slot, model, artifact, predict)}
        out[slot] = rec
        b1 = latency[str(cfg.measure.batch_sizes[0])]
        ctx.progress.say(f"{stage.name}: {slot} {rec['size_mb']:.2f} MB, {stats['macs'] / 1e6:.1f} MMACs, "
                         f"artifact top1 {acc['top1'] * 100:.2f}%, batch {cfg.measure.batch_sizes[0]} "
                         f"p50 {b1['p50_ms']:.2f} ms")
    return {"models": out}


def deployment_runtimes(ix: ReportIndex) -> dict[str, tuple[str, str]]:
    """backend -> (runtime, artifact format) of its first exported model."""
    out = {}
    for b in ix.backends:
        for _, st in ix.stage_records(b, "export"):
            for rec in st["models"].values():
                out.setdefault(b, (rec["runtime"], rec["format"]))
    return out


def artifacts_section(ix: ReportIndex) -> str:
    rows = []
    # Export stages may measure different batch sizes: one column per size any of them measured.
    batch_sizes = sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "export")
                          for m in st["models"].values() for bs in m["latency"]}, key=batch_order)
    for b in ix.backends:
        slots: list[str] = []
        for _, st in ix.stage_records(b, "export"):
            slots += [s for s in st["models"] if s not in slots]
        for slot in slots:
            recs = [st["models"][slot] for _, st in ix.stage_records(b, "export") if slot in st["models"]]
            lat_cells = []
            for bs in batch_sizes:
                p50 = [r["latency"][bs]["p50_ms"] for r in recs if bs in r["latency"]]
                p90 = [r["latency"][bs]["p90_ms"] for r in recs if bs in r["latency"]]
                lat_cells.append(f"{fmt_values(p50)} / {fmt_values(p90)}" if p50 else "–")
            rows.append([f"`{slot}`", title(b), fmt_count(recs[0]["params"]), fmt_count(recs[0]["macs"]),
                         fmt_values([r["size_mb"] for r in recs]),
                         fmt_values([r["artifact_top1"] for r in recs], 100, unit="%")] + lat_cells)
    out = ["## Exported artifacts (measured from the files on disk)\n\n",
           table(["model", "backend", "params", "MACs", "file MB", "artifact top-1"]
                 + [f"batch {bs} latency p50 / p90 ms" for bs in batch_sizes], rows)]
    runtimes = deployment_runtimes(ix)
    if runtimes:
        out.append("\n" + "".join(f"- {title(b)}: artifact {fmt}; latency on {rt}.\n"
                                  for b, (rt, fmt) in runtimes.items()))
    out.append("\nParams and MACs are counted from the exported artifact (conv and matmul ops). Latency uses the "
               "same inputs, warm-up, repeats and thread count on both backends.\n\n")
    return "".join(out)


def ok_onnx(model_record: dict) -> list[dict]:
    """The model's ONNX Runtime record, when it converted and ran (none in results from before issue 14)."""
    ort = (model_record.get("runtimes") or {}).get(onnx_runtime.NAME)
    return [ort] if ort and ort.get("status") == "ok" else []


def onnx_section(ix: ReportIndex) -> str:
    """Each artifact on ONNX Runtime: the conversion check against the framework's own artifact, accuracy and
    latency, or why it is unavailable."""
    rows, notes, runtimes = [], [], set()
    batch_sizes = sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "export")
                          for m in st["models"].values() for o in ok_onnx(m) for bs in o["latency"]},
                         key=batch_order)
    for b in ix.backends:
        per_slot: dict[str, list[dict]] = {}
        for _, st in ix.stage_records(b, "export"):
            for slot, m in st["models"].items():
                ort = (m.get("runtimes") or {}).get(onnx_runtime.NAME)
                if ort:
                    per_slot.setdefault(slot, []).append({**ort, "reference": m})
        for slot, recs in per_slot.items():
            ok = [r for r in recs if r["status"] == "ok"]
            runtimes |= {r["runtime"] for r in recs}
            for r in recs:
                if r["status"] != "ok":
                    notes.append(f"- {title(b)} `{slot}`: unavailable on ONNX Runtime ({r['reason']}).\n")
            if not ok:
                continue
            lat_cells = []
            for bs in batch_sizes:
                ort = [r["latency"][bs]["p50_ms"] for r in ok if bs in r["latency"]]
                ref = [r["reference"]["latency"][bs]["p50_ms"] for r in ok if bs in r["reference"]["latency"]]
                lat_cells.append(f"{fmt_values(ort)} (own runtime {fmt_values(ref)})" if ort else "–")
            rows.append([f"`{slot}`", title(b), ok[0]["format"],
                         f"{max(r['vs_artifact']['max_abs'] for r in ok):.1e}",
                         fmt_values([r["vs_artifact"]["argmax_agree"] for r in ok], 100, unit="%"),
                         fmt_values([r["artifact_top1"] for r in ok], 100, unit="%")] + lat_cells)
    if not rows and not notes:
        return ""
    out = ["## The same artifacts on ONNX Runtime (neutral ground)\n\n"]
    if rows:
        out.append(table(["model", "backend", "ONNX file", "worst \\|Δlogit\\| vs artifact", "top-1 agreement",
                          "ONNX top-1"] + [f"batch {bs} p50 ms" for bs in batch_sizes], rows))
    out.append("\n" + "".join(notes))
    out.append(f"\nBoth frameworks' files run on one runtime ({'; '.join(sorted(runtimes))}), with the same "
               "inputs, threads, warm-up and repeats: a latency difference here is the model as converted, not the "
               "runtime. The logit difference and top-1 agreement compare each ONNX file with its framework's own "
               "artifact on the parity probe batch.\n\n")
    return "".join(out)


class Export(StageType):
    name, config = "export", ExportStage

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        return run_export(ctx, stage)

    def metrics(self, metric: MetricFactory, backend: str, seed: int, result: dict, record: dict) -> None:
        for slot, m in record["models"].items():
            metric("size", f"file `{slot}`", " MB", False).add(backend, seed, m["size_mb"])
            for bs, lat in m["latency"].items():
                metric("latency", f"batch {bs} p50 `{slot}`", " ms", False).add(backend, seed, lat["p50_ms"])
            for ort in ok_onnx(m):  # like with like: ONNX Runtime against ONNX Runtime
                for bs, lat in ort["latency"].items():
                    metric("latency", f"batch {bs} p50 `{slot}` on ONNX Runtime", " ms",
                           False).add(backend, seed, lat["p50_ms"])

    def csv_rows(self, add: RowSink, result: dict, record: dict) -> None:
        for slot, m in record["models"].items():
            for k in ("size_bytes", "params", "macs", "flops", "artifact_top1"):
                add(result, record["name"], slot, k, m[k])
            for bs, lat in m["latency"].items():
                for k in ("p50_ms", "p90_ms"):
                    add(result, record["name"], slot, f"latency_b{bs}_{k}", lat[k])
            for ort in ok_onnx(m):
                add(result, record["name"], slot, "onnxruntime_max_abs_logit_diff", ort["vs_artifact"]["max_abs"])
                add(result, record["name"], slot, "onnxruntime_top1", ort["artifact_top1"])
                for bs, lat in ort["latency"].items():
                    for k in ("p50_ms", "p90_ms"):
                        add(result, record["name"], slot, f"onnxruntime_latency_b{bs}_{k}", lat[k])

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        return artifacts_section(ix) + onnx_section(ix)

    def timings(self, record: dict) -> list[tuple[str, str, str, dict | None]]:
        return ([("latency", slot, f"`{slot}`'s batch-{bs} latency", lat.get("load"))
                 for slot, m in record["models"].items() for bs, lat in m["latency"].items()]
                + [("latency", slot, f"`{slot}`'s batch-{bs} latency on ONNX Runtime", lat.get("load"))
                   for slot, m in record["models"].items() for ort in ok_onnx(m)
                   for bs, lat in ort["latency"].items()])

    def timed_artifacts(self, record: dict) -> list[tuple[str, dict, str]]:
        # results written before export records named their entry file cannot be reopened
        return ([(f"models.{slot}", m, "fp32") for slot, m in record["models"].items() if "entry" in m]
                + [(f"models.{slot}.runtimes.onnxruntime", ort, "onnx") for slot, m in record["models"].items()
                   for ort in ok_onnx(m)])


register(Export())
