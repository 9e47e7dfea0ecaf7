"""How fast Paddle runs a frozen teacher's forward during distillation, per configuration, and how exact it is.

    python benchmarks/paddle_teacher_forward.py                         # resnet50 and mobilenet_v2, batch 64, 32 px
    python benchmarks/paddle_teacher_forward.py --archs resnet50 --rounds 40 --json out.json

Every distillation step runs the teacher in eval mode without gradients, returning its logits and the tapped
features the loss terms compare (here layer1-3 for ResNet50, features.3/6/13 for MobileNetV2, as
kd_methods_resnet50_mobilenet's attention transfer taps). Configurations, alternated round by round in one
process (per-op settings, nothing process-wide) on the same weights and batch:

  dygraph            Paddle's eager forward: im2col + MKL GEMM convolutions (runtime.cpu_tuning: false)
  depthwise-program  a to_static program with only the depthwise convolutions on oneDNN (slimbench's default
                     for depthwise teachers until 2026-12-03; for ResNet50 a plain static program)
  teacher-program    a to_static program with every convolution on oneDNN (slimbench's default 2026-12-03)
  predictor          frozen_forward.InferenceForward: Paddle Inference with oneDNN and IR optimisation, built in
                     memory (slimbench's default now)

For each it prints the median seconds per forward after `--warmup` rounds (oneDNN builds its primitives on the
first runs) and the largest error of each output relative to dygraph's largest value. Run it alone on the
machine: the background load over the timed rounds is recorded (common.load).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.run.runner import backend_env  # noqa: E402

os.environ.update(backend_env("paddle", cpu_tuning=True))  # MKL's AVX2 path on AMD, as a run's paddle worker

TAPS = {"resnet50": ["layer1", "layer2", "layer3"], "mobilenet_v2": ["features.3", "features.6", "features.13"]}


def _scramble_batch_norm(model, rng) -> None:
    """Running statistics away from 0 / 1: at initialisation eval-mode MobileNetV2 logits are ~1e-8."""
    import paddle
    for m in model.sublayers():
        if isinstance(m, paddle.nn.BatchNorm2D):
            m._mean.set_value(paddle.to_tensor(rng.uniform(-0.1, 0.1, m._mean.shape), dtype="float32"))
            m._variance.set_value(paddle.to_tensor(rng.uniform(0.5, 1.5, m._variance.shape), dtype="float32"))


def measure(arch: str, batch: int, size: int, rounds: int, warmup: int, threads: int) -> dict:
    import numpy as np
    import paddle
    from backends.base import load_backend
    from backends.paddle.distill import FeatureTaps, TappedForward
    from backends.paddle.frozen_forward import InferenceForward
    from backends.paddle.programs import OnednnDepthwiseProgram
    from common.config import ModelConfig
    from common.load import LoadMeter
    backend = load_backend("paddle")
    backend.configure(threads, "cpu", 0)
    rng = np.random.default_rng(0)
    teacher = backend.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    _scramble_batch_norm(teacher, rng)
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True
    taps = FeatureTaps(teacher, TAPS[arch])
    # one wrapper each: to_static converts the forward of the Layer it is given in place
    runners = {"dygraph": TappedForward(teacher, taps),
               "depthwise-program": OnednnDepthwiseProgram(TappedForward(teacher, taps), mode_of=teacher),
               "teacher-program": OnednnDepthwiseProgram(TappedForward(teacher, taps), mode_of=teacher,
                                                         onednn_ops=("depthwise_conv2d", "conv2d")),
               "predictor": InferenceForward(TappedForward(teacher, taps), teacher, threads)}
    x = paddle.to_tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    times: dict[str, list[float]] = {k: [] for k in runners}
    meter = LoadMeter()
    with paddle.no_grad():
        outputs = {k: [t.numpy() for t in r(x)] for k, r in runners.items()}
        for i in range(warmup + rounds):
            if i == warmup:
                meter.start()
            for k, run in runners.items():
                start = time.perf_counter()
                run(x)[0].numpy()
                if i >= warmup:
                    times[k].append(time.perf_counter() - start)
        meter.stop()
    taps.close()
    ref = outputs["dygraph"]
    names = ["logits", *TAPS[arch]]
    result = {"arch": arch, "batch": batch, "image_size": size, "threads": threads, "rounds": rounds,
              "warmup": warmup, "load": meter.record(), "configs": {}}
    for k, run in runners.items():
        result["configs"][k] = {
            "median_s": statistics.median(times[k]),
            "quartiles_s": statistics.quantiles(times[k], n=4),
            "onednn_ops": getattr(run, "onednn_ops", 0),
            "max_error_vs_dygraph": {n: float(np.abs(g - r).max() / np.abs(r).max())
                                     for n, g, r in zip(names, outputs[k], ref)}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet50,mobilenet_v2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here (must not exist)")
    args = parser.parse_args()
    from common.sysinfo import cpu_description, cpu_info
    out = {"cpu": cpu_description(cpu_info()), "mkl_debug_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"),
           "results": []}
    print(f"CPU: {out['cpu']}")
    for arch in args.archs.split(","):
        res = measure(arch, args.batch, args.size, args.rounds, args.warmup, args.threads)
        out["results"].append(res)
        dygraph = res["configs"]["dygraph"]["median_s"]
        print(f"\n{arch}, batch {args.batch}, {args.size} px, {args.threads} threads, {args.rounds} rounds "
              f"(background load {res['load'].get('background_cores')} cores)")
        print("| configuration | oneDNN ops | s/forward (median) | vs dygraph | max error vs dygraph |")
        print("|---|---|---|---|---|")
        for k, c in res["configs"].items():
            err = max(c["max_error_vs_dygraph"].values())
            print(f"| {k} | {c['onednn_ops']} | {c['median_s']:.3f} | {dygraph / c['median_s']:.2f}x | {err:.1e} |")
    if args.json:
        if args.json.exists():
            raise SystemExit(f"{args.json} exists; not overwritten")
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
