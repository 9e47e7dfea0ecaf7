"""The `quantize` stage: fp32 model -> int8 artifact on each backend's deployment runtime, measured against
the fp32 artifact of the same weights with the same inputs, warm-up, repeats and threads.

Which tool does the work (torch.ao FX on fbgemm, PaddleSlim) is the backend's business; what is
calibrated on, how long QAT trains, and how the two artifacts are compared is decided here, once.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import ExportedArtifact, QuantizedModel
from common.errors import UnsupportedStage
from common.metrics import classification_metrics, latency_summary, paired_predictions, time_alternating
from common.recipe import QuantizeStage, Stage
from common.stages import RunContext, fit, predict_validation, register_executor, start_from_reference


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


def _artifact_record(artifact: ExportedArtifact, root: Path) -> dict[str, Any]:
    return {"format": artifact.format, "files": [str(f.relative_to(root)) for f in artifact.files],
            "entry": str(artifact.entry.relative_to(root)), "extra": artifact.extra,
            "size_bytes": artifact.size_bytes, "size_mb": artifact.size_bytes / 1e6}


def artifact_from_record(rec: dict[str, Any], root: Path) -> ExportedArtifact:
    """The int8 artifact a finished quantize stage recorded (resume reopens it instead of re-quantizing)."""
    return ExportedArtifact(format=rec["format"], files=[root / f for f in rec["files"]], entry=root / rec["entry"],
                            extra=dict(rec.get("extra", {})))


def run_quantize(ctx: RunContext, stage: Stage) -> dict[str, Any]:
    cfg: QuantizeStage = stage.config
    out = cfg.outputs()[0]
    work = ctx.output_model(cfg.model, out)  # an fp32 copy: the input slot stays the fp32 parent
    start = start_from_reference(ctx, stage, work) if cfg.start_from_reference else "own trained weights"
    example = ctx.stream.val_images(2)
    art_dir = ctx.out_dir / "artifacts" / out
    lowering = ctx.backend.quantization_lowering(cfg)
    if lowering.get("unsupported"):
        raise UnsupportedStage(ctx.backend.name, f"quantize mode '{cfg.mode}'", lowering["unsupported"])
    ctx.progress.say(f"{stage.name}: {cfg.mode} of '{cfg.model}' with {lowering['tool']}")
    fp32_artifact = ctx.backend.export(work, example, art_dir / "fp32")
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
        record["qat"] = fit(ctx, stage, runner, prepared, cfg.epochs, cfg.optimizer, cfg.schedule)
        qm = ctx.backend.convert_qat(prepared, cfg, example, art_dir / "int8", ctx.threads)
    record["quantize_time_s"] = time.perf_counter() - t0
    ctx.models[out] = qm
    record.update(measure_pair(ctx, stage, fp32_artifact, qm))
    return record


def measure_pair(ctx: RunContext, stage: Stage, fp32_artifact: ExportedArtifact, qm: QuantizedModel) -> dict[str, Any]:
    """Accuracy, per-sample agreement, size and latency of the int8 artifact next to its fp32 artifact."""
    cfg: QuantizeStage = stage.config
    fp32_predict = ctx.backend.load_artifact(fp32_artifact, ctx.threads)
    fp32_logits, labels = predict_validation(fp32_predict, ctx.stream)
    int8_logits, _ = predict_validation(qm.predict, ctx.stream)
    fp32_acc, int8_acc = classification_metrics(fp32_logits, labels), classification_metrics(int8_logits, labels)
    pred_fp32, pred_int8 = fp32_logits.argmax(1), int8_logits.argmax(1)
    pairs = paired_predictions(pred_fp32, pred_int8, labels)
    pred_dir = ctx.out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    pred_path = pred_dir / f"{stage.name}__{cfg.outputs()[0]}.npz"
    np.savez_compressed(pred_path, pred_fp32=pred_fp32.astype(np.int16), pred_int8=pred_int8.astype(np.int16),
                        label=labels.astype(np.int16))
    fp32_lat, int8_lat, speedup = {}, {}, {}
    for bs in cfg.measure.batch_sizes:
        x = ctx.stream.val_images(bs)
        ctx.progress.say(f"{stage.name}: fp32 and int8 latency at batch {bs}, alternating "
                         f"({cfg.measure.warmup} warm-up, {cfg.measure.repeats} timed each)")
        times = time_alternating({"fp32": lambda: fp32_predict(x), "int8": lambda: qm.predict(x)},
                                 cfg.measure.warmup, cfg.measure.repeats)
        fp32_lat[str(bs)], int8_lat[str(bs)] = latency_summary(times["fp32"]), latency_summary(times["int8"])
        speedup[str(bs)] = fp32_lat[str(bs)]["p50_ms"] / int8_lat[str(bs)]["p50_ms"]
    root = ctx.out_dir
    fp32_rec = {**_artifact_record(fp32_artifact, root), "runtime": ctx.backend.runtime_name(), **fp32_acc,
                "latency": fp32_lat}
    int8_rec = {**_artifact_record(qm.artifact, root), "runtime": qm.info["runtime"], "engine": qm.info["engine"],
                **int8_acc, "latency": int8_lat}
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
            "framework_warnings": qm.info.get("framework_warnings", [])}


register_executor("quantize", run_quantize)
