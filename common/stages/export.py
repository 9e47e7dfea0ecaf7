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
from common.metrics import (classification_metrics, latency_summary, logit_difference, time_alternating,
                             time_calls)
from common.pruning import name_artifact_layers, pruned_layer_sparsity
from common.report.index import ReportIndex, batch_order, fmt_count, fmt_values
from common.stages.loop import (RunContext, artifact_record, compile_record, compressed_size, failure_reason,
                                predict_validation)
from common.stages.registry import MetricFactory, ModelsSlots, RowSink, Stage, StageType, register


@dataclass(frozen=True)
class ExportStage(ModelsSlots):
    name: str
    models: tuple[str, ...] = field(metadata={"nonempty": True})
    measure: MeasureConfig = MeasureConfig()
    # Runtimes each artifact is measured on beside its framework's own (the `reference` runtime, always
    # measured): `onnxruntime` converts it with the framework's converter and runs it on ONNX Runtime.
    # `best`: the fastest correct deployment on the framework's own stack, chosen by measurement among the
    # reference runtime and the backend's candidates (export_candidates).
    runtimes: tuple[Literal["best", "onnxruntime"], ...] = ("best", "onnxruntime")
    # Candidates that compile the model for each batch size (PyTorch: torch.compile with Inductor) cost ~9-12 s per
    # model and batch size on a 2-core CPU (benchmarks/README.md), for batch 1, the parity probe and the stage's
    # largest timed size (validation is fed there: predict_validation) in the stage, and for each timed size again
    # in every paired-timing process: for kd_resnet50_mobilenet minutes more per seed, over `make run`'s budget.
    # Tried only when this is true; otherwise listed among the candidates as not tried.
    compile_candidates: bool = False


def time_batches(ctx: RunContext, what: str, predict: Callable[[np.ndarray], np.ndarray],
                 measure: MeasureConfig) -> dict[str, dict]:
    """p50/p90 latency per batch size on the shared validation images, each window's background load beside it."""
    latency = {}
    for bs in measure.batch_sizes:
        x = ctx.stream.val_images(bs)
        ctx.progress.say(f"{what} latency at batch {bs} ({measure.warmup} warm-up, {measure.repeats} timed)")
        predict(x)  # first call outside the window: a runtime that compiles per input shape does it here
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
        reason = failure_reason(e)
        ctx.progress.say(f"{stage.name}: {slot} {onnx_runtime.ON} unavailable ({reason})")
        return {"status": "unavailable", "reason": reason, "runtime": onnx_runtime.runtime_name()}
    acc = classification_metrics(*predict_validation(predict, ctx.stream))
    latency = time_batches(ctx, f"{stage.name}: {slot} {onnx_runtime.ON}", predict, cfg.measure)
    ctx.progress.say(f"{stage.name}: {slot} {onnx_runtime.ON}: max |logit - artifact's| {check['max_abs']:.2g}, "
                     f"top-1 agreement {check['argmax_agree'] * 100:.1f}%, top1 {acc['top1'] * 100:.2f}%")
    return {"status": "ok", **artifact_record(onnx, ctx.out_dir), "runtime": onnx_runtime.runtime_name(),
            "threads": ctx.threads, "vs_artifact": check, "artifact_top1": acc["top1"], "latency": latency}


BEST_TOLERANCE = 1e-3  # max logit difference relative to the artifact's largest logit, and top-1 agreement 1.0


def unique_name(name: str, taken: set[str]) -> str:
    """The runtime's name, numbered when another candidate already has it: every candidate is timed and recorded
    under its own name, so two with the same one must not overwrite each other."""
    k, out = 2, name
    while out in taken:
        out, k = f"{name} #{k}", k + 1
    return out


