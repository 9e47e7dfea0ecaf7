"""Paddle dygraph training speed on the CPU, per optimizer, against torch on the same model, batch and threads.

    python benchmarks/paddle_cpu_training.py                    # resnet50 and mobilenet_v2, batch 64, 32 px
    python benchmarks/paddle_cpu_training.py --archs resnet50 --steps 10

Each configuration runs in a fresh process, because what is measured is process-wide: in Paddle 2.6 the
per-parameter adam/adamw kernel, once it has stepped a large model, leaves every later convolution of the
process slower. Configurations:
  paddle-adamw      paddle.optimizer.AdamW, what a Paddle user writes first
  paddle-slimbench  the paddle backend's trainer (AdamW as merged multi-tensor Adam + decoupled decay)
  paddle-momentum   paddle.optimizer.Momentum (no Adam kernel at all), for reference
  torch-slimbench   the torch backend's trainer (torch.optim.AdamW)
Prints the median seconds per step after warm-up and the ratio to torch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ("paddle-adamw", "paddle-slimbench", "paddle-momentum", "torch-slimbench")


def worker(config: str, arch: str, batch: int, size: int, warmup: int, steps: int, threads: int) -> dict:
    import numpy as np

    from backends.base import load_backend
    from common.recipe import ModelConfig, OptimizerConfig
    framework, how = config.split("-")
    backend = load_backend(framework)
    backend.configure(threads, "cpu", 0)
    model = backend.build_model(ModelConfig(arch=arch), 10)
    opt = OptimizerConfig(name="sgd" if how == "momentum" else "adamw", lr=0.002, weight_decay=0.05, momentum=0.9)
    runner = backend.trainer(model, opt)
    if how == "adamw":
        import paddle
        runner.optimizer = paddle.optimizer.AdamW(learning_rate=0.002, parameters=model.parameters(),
                                                  weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        runner.step(x, y, 0.002)
        times.append(time.perf_counter() - t0)
    return {"config": config, "arch": arch, "first_step_s": times[0], "step_s": float(np.median(times[warmup:])),
            "all_s": times}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,mobilenet_v2")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.archs, a.batch, a.image_size, a.warmup, a.steps, a.threads)))
        return 0
    from common.runner import worker_env
    rows = []
    for arch in a.archs.split(","):
        for config in a.configs.split(","):
            if config not in CONFIGS:
                raise SystemExit(f"--configs: unknown {config!r}; accepted: {', '.join(CONFIGS)}")
            proc = subprocess.run([sys.executable, __file__, "--worker", config, "--archs", arch, "--batch",
                                   str(a.batch), "--image-size", str(a.image_size), "--warmup", str(a.warmup),
                                   "--steps", str(a.steps), "--threads", str(a.threads)],
                                  stdout=subprocess.PIPE, env=worker_env(a.threads), cwd=ROOT, text=True)
            if proc.returncode != 0:
                print(f"{arch} {config}: failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"[{arch} {config}] {r['step_s']:.3f} s/step (first step {r['first_step_s']:.3f} s)",
                  file=sys.stderr, flush=True)
    print(f"\n{'arch':14} {'config':18} {'s/step':>8} {'first step':>11} {'vs torch':>9}")
    for r in rows:
        torch_s = next((t["step_s"] for t in rows if t["arch"] == r["arch"] and t["config"] == "torch-slimbench"),
                       None)
        ratio = f"{r['step_s'] / torch_s:8.2f}x" if torch_s else "-"
        print(f"{r['arch']:14} {r['config']:18} {r['step_s']:8.3f} {r['first_step_s']:11.3f} {ratio:>9}")
    print(f"\nbatch {a.batch}, {a.image_size} px, {a.threads} thread(s), median of {a.steps} steps after "
          f"{a.warmup} warm-up step(s); one process per row")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
