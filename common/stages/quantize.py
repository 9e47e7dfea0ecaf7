"""The `quantize` stage: fp32 model -> int8 artifact on each backend's deployment runtime, measured against
the fp32 artifact of the same weights with the same inputs, warm-up, repeats and threads; its report part is
the Quantization section and the int8-vs-fp32 figure.

Which tool does the work (torch.ao FX on fbgemm, PaddleSlim) is the backend's business; what is
calibrated on, how long QAT trains, and how the two artifacts are compared is decided here, once.
"""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from backends.base import ExportedArtifact, QuantizedModel
from common.backend_names import color, title
from common.config import MeasureConfig, OptimizerConfig, ScheduleConfig
from common import onnx_runtime
from common.errors import RecipeError
from common.load import LoadMeter
from common.report.markdown_table import table
from common.metrics import (classification_metrics, latency_summary, logit_difference, paired_predictions,
                            time_alternating)
from common.report.index import ReportIndex, batch_order, delta_table, fmt_values
from common.schema import bounds
from common.stages.loop import (RunContext, artifact_from_record, artifact_record, compile_record,
                               failure_reason, fit, predict_validation, start_from_reference)
from common.stages.registry import MetricFactory, RowSink, SlotState, Stage, StageType, register


@dataclass(frozen=True)
class QuantizeStage:
    """int8 quantization of a trained model into a new slot (default `<model>_int8`), exported and measured
    against the fp32 model with the same inputs, warm-up, repeats and threads.

    `ptq_static`: observers calibrated on `calibration_batches` batches of the shared training stream.
    `dynamic`: Linear weights int8, activations quantized at run time (CNNs gain little: only the head is Linear).
    `qat`: fake-quant fine-tuning for `epochs` under `optimizer`/`schedule`, then conversion.
    """
    name: str
    model: str
    output: str | None = None
    mode: Literal["ptq_static", "dynamic", "qat"] = "ptq_static"
    # How activation ranges are estimated (ptq_static): named the same on both backends; each backend
    # records which of its observers/algorithms realises it.
    calibration: Literal["histogram", "minmax", "moving_average"] = "histogram"
    calibration_batches: int = field(default=8, metadata=bounds(gt=0))
    per_channel_weights: bool = True
    # PyTorch's int8 engine: torch.ao.quantization FX on fbgemm (deprecated upstream), or torchao's pt2e flow with
    # X86InductorQuantizer, compiled by Inductor (ptq_static only). Paddle has one engine, PaddleSlim.
    torch_engine: Literal["fx", "pt2e"] = "fx"
    # Quantize the reference framework's trained weights on every backend (as prune does), so the two
    # toolchains quantize the same fp32 model; false: each quantizes the model it trained itself.
    start_from_reference: bool = True
    epochs: int = field(default=1, metadata=bounds(gt=0))  # qat only
    optimizer: OptimizerConfig = OptimizerConfig(name="sgd", lr=0.001, weight_decay=0.0)  # qat only
    schedule: ScheduleConfig = ScheduleConfig()  # qat only
    # qat only: before each validation (and so before conversion) recompute batch-norm statistics over this many
    # training batches of the shared fixed draw, fake-quant ranges held; as the train stage's option of that name.
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))
    # qat only: for the last N epochs the fake-quant ranges and batch-norm statistics stop moving (torch.ao
    # `disable_observer` and `freeze_bn_stats`; PaddleSlim's moving-average scale layers and batch norm in eval
    # mode) and only the weights train, as the PyTorch QAT tutorial does.
    freeze_epochs: int = field(default=0, metadata=bounds(ge=0))
    measure: MeasureConfig = MeasureConfig()
    # Runtimes the int8 file and its fp32 parent are also measured on, as a pair: `onnxruntime` converts both
    # with the framework's converter (QDQ for int8) and times them on ONNX Runtime in alternation.
    runtimes: tuple[Literal["onnxruntime"], ...] = ("onnxruntime",)

    def outputs(self) -> tuple[str, ...]:
        return (self.output or f"{self.model}_int8",)

    def inputs(self) -> tuple[str, ...]:
        return (self.model,)

    def derived_from(self) -> dict[str, str]:
        return {self.outputs()[0]: self.model}




def calibration_batches(ctx: RunContext, n: int) -> list[np.ndarray]:
    """The first `n` batches of the shared training stream (epoch 0, then 1, ...): identical on both backends."""
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < n:
        for x, _ in ctx.stream.train_epoch(epoch):
            out.append(x)
            if len(out) == n:
                break
        epoch += 1
    return out