def on_best(ctx: RunContext, stage: Stage, slot: str, model: Any, artifact: Any,
            artifact_predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """The framework's fastest correct deployment on its own stack: the reference runtime and each candidate the
    backend offers (export_candidates) are checked against the artifact on the probe batch and timed in
    alternation at the stage's first batch size; the fastest correct one is measured at every batch size. Every
    candidate's figures are recorded, and a candidate that fails is recorded with its reason."""
    cfg: ExportStage = stage.config
    bs0 = cfg.measure.batch_sizes[0]
    probe = ctx.stream.val_images(ctx.recipe.parity.probe_batch)
    expected = artifact_predict(probe)
    reference_name = ctx.backend.runtime_name()
    found: dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray], dict[str, float]]] = {}
    candidates: list[dict[str, Any]] = []
    try:
        offered = ctx.backend.export_candidates(model, artifact, ctx.stream.val_images(2),
                                                ctx.out_dir / "artifacts" / f"{slot}.candidates")
    except Exception as e:  # recorded and reported: the reference runtime stays the best one measured
        offered = []
        candidates.append({"runtime": "(the backend's candidates)", "status": "unavailable",
                           "reason": failure_reason(e)})
    for cand in offered:
        name = unique_name(ctx.backend.runtime_name(cand), {reference_name} | {c["runtime"] for c in candidates})
        if cand.extra.get("compiles") and not cfg.compile_candidates:
            candidates.append({"runtime": name, "format": cand.format, "status": "not tried",
                               "reason": "compiles per model and batch size; "
                                         f"stages.{stage.name}.compile_candidates=true tries it"})
            continue
        ctx.progress.say(f"{stage.name}: {slot}: loading candidate {name}")
        try:
            predict = ctx.backend.load_artifact(cand, ctx.threads)
            check = logit_difference(expected, predict(probe))
        except Exception as e:  # recorded and reported, as above
            candidates.append({"runtime": name, "format": cand.format, "status": "unavailable",
                               "reason": failure_reason(e)})
            continue
        correct = check["argmax_agree"] == 1.0 and check["max_rel"] < BEST_TOLERANCE
        candidates.append({"runtime": name, "format": cand.format, "status": "ok" if correct else "incorrect",
                           "vs_artifact": check,
                           **compile_record(predict)})
        if correct:
            found[name] = (cand, predict, check)
    x = ctx.stream.val_images(bs0)
    fns = {reference_name: lambda: artifact_predict(x)}
    fns.update({name: (lambda p=p: p(x)) for name, (_, p, _) in found.items()})
    ctx.progress.say(f"{stage.name}: {slot}: choosing the fastest of {len(fns)} deployment path(s) at batch {bs0}, "
                     f"alternating ({cfg.measure.warmup} warm-up, {cfg.measure.repeats} timed each)")
    for fn in fns.values():  # first calls outside the window, as in time_batches
        fn()
    with LoadMeter() as load:
        times = time_alternating(fns, cfg.measure.warmup, cfg.measure.repeats)
    p50 = {name: latency_summary(t)["p50_ms"] for name, t in times.items()}
    for c in candidates:
        if c["runtime"] in p50:
            c[f"batch_{bs0}_p50_ms"] = p50[c["runtime"]]
    candidates.insert(0, {"runtime": reference_name, "format": artifact.format, "status": "ok", "reference": True,
                          f"batch_{bs0}_p50_ms": p50[reference_name]})
    chosen = min(p50, key=p50.__getitem__)
    record: dict[str, Any] = {"status": "ok", "chosen": chosen, "chosen_at_batch": bs0, "candidates": candidates,
                              "selection_load": load.record()}
    if chosen == reference_name:
        ctx.progress.say(f"{stage.name}: {slot}: the reference runtime is the fastest ({reference_name})")
        return {**record, "is_reference": True}
    cand, predict, check = found[chosen]
    acc = classification_metrics(*predict_validation(predict, ctx.stream, max(cfg.measure.batch_sizes)))
    latency = time_batches(ctx, f"{stage.name}: {slot} on {chosen}", predict, cfg.measure)
    ctx.progress.say(f"{stage.name}: {slot}: fastest deployment {chosen}, top1 {acc['top1'] * 100:.2f}%")
    return {**record, "is_reference": False, **artifact_record(cand, ctx.out_dir), "runtime": chosen,
            "threads": ctx.threads, "vs_artifact": check,
            "artifact_top1": acc["top1"], "latency": latency}


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
        rec["runtimes"] = {}
        if "best" in cfg.runtimes:
            rec["runtimes"]["best"] = on_best(ctx, stage, slot, model, artifact, predict)
        if "onnxruntime" in cfg.runtimes:
            rec["runtimes"][onnx_runtime.NAME] = on_onnxruntime(ctx, stage, slot, model, artifact, predict)
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


Pick = Callable[[dict], list[dict]]  # a model record -> the records of one runtime it holds (none, or one)


def own(model_record: dict) -> list[dict]:
    """The model record itself: its latency is on the reference runtime."""
    return [model_record]