def run_quantize(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    cfg: QuantizeStage = stage.config
    out = cfg.outputs()[0]
    work = ctx.output_model(cfg.model, out)  # an fp32 copy: the input slot stays the fp32 parent
    start = start_from_reference(ctx, stage, work) if cfg.start_from_reference else "own trained weights"
    example = ctx.stream.val_images(2)
    art_dir = ctx.out_dir / "artifacts" / out
    lowering = ctx.backend.quantization_lowering(cfg)
    if "onnxruntime" in cfg.runtimes:
        onnx_runtime.require()
    ctx.progress.say(f"{stage.name}: {cfg.mode} of '{cfg.model}' with {lowering['tool']}")
    fp32_artifact = ctx.backend.export(work, example, art_dir / "fp32")
    # Converted before quantization touches the model (QAT inserts fake-quant layers into it).
    fp32_onnx = (convert_or_reason(lambda: ctx.backend.export_onnx(work, fp32_artifact, example,
                                                                   art_dir / "fp32.onnx"))
                 if "onnxruntime" in cfg.runtimes else None)
    record: dict[str, Any] = {"model": out, "source": cfg.model, "mode": cfg.mode, "start_weights": start,
                              "per_channel_weights": cfg.per_channel_weights, "lowering": lowering}
    t0 = time.perf_counter()
    if cfg.mode == "ptq_static":
        calib = calibration_batches(ctx, cfg.calibration_batches)
        record.update(calibration=cfg.calibration, calibration_batches=len(calib),
                      calibration_samples=int(sum(len(b) for b in calib)))
        qm = ctx.backend.quantize_static(work, cfg, calib, example, fp32_artifact, art_dir / "int8", ctx.threads)
    elif cfg.mode == "dynamic":
        qm = ctx.backend.quantize_dynamic(work, cfg, example, art_dir / "int8", ctx.threads)
    else:
        prepared = ctx.backend.prepare_qat(work, cfg, example)
        ctx.models[out] = prepared
        runner = ctx.backend.trainer(prepared, cfg.optimizer)
        record["qat"] = fit(ctx, stage, runner, prepared, cfg.epochs, cfg.optimizer, cfg.schedule,
                            cfg.bn_recalibration_batches, before_step=qat_freezer(ctx, stage, prepared))
        record["qat"]["frozen_from_epoch"] = cfg.epochs - cfg.freeze_epochs + 1 if cfg.freeze_epochs else None
        qm = ctx.backend.convert_qat(prepared, cfg, example, art_dir / "int8", ctx.threads)
    record["quantize_time_s"] = time.perf_counter() - t0
    ctx.models[out] = qm
    fp32_artifact, fp32_predict = parent_predictor(ctx, fp32_artifact, qm)
    record.update(measure_pair(ctx, stage, fp32_artifact, fp32_predict, qm))
    # No search among deployment paths for the int8 file: its runtime is the framework's one int8 path (why,
    # in the backend's words); the fp32 parent's best runtime is the export stage's, where the recipe exports it.
    record["runtimes"] = {"best": {"status": "reference only", "runtime": record["int8"]["runtime"],
                                   "reason": lowering.get("only_runtime", "")}}
    if fp32_onnx is not None:
        record["runtimes"][onnx_runtime.NAME] = on_onnxruntime(ctx, stage, fp32_predict, fp32_onnx, qm, record)
    return record


def qat_freezer(ctx: RunContext, stage: Stage, prepared: Any) -> Callable[[int], None] | None:
    """The loop's before-step hook that freezes the fake-quant ranges and batch-norm statistics at the first step
    of the last `freeze_epochs` epochs; None when the stage freezes nothing."""
    cfg: QuantizeStage = stage.config
    if not cfg.freeze_epochs:
        return None
    at = (cfg.epochs - cfg.freeze_epochs) * ctx.stream.steps_per_epoch

    def freeze(global_step: int) -> None:
        if global_step == at:
            ctx.backend.freeze_qat_statistics(prepared)
            ctx.progress.say(f"{stage.name}: fake-quant ranges and batch-norm statistics frozen for the last "
                             f"{cfg.freeze_epochs} epoch(s); only the weights train")
    return freeze


def parent_predictor(ctx: RunContext, fp32_artifact: ExportedArtifact,
                     qm: QuantizedModel) -> tuple[ExportedArtifact, Callable[[np.ndarray], np.ndarray]]:
    """The fp32 parent's artifact as the int8 model is compared with it, loaded once for every comparison: on
    the runtime the quantizer names (`fp32_runtime`, when the int8 runtime compiles its program, the parent is
    compiled the same way, which may take minutes), else on the framework's reference runtime."""
    if qm.info.get("fp32_runtime"):
        fp32_artifact = dataclasses.replace(fp32_artifact, extra={**fp32_artifact.extra,
                                                                  "runtime": qm.info["fp32_runtime"]})
    return fp32_artifact, ctx.backend.load_artifact(fp32_artifact, ctx.threads)


def convert_or_reason(convert: Callable[[], ExportedArtifact]) -> ExportedArtifact | str:
    """The converted file, or why the converter could not convert (a finding for the report, not a crash)."""
    try:
        return convert()
    except Exception as e:  # recorded and reported by on_onnxruntime
        return failure_reason(e)


def time_pair(ctx: RunContext, stage: Stage, fp32_predict: Callable[[np.ndarray], np.ndarray],
              int8_predict: Callable[[np.ndarray], np.ndarray], where: str) -> tuple[dict, dict, dict]:
    """fp32 and int8 latency per batch size, timed in alternation in one load window, and the int8 speed-up."""
    cfg: QuantizeStage = stage.config
    fp32_lat, int8_lat, speedup = {}, {}, {}
    for bs in cfg.measure.batch_sizes:
        x = ctx.stream.val_images(bs)
        ctx.progress.say(f"{stage.name}: fp32 and int8 latency{where} at batch {bs}, alternating "
                         f"({cfg.measure.warmup} warm-up, {cfg.measure.repeats} timed each)")
        fp32_predict(x), int8_predict(x)  # first calls outside the window (a runtime may compile per shape)
        with LoadMeter() as load:
            times = time_alternating({"fp32": lambda: fp32_predict(x), "int8": lambda: int8_predict(x)},
                                     cfg.measure.warmup, cfg.measure.repeats)
        window = load.record()  # one window: fp32 and int8 were timed in alternation
        fp32_lat[str(bs)] = {**latency_summary(times["fp32"]), "load": window}
        int8_lat[str(bs)] = {**latency_summary(times["int8"]), "load": dict(window)}
        if load.warning(f"the batch-{bs} int8/fp32 latency{where}"):
            ctx.progress.say(load.warning(f"the batch-{bs} int8/fp32 latency{where}"))
        speedup[str(bs)] = fp32_lat[str(bs)]["p50_ms"] / int8_lat[str(bs)]["p50_ms"]
    return fp32_lat, int8_lat, speedup


def on_onnxruntime(ctx: RunContext, stage: Stage, fp32_predict_own: Callable[[np.ndarray], np.ndarray],
                   fp32_onnx: ExportedArtifact | str, qm: QuantizedModel, record: dict) -> dict[str, Any]:
    """The fp32 file and the int8 file, each converted by the framework's converter, on ONNX Runtime: each
    checked against the framework's own file of the same model (max logit difference, top-1 agreement), their
    accuracy, the int8 drop and the int8 speed-up there. What separates the model from the runtime: the same
    int8 model on a neutral runtime. A file that does not convert or load is recorded with the reason."""
    cfg: QuantizeStage = stage.config
    name = onnx_runtime.runtime_name()
    int8_onnx = convert_or_reason(lambda: ctx.backend.export_quantized_onnx(
        qm, ctx.stream.val_images(2), ctx.out_dir / "artifacts" / cfg.outputs()[0] / "int8.onnx"))
    failed = [f"{kind}: {conv}" for kind, conv in (("fp32", fp32_onnx), ("int8", int8_onnx)) if isinstance(conv, str)]
    probe = ctx.stream.val_images(ctx.recipe.parity.probe_batch)
    try:
        if failed:
            raise RuntimeError("; ".join(failed))
        fp32_predict = onnx_runtime.load_predictor(fp32_onnx.entry, ctx.threads)
        int8_predict = onnx_runtime.load_predictor(int8_onnx.entry, ctx.threads)
        checks = {"fp32": logit_difference(fp32_predict_own(probe), fp32_predict(probe)),
                  "int8": logit_difference(qm.predict(probe), int8_predict(probe))}
    except Exception as e:  # recorded and reported: a path that does not convert is a finding
        reason = "; ".join(failed) if failed else failure_reason(e)
        ctx.progress.say(f"{stage.name}: fp32/int8 pair on ONNX Runtime unavailable ({reason})")
        return {"status": "unavailable", "reason": reason, "runtime": name}
    fp32_logits, labels = predict_validation(fp32_predict, ctx.stream)
    int8_logits, _ = predict_validation(int8_predict, ctx.stream)
    pairs = paired_predictions(fp32_logits.argmax(1), int8_logits.argmax(1), labels)
    fp32_lat, int8_lat, speedup = time_pair(ctx, stage, fp32_predict, int8_predict, " " + onnx_runtime.ON)
    root = ctx.out_dir
    out: dict[str, Any] = {"status": "ok", "runtime": name, "threads": ctx.threads, "speedup": speedup,
                           "accuracy_drop": -pairs["diff"], "comparison": pairs}
    for kind, art, logits, lat in (("fp32", fp32_onnx, fp32_logits, fp32_lat), ("int8", int8_onnx, int8_logits,
                                                                                int8_lat)):
        out[kind] = {**artifact_record(art, root), "runtime": name, "vs_artifact": checks[kind],
                     **classification_metrics(logits, labels), "latency": lat}
    b1 = str(cfg.measure.batch_sizes[0])
    ctx.progress.say(f"{stage.name}: on ONNX Runtime int8 {out['int8']['size_mb']:.2f} MB, top1 "
                     f"{out['fp32']['top1'] * 100:.2f}% -> {out['int8']['top1'] * 100:.2f}% (int8 file vs "
                     f"{record['int8']['runtime']}: top-1 agreement {checks['int8']['argmax_agree'] * 100:.1f}%), "
                     f"batch {b1} p50 {fp32_lat[b1]['p50_ms']:.2f} -> {int8_lat[b1]['p50_ms']:.2f} ms "
                     f"({speedup[b1]:.2f}x)")
    return out


def measure_pair(ctx: RunContext, stage: Stage, fp32_artifact: ExportedArtifact,
                 fp32_predict: Callable[[np.ndarray], np.ndarray], qm: QuantizedModel) -> dict[str, Any]:
    """Accuracy, per-sample agreement, size and latency of the int8 artifact next to its fp32 artifact."""
    cfg: QuantizeStage = stage.config
    timed_batch = max(cfg.measure.batch_sizes)  # validation of a compiling runtime reuses this size's compile
    fp32_logits, labels = predict_validation(fp32_predict, ctx.stream, timed_batch)
    int8_logits, _ = predict_validation(qm.predict, ctx.stream, timed_batch)
    fp32_acc, int8_acc = classification_metrics(fp32_logits, labels), classification_metrics(int8_logits, labels)
    pred_fp32, pred_int8 = fp32_logits.argmax(1), int8_logits.argmax(1)
    pairs = paired_predictions(pred_fp32, pred_int8, labels)
    pred_dir = ctx.out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    pred_path = pred_dir / f"{stage.name}__{cfg.outputs()[0]}.npz"
    np.savez_compressed(pred_path, pred_fp32=pred_fp32.astype(np.int16), pred_int8=pred_int8.astype(np.int16),
                        label=labels.astype(np.int16))
    fp32_lat, int8_lat, speedup = time_pair(ctx, stage, fp32_predict, qm.predict, "")
    root = ctx.out_dir
    fp32_rec = {**artifact_record(fp32_artifact, root), "runtime": ctx.backend.runtime_name(fp32_artifact),
                **fp32_acc, "latency": fp32_lat}
    int8_rec = {**artifact_record(qm.artifact, root), "runtime": qm.info["runtime"], "engine": qm.info["engine"],
                **int8_acc, "latency": int8_lat}
    # A runtime that compiles at load (pt2e's Inductor): the seconds it took, outside every timed window.
    fp32_rec.update(compile_record(fp32_predict))
    int8_rec.update(compile_record(qm.predict))
    size_ratio = int8_rec["size_bytes"] / fp32_rec["size_bytes"]
    b1 = str(cfg.measure.batch_sizes[0])
    ctx.progress.say(f"{stage.name}: int8 {int8_rec['size_mb']:.2f} MB ({size_ratio * 100:.0f}% of fp32), top1 "
                     f"{fp32_acc['top1'] * 100:.2f}% -> {int8_acc['top1'] * 100:.2f}%, same prediction on "
                     f"{pairs['agreement'] * 100:.1f}% of samples, batch {b1} p50 {fp32_lat[b1]['p50_ms']:.2f} -> "
                     f"{int8_lat[b1]['p50_ms']:.2f} ms ({speedup[b1]:.2f}x)")
    return {"fp32": fp32_rec, "int8": int8_rec, "size_ratio": size_ratio, "accuracy_drop": -pairs["diff"],
            "accuracy_drop_ci95": [-pairs["diff_ci95"][1], -pairs["diff_ci95"][0]], "comparison": pairs,
            "speedup": speedup, "latency_ratio": {k: 1 / v for k, v in speedup.items()}, "threads": ctx.threads,
            "predictions": str(pred_path.relative_to(root)),
            "framework_warnings": qm.info.get("framework_warnings", []),
            "kernel_notes": qm.info.get("kernel_notes", [])}


def ok_onnx_pair(record: dict) -> list[dict]:
    """The stage's fp32/int8 pair on ONNX Runtime, when both converted and ran (none in results from before)."""
    ort = (record.get("runtimes") or {}).get(onnx_runtime.NAME)
    return [ort] if ort and ort.get("status") == "ok" else []


def onnx_pair_section(ix: ReportIndex) -> str:
    """The int8 file and its fp32 parent on ONNX Runtime: how far each ONNX file is from its framework's own
    file, the int8 drop there, and the int8 speed-up on a runtime both frameworks share."""
    rows, notes = [], []
    batch_sizes = sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "quantize")
                          for ort in ok_onnx_pair(st) for bs in ort["fp32"]["latency"]}, key=batch_order)
    for b in ix.backends:
        for seed, st in ix.stage_records(b, "quantize"):
            ort = (st.get("runtimes") or {}).get(onnx_runtime.NAME)
            if not ort:
                continue
            if ort["status"] != "ok":
                notes.append(f"- {title(b)} `{st['name']}` seed {seed}: unavailable on ONNX Runtime ({ort['reason']}).\n")
                continue
            fp, q = ort["fp32"], ort["int8"]
            check = q["vs_artifact"]
            lat = [f"{fp['latency'][bs]['p50_ms']:.2f} → {q['latency'][bs]['p50_ms']:.2f} "
                   f"(×{q['latency'][bs]['p50_ms'] / fp['latency'][bs]['p50_ms']:.2f}; own runtime "
                   f"×{st['int8']['latency'][bs]['p50_ms'] / st['fp32']['latency'][bs]['p50_ms']:.2f})"
                   if bs in fp["latency"] and bs in q["latency"] and bs in st["int8"]["latency"] else "–"
                   for bs in batch_sizes]
            rows.append([f"`{st['name']}`", title(b), str(seed), q["format"],
                         f"{check['max_abs']:.2g} (largest logit {check['ref_scale']:.2g})",
                         f"{check['argmax_agree'] * 100:.1f}%",
                         f"{fp['top1'] * 100:.2f}% → {q['top1'] * 100:.2f}%"] + lat)
    if not rows and not notes:
        return ""
    out = ["**The same fp32 and int8 models on ONNX Runtime** (each framework's converter; int8 as "
           "QuantizeLinear/DequantizeLinear pairs):\n\n"]
    if rows:
        out.append(table(["stage", "backend", "seed", "int8 ONNX file", "\\|Δlogit\\| vs the int8 artifact",
                          "top-1 agreement", "top-1 fp32 → int8"]
                         + [f"batch {bs} p50 ms fp32 → int8 (ratio)" for bs in batch_sizes], rows))
    out.append("\n" + "".join(notes))
    out.append("\nOne runtime for both frameworks' files, fp32 and int8 timed in alternation: the int8 ratio here "
               "is the quantized model's, the ratio on each framework's own runtime adds its int8 kernels. The "
               "logit difference compares the int8 ONNX file with the framework's int8 artifact on the parity probe "
               "batch (the two runtimes may round differently).\n\n")
    return "".join(out)


def qat_summary(qat: dict[str, Any]) -> str:
    """How a QAT stage trained, in the quantization table's words: epochs, range freezing, batch-norm handling."""
    parts = [f"{qat['epochs']} epoch(s)"]
    if qat.get("frozen_from_epoch"):
        parts.append(f"ranges and BN frozen from epoch {qat['frozen_from_epoch']}")
    if qat.get("bn_recalibration_batches"):
        parts.append(f"BN recalibrated on {qat['bn_recalibration_batches']} batches")
    return ", ".join(parts)


def quantization_section(ix: ReportIndex) -> str:
    """int8 artifact next to the fp32 artifact of the same weights, per backend and seed."""
    rows, lowerings, starts, warned, kernels, compiles = [], {}, set(), {}, {}, {}
    batch_sizes = sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "quantize")
                          for bs in st["fp32"]["latency"]}, key=batch_order)
    for b in ix.backends:
        for seed, st in ix.stage_records(b, "quantize"):
            fp, q = st["fp32"], st["int8"]
            lo, hi = st["accuracy_drop_ci95"]
            cmp = st["comparison"]
            calib = (f"{st['calibration']}, {st['calibration_batches']} batches" if st["mode"] == "ptq_static"
                     else qat_summary(st["qat"]) if st.get("qat") else "–")
            lat = [f"{fp['latency'][bs]['p50_ms']:.2f} → {q['latency'][bs]['p50_ms']:.2f} "
                   f"(×{q['latency'][bs]['p50_ms'] / fp['latency'][bs]['p50_ms']:.2f})"
                   if bs in fp["latency"] and bs in q["latency"] else "–" for bs in batch_sizes]
            rows.append([f"`{st['name']}`", title(b), str(seed), f"{st['mode']} ({calib})",
                         f"{fp['size_mb']:.2f} → {q['size_mb']:.2f} ({st['size_ratio'] * 100:.0f}%)",
                         f"{fp['top1'] * 100:.2f}% → {q['top1'] * 100:.2f}%",
                         f"{st['accuracy_drop'] * 100 + 0.0:+.2f} [{lo * 100 + 0.0:+.2f}, {hi * 100 + 0.0:+.2f}]",
                         f"{cmp['agreement'] * 100:.1f}%", f"{cmp['mcnemar_p']:.3g}"] + lat)
            lowerings[(b, st["name"])] = st["lowering"]
            if q.get("compile_s") is not None:
                # results written before compile_batches was recorded compiled batches 1 and 2 at load
                batches = tuple(q.get("compile_batches") or (1, 2))
                compiles.setdefault((b, st["name"], batches), []).append((fp.get("compile_s"), q["compile_s"]))
            starts.add(f"{title(b)}: {st['start_weights']}")
            warned.setdefault(b, set()).update(st.get("framework_warnings", []))
            for note in st.get("kernel_notes", []):
                kernels.setdefault((b, note), []).append(str(seed))
    if not rows:
        return ""
    out = ["## Quantization (int8 file vs the fp32 file of the same weights)\n\n",
           table(["stage", "backend", "seed", "mode", "file MB fp32 → int8", "top-1 fp32 → int8",
                   "drop, pts [95% CI]", "same prediction", "McNemar p"]
                  + [f"batch {bs} p50 ms fp32 → int8 (ratio)" for bs in batch_sizes], rows), "\n"]
    several = len({name for _, name in lowerings}) > 1  # then each line names its stage
    for (b, name), lw in lowerings.items():
        engine = f" (engine {lw['engine']})" if lw.get("engine") and lw["engine"] not in lw["tool"] else ""
        out.append(f"- {title(b)}{f' `{name}`' if several else ''}: {lw['tool']}{engine}; weights {lw['weights']}; "
                   f"activations {lw['activations']}; calibration {lw['calibration']}; int8 runtime "
                   f"{lw['runtime']}.\n")
    only = {(b, lw["runtime"], lw["only_runtime"]) for (b, _), lw in lowerings.items() if lw.get("only_runtime")}
    for b, runtime, why in sorted(only):
        out.append(f"- {title(b)}'s best int8 runtime is the one above ({runtime}): {why}.\n")
    for (b, name, batches), times in compiles.items():
        fp32 = [f for f, _ in times if f is not None]
        sizes = " and ".join(str(n) for n in batches)
        out.append(f"- {title(b)} `{name}`: the int8 program compiled at load for batch {sizes} in "
                   f"{fmt_values([q for _, q in times], digits=1)} s"
                   + (f", its fp32 parent in {fmt_values(fp32, digits=1)} s" if fp32 else "")
                   + "; every other batch size compiles on its first call, made before the timed window.\n")
    out.append("- Quantization started from " + "; ".join(sorted(starts)) + ".\n")
    out.append("- Both files are measured with the same inputs, warm-up, repeats and threads, timed in alternation "
               "(fp32, int8, fp32, ...); the drop is fp32 top-1 minus int8 top-1 on the validation split with a "
               "95% interval over the paired per-sample differences; McNemar's exact test asks whether the samples "
               "only one of the two gets right are lopsided.\n")
    if len({lw["activations"] for lw in lowerings.values()}) > 1:
        out.append("- The activation schemes differ between the frameworks (see above): each uses its own int8 "
                   "kernels' native scheme.\n")
    for (b, note), seeds in kernels.items():
        out.append(f"- {title(b)} int8 kernels (seed {', '.join(seeds)}): {note}.\n")
    for b, msgs in warned.items():
        if msgs:
            out.append(f"- {title(b)} warned: " + "; ".join(f"\"{m}\"" for m in sorted(msgs)) + "\n")
    out.append("\n")
    return "".join(out)