def slot_records(ix: ReportIndex, backend: str, pick: Pick) -> dict[str, list[tuple[dict, dict]]]:
    """slot -> (model record, picked record) of every seed's export stages on one backend, slots in order."""
    out: dict[str, list[tuple[dict, dict]]] = {}
    for _, st in ix.stage_records(backend, "export"):
        for slot, m in st["models"].items():
            out.setdefault(slot, []).extend((m, rec) for rec in pick(m))
    return {slot: recs for slot, recs in out.items() if recs}


def measured_batch_sizes(ix: ReportIndex, pick: Pick) -> list[str]:
    """Every batch size any picked record measured (export stages may measure different ones): one column each."""
    return sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "export")
                   for m in st["models"].values() for rec in pick(m) for bs in rec["latency"]}, key=batch_order)


def artifacts_section(ix: ReportIndex) -> str:
    rows = []
    batch_sizes = measured_batch_sizes(ix, own)
    for b in ix.backends:
        for slot, pairs in slot_records(ix, b, own).items():
            recs = [m for m, _ in pairs]
            lat_cells = []
            for bs in batch_sizes:
                p50 = [r["latency"][bs]["p50_ms"] for r in recs if bs in r["latency"]]
                p90 = [r["latency"][bs]["p90_ms"] for r in recs if bs in r["latency"]]
                lat_cells.append(f"{fmt_values(p50)} / {fmt_values(p90)}" if p50 else "–")
            rows.append([f"`{slot}`", title(b), fmt_count(recs[0]["params"]), fmt_count(recs[0]["macs"]),
                         fmt_values([r["size_mb"] for r in recs]),
                         fmt_values([r["artifact_top1"] for r in recs], 100, unit="%")] + lat_cells)
    if not rows:  # a recipe without an export stage (its int8 pair is in the quantization section)
        return ""
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


def best_of(model_record: dict) -> list[dict]:
    """The record whose latency is the model's best deployment: the best candidate's, or the model record itself
    when the reference runtime was the fastest (none in results from before issue 14)."""
    return [model_record if best["is_reference"] else best for best in chosen_best(model_record)]


def chosen_best(model_record: dict) -> list[dict]:
    """The model's `best` runtime record (the choice and every candidate), when the choice was made."""
    best = (model_record.get("runtimes") or {}).get("best")
    return [best] if best and best.get("status") == "ok" else []


def any_onnx(model_record: dict) -> list[dict]:
    """The model's ONNX Runtime record, converted or not (none in results from before issue 14)."""
    ort = (model_record.get("runtimes") or {}).get(onnx_runtime.NAME)
    return [ort] if ort else []


def ok_onnx(model_record: dict) -> list[dict]:
    """The model's ONNX Runtime record, when it converted and ran."""
    return [ort for ort in any_onnx(model_record) if ort.get("status") == "ok"]


def best_section(ix: ReportIndex) -> str:
    """Which deployment path was fastest for each model on each framework's own stack, with every candidate's
    figure at the batch size the choice was made."""
    rows = []
    batch_sizes = measured_batch_sizes(ix, best_of)
    for b in ix.backends:
        for slot, recs in slot_records(ix, b, chosen_best).items():
            chosen = sorted({best["chosen"] for _, best in recs})
            tried = []
            for c in recs[0][1]["candidates"]:
                bs0 = recs[0][1]["chosen_at_batch"]
                figure = c.get(f"batch_{bs0}_p50_ms")
                state = (f"{figure:.2f} ms" if figure is not None and c["status"] == "ok"
                         else c["status"] + (f": {c['reason']}" if c.get("reason") else ""))
                tried.append(f"{c['runtime']} ({state})")
            lat_cells = [fmt_values([lat[bs]["p50_ms"] for m, _ in recs for lat in [best_of(m)[0]["latency"]]
                                     if bs in lat]) for bs in batch_sizes]
            rows.append([f"`{slot}`", title(b), " / ".join(chosen), "; ".join(tried)] + lat_cells)
    if not rows:
        return ""
    return ("## Each framework's best runtime (chosen by measurement)\n\n"
            + table(["model", "backend", "fastest correct path",
                     "candidates (first seed's run, p50 at the first batch size)"]
                    + [f"batch {bs} p50 ms" for bs in batch_sizes], rows)
            + "\nEach candidate runs the same model on the framework's own stack; it counts only if its outputs "
              f"match the exported artifact's (top-1 agreement 100%, max logit difference under "
              f"{BEST_TOLERANCE:g} of the largest logit). They are timed in alternation; the fastest is then "
              "measured at every batch size.\n\n")