def quantization_figure(results: list[dict], backends: list[str]) -> Any:
    """int8 against fp32 per framework: file size, top-1, batch-1 latency (mean over seeds, error bar = std)."""
    from common.report.plots import Figure, plt, png
    vals: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in results:
        for st in r.get("stages", []):
            if st.get("status") == "ok" and st["type"] == "quantize":
                for kind in ("fp32", "int8"):
                    rec = st[kind]
                    bs = next(iter(rec["latency"]))
                    vals[(r["backend"], kind, "size")].append(rec["size_mb"])
                    vals[(r["backend"], kind, "top1")].append(rec["top1"] * 100)
                    vals[(r["backend"], kind, "lat")].append(rec["latency"][bs]["p50_ms"])
    if not vals:
        return None
    present = [b for b in backends if (b, "fp32", "size") in vals]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    width = 0.38
    for ax, (key, label) in zip(axes, (("size", "file MB"), ("top1", "top-1 (%)"), ("lat", "batch-1 p50 ms"))):
        x = np.arange(len(present))
        for k, (kind, hatch) in enumerate((("fp32", ""), ("int8", "//"))):
            means = [np.mean(vals[(b, kind, key)]) for b in present]
            stds = [np.std(vals[(b, kind, key)], ddof=1) if len(vals[(b, kind, key)]) > 1 else 0 for b in present]
            bars = ax.bar(x + (k - 0.5) * width, means, width, yerr=stds, capsize=3, label=kind, hatch=hatch,
                          color=[color(b) for b in present], alpha=0.55 if kind == "fp32" else 0.95,
                          edgecolor="black", linewidth=0.6)
            ax.bar_label(bars, fmt="%.1f" if key != "lat" else "%.2f", fontsize=7, padding=2)
        ax.set_xticks(x, [title(b) for b in present])
        ax.set_title(label, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return Figure("int8_vs_fp32", "int8 vs fp32",
                  "The int8 file against the fp32 file of the same weights, on each framework's deployment runtime.",
                  png(fig))


class Quantize(StageType):
    name, config = "quantize", QuantizeStage

    def check(self, cfg: QuantizeStage, state: SlotState, source: str, path: str) -> None:
        if cfg.model not in state.trained:
            raise RecipeError(source, f"{path}.model", "a model trained by an earlier train/distill stage (or "
                              "pruned from one): quantizing untrained weights gives meaningless int8 outputs",
                              f"{cfg.model} (initial weights)")
        if cfg.torch_engine == "pt2e" and cfg.mode != "ptq_static":
            raise RecipeError(source, f"{path}.torch_engine", "'fx' for mode '" + cfg.mode + "' (the pt2e engine "
                              "runs ptq_static here: pt2e QAT trains an exported graph the training loop does not "
                              "drive)", cfg.torch_engine)
        if cfg.mode == "qat" and cfg.freeze_epochs > cfg.epochs:
            raise RecipeError(source, f"{path}.freeze_epochs", f"at most epochs ({cfg.epochs}): ranges and "
                              "statistics freeze for the last N of the QAT epochs", cfg.freeze_epochs)
        if cfg.mode == "qat" and cfg.model in state.masked:
            raise RecipeError(source, f"{path}.mode", "'ptq_static' for a magnitude-pruned model: fake-quant "
                              "training would regrow the pruned weights", cfg.mode)

    def update(self, cfg: QuantizeStage, state: SlotState) -> None:
        super().update(cfg, state)
        state.int8.update(cfg.outputs())

    def run(self, ctx: RunContext, stage: Stage) -> dict[str, Any]:
        return run_quantize(ctx, stage)

    def reopen(self, ctx: RunContext, stage: Stage, record: dict, out_dir: Path) -> bool:
        """An int8 slot is its artifact: reopen it instead of re-quantizing."""
        for dst, src in stage.config.derived_from().items():
            ctx.models[dst] = ctx.backend.load_quantized(artifact_from_record(record["int8"], out_dir), ctx.threads)
            ctx.model_cfgs[dst] = ctx.model_cfgs[src]
        return True

    def metrics(self, metric: MetricFactory, backend: str, seed: int, result: dict, record: dict) -> None:
        # The int8 slot is measured here (it cannot be exported again); the fp32 file of the same weights
        # only counts where no export stage measured that slot.
        exported = {slot for s2 in result["stages"] if s2["type"] == "export" for slot in s2.get("models", {})}
        for kind, slot in (("int8", record["model"]), ("fp32", record["source"])):
            rec = record[kind]
            if kind == "fp32" and slot in exported:
                continue
            metric("accuracy", f"top-1 `{slot}`", "%", True, 100).add(backend, seed, rec["top1"])
            metric("size", f"file `{slot}`", " MB", False).add(backend, seed, rec["size_mb"])
            # int8 runs on its engine's only runtime, which is also its best; fp32 on the reference runtime
            kind_of_runtime = "reference" if kind == "fp32" else None
            for bs, lat in rec["latency"].items():
                metric("latency", f"batch {bs} p50 `{slot}`", " ms", False, runtime_kind=kind_of_runtime).add(
                    backend, seed, lat["p50_ms"], runtime=rec.get("runtime"))
        for ort in ok_onnx_pair(record):  # like with like: the int8 model on ONNX Runtime on both frameworks
            metric("accuracy", f"top-1 `{record['model']}` {onnx_runtime.ON}", "%", True, 100).add(
                backend, seed, ort["int8"]["top1"])
            # the fp32 parent too, where no export stage has its ONNX Runtime row: the like-with-like counterpart
            # of its reference-runtime rows, which compare unlike runtimes
            for kind, slot in (("fp32", record["source"]), ("int8", record["model"])):
                if kind == "fp32" and slot in exported:
                    continue
                for bs, lat in ort[kind]["latency"].items():
                    metric("latency", f"batch {bs} p50 `{slot}` {onnx_runtime.ON}", " ms", False).add(
                        backend, seed, lat["p50_ms"])
        if record.get("qat"):
            metric("training time", f"`{record['name']}` QAT ({record['qat']['steps']} steps)", " s", False,
                   digits=1).add(backend, seed, record["qat"]["train_time_s"])

    def csv_rows(self, add: RowSink, result: dict, record: dict) -> None:
        name, model = record["name"], record["model"]
        for kind in ("fp32", "int8"):
            add(result, name, model, f"{kind}_size_bytes", record[kind]["size_bytes"])
            add(result, name, model, f"{kind}_top1", record[kind]["top1"])
            for bs, lat in record[kind]["latency"].items():
                add(result, name, model, f"{kind}_latency_b{bs}_p50_ms", lat["p50_ms"])
        for k in ("size_ratio", "accuracy_drop", "quantize_time_s"):
            add(result, name, model, k, record[k])
        add(result, name, model, "prediction_agreement", record["comparison"]["agreement"])
        for bs, v in record["speedup"].items():
            add(result, name, model, f"speedup_b{bs}", v)
        for ort in ok_onnx_pair(record):
            for kind in ("fp32", "int8"):
                add(result, name, model, f"onnxruntime_{kind}_top1", ort[kind]["top1"])
                add(result, name, model, f"onnxruntime_{kind}_max_abs_logit_diff", ort[kind]["vs_artifact"]["max_abs"])
                for bs, lat in ort[kind]["latency"].items():
                    add(result, name, model, f"onnxruntime_{kind}_latency_b{bs}_p50_ms", lat["p50_ms"])
            for bs, v in ort["speedup"].items():
                add(result, name, model, f"onnxruntime_speedup_b{bs}", v)
        if record.get("qat"):
            for k in ("train_time_s", "time_per_step_s"):
                add(result, name, model, k, record["qat"][k])

    def training_runs(self, record: dict) -> list[tuple[str, dict]]:
        if not record.get("qat"):  # QAT fine-tuning is training too
            return []
        return [(f"{record['name']} (QAT)", {"model": record["model"], **record["qat"]})]

    def timings(self, record: dict) -> list[tuple[str, str, str, dict | None]]:
        latency = [("latency", slot, f"`{slot}`'s batch-{bs} latency", lat.get("load"))
                   for kind, slot in (("fp32", record["source"]), ("int8", record["model"]))
                   for bs, lat in record[kind]["latency"].items()]
        latency += [("latency", slot, f"`{slot}`'s batch-{bs} latency {onnx_runtime.ON}", lat.get("load"))
                    for ort in ok_onnx_pair(record)
                    for kind, slot in (("fp32", record["source"]), ("int8", record["model"]))
                    for bs, lat in ort[kind]["latency"].items()]
        return latency + super().timings(record)

    def conversions(self, record: dict) -> list[tuple[str, str, float, float]]:
        return [(slot, ort["runtime"], record[kind]["top1"], ort[kind]["top1"]) for ort in ok_onnx_pair(record)
                for kind, slot in (("fp32", record["source"]), ("int8", record["model"]))]

    def timed_artifacts(self, record: dict) -> list[tuple[str, dict, str]]:
        return ([("fp32", record["fp32"], "fp32"), ("int8", record["int8"], "int8")]
                + [(f"runtimes.onnxruntime.{kind}", ort[kind], "onnx") for ort in ok_onnx_pair(record)
                   for kind in ("fp32", "int8")])

    def retimed(self, record: dict) -> None:
        for rec in [record] + ok_onnx_pair(record):
            fp, q = rec["fp32"]["latency"], rec["int8"]["latency"]
            rec["speedup"] = {bs: fp[bs]["p50_ms"] / q[bs]["p50_ms"] for bs in fp if bs in q}
        record["latency_ratio"] = {bs: 1 / v for bs, v in record["speedup"].items()}

    def histories(self, record: dict) -> list[list[dict]]:
        hist = record.get("history") or (record.get("qat") or {}).get("history")
        return [hist] if hist else []

    def section(self, ix: ReportIndex, run_dir: Path, meta: dict) -> str:
        out = quantization_section(ix) + onnx_pair_section(ix)
        items = []
        for b in ix.backends:
            by_stage: dict[str, list[tuple[int, dict]]] = {}
            for seed, st in ix.stage_records(b, "quantize"):
                by_stage.setdefault(st["name"], []).append((seed, st))
            for name, recs in by_stage.items():
                st = recs[0][1]
                items.append((name, b, f"`{st['source']}` → `{st['model']}`",
                              {seed: r["fp32"]["top1"] for seed, r in recs}, {seed: r["int8"]["top1"] for seed, r in recs},
                              st["model"]))
        table_ = delta_table(ix, run_dir, meta, "**int8 against fp32 across seeds** (top-1 of the two files, paired by "
                             "seed):", items)
        return out + table_

    def parent_rows(self, ix: ReportIndex, run_dir: Path, backend: str) -> list[list[Any]]:
        return [[title(backend), str(seed), f"`{st['source']}` → `{st['model']}`", f"int8 {st['mode']}",
                 st["comparison"]] for seed, st in ix.stage_records(backend, "quantize")]

    def figures(self, results: list[dict], backends: list[str]) -> list[Any]:
        fig = quantization_figure(results, backends)
        return [fig] if fig else []

    def how_note(self, who: str, record: dict) -> str | None:
        lw = record["lowering"]
        return f"{who}, `{record['name']}` ({record['mode']}): {lw['tool']}; runs on {lw['runtime']}"


register(Quantize())