def onnx_section(ix: ReportIndex) -> str:
    """Each artifact on ONNX Runtime: the conversion check against the framework's own artifact, accuracy and
    latency, or why it is unavailable."""
    rows, notes, runtimes = [], [], set()
    batch_sizes = measured_batch_sizes(ix, ok_onnx)
    for b in ix.backends:
        for slot, pairs in slot_records(ix, b, any_onnx).items():
            recs = [{**ort, "reference": m} for m, ort in pairs]
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
                lat_cells.append(f"{fmt_values(ort)} (reference runtime {fmt_values(ref)})" if ort else "–")
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
                metric("latency", f"batch {bs} p50 `{slot}`", " ms", False, runtime_kind="reference").add(
                    backend, seed, lat["p50_ms"], runtime=m.get("runtime"))
            for best in best_of(m):  # each framework's fastest correct deployment on its own stack
                # a candidate left out (Inductor without compile_candidates) makes this figure an upper bound
                untried = {c["runtime"]: c.get("reason", "") for choice in chosen_best(m)
                           for c in choice.get("candidates", []) if c.get("status") == "not tried"}
                for bs, lat in best["latency"].items():
                    metric("latency", f"batch {bs} p50 `{slot}` on each framework's best runtime", " ms",
                           False).add(backend, seed, lat["p50_ms"], untried=untried)
            for ort in ok_onnx(m):  # like with like: ONNX Runtime against ONNX Runtime
                for bs, lat in ort["latency"].items():
                    metric("latency", f"batch {bs} p50 `{slot}` {onnx_runtime.ON}", " ms",
                           False).add(backend, seed, lat["p50_ms"])

    def csv_rows(self, add: RowSink, result: dict, record: dict) -> None:
        for slot, m in record["models"].items():
            for k in ("size_bytes", "params", "macs", "flops", "artifact_top1"):
                add(result, record["name"], slot, k, m[k])
            for bs, lat in m["latency"].items():
                for k in ("p50_ms", "p90_ms"):
                    add(result, record["name"], slot, f"latency_b{bs}_{k}", lat[k])
            for best in best_of(m):
                for bs, lat in best["latency"].items():
                    add(result, record["name"], slot, f"best_latency_b{bs}_p50_ms", lat["p50_ms"])
            for ort in ok_onnx(m):
                add(result, record["name"], slot, "onnxruntime_max_abs_logit_diff", ort["vs_artifact"]["max_abs"])
                add(result, record["name"], slot, "onnxruntime_top1", ort["artifact_top1"])
                for bs, lat in ort["latency"].items():
                    for k in ("p50_ms", "p90_ms"):
                        add(result, record["name"], slot, f"onnxruntime_latency_b{bs}_{k}", lat[k])

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        return artifacts_section(ix) + best_section(ix) + onnx_section(ix)

    def timings(self, record: dict) -> list[tuple[str, str, str, dict | None]]:
        return ([("latency", slot, f"`{slot}`'s batch-{bs} latency", lat.get("load"))
                 for slot, m in record["models"].items() for bs, lat in m["latency"].items()]
                + [("latency", slot, f"`{slot}`'s batch-{bs} latency on its best runtime", lat.get("load"))
                   for slot, m in record["models"].items() for best in best_of(m) if best is not m
                   for bs, lat in best["latency"].items()]
                + [("latency", slot, f"`{slot}`'s batch-{bs} latency {onnx_runtime.ON}", lat.get("load"))
                   for slot, m in record["models"].items() for ort in ok_onnx(m)
                   for bs, lat in ort["latency"].items()])

    def conversions(self, record: dict) -> list[tuple[str, str, float, float]]:
        return [(slot, ort["runtime"], m["artifact_top1"], ort["artifact_top1"])
                for slot, m in record["models"].items() for ort in ok_onnx(m)]

    def timed_artifacts(self, record: dict) -> list[tuple[str, dict, str]]:
        # results written before export records named their entry file cannot be reopened
        return ([(f"models.{slot}", m, "fp32") for slot, m in record["models"].items() if "entry" in m]
                + [(f"models.{slot}.runtimes.best", best, "fp32") for slot, m in record["models"].items()
                   for best in best_of(m) if best is not m]
                + [(f"models.{slot}.runtimes.onnxruntime", ort, "onnx") for slot, m in record["models"].items()
                   for ort in ok_onnx(m)])


register(Export())
