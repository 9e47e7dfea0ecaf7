"""Why Paddle trains slower than torch on the CPU, and what each configuration costs and computes.

    python benchmarks/paddle_cpu_training.py                    # resnet50 and mobilenet_v2, batch 64, 32 px
    python benchmarks/paddle_cpu_training.py --archs mobilenet_v2 --configs paddle-eager,paddle-tuned

One fresh process per configuration (some effects are process-wide). For each it prints the median seconds per
training step after warm-up, the ratio to torch's tuned step, and how exact its weight gradients are: the
relative L2 error per weight tensor (median and worst) against float64 gradients of the same weights and batch.
Every configuration starts from the same weights, created by torch (the reference framework, as in a run): how
exact float32 gradients can be depends on the weights (about 5e-3 for torch's MobileNetV2 initialisation, 3e-5
for Paddle's), so only errors on the same weights compare. Rounding gives errors far below 1; a wrong gradient
gives errors near 1 or above.

Configurations:
  paddle-adamw       dygraph with paddle.optimizer.AdamW (its per-parameter kernel slowed later convolutions on AMD)
  paddle-1thread     the slimbench trainer on Paddle's default of 1 thread (FLAGS_paddle_num_threads=1)
  paddle-eager       the slimbench trainer, dygraph (runtime.cpu_tuning: false)
  paddle-tuned       the slimbench trainer, default: depthwise convolutions on oneDNN in a to_static program
  paddle-onednn-all  to_static with FLAGS_use_mkldnn=1: every op on oneDNN (wrong gradients; ResNet50 aborts)
  paddle-conv-fwd    to_static, every convolution's forward on oneDNN, conv2d_grad on the native kernels
                     (depthwise backward on oneDNN as in paddle-tuned): issue 20 item 2's forward-only trial
  torch-eager        the torch trainer, NCHW (runtime.cpu_tuning: false)
  torch-tuned        the torch trainer, default: channels_last for models with depthwise convolutions
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ("paddle-adamw", "paddle-1thread", "paddle-eager", "paddle-tuned", "paddle-onednn-all", "paddle-conv-fwd",
           "torch-eager", "torch-tuned")
OPTIMIZER = {"name": "adamw", "lr": 0.002, "weight_decay": 0.05}


def save_initial_weights(arch: str, path: Path) -> None:
    """torch's initial weights in canonical numpy form, for every configuration to start from."""
    import numpy as np
    from backends.base import load_backend
    from common.config import ModelConfig
    backend = load_backend("torch")
    backend.configure(1, "cpu", 0)
    np.savez(path, **backend.state_to_numpy(backend.build_model(ModelConfig(arch=arch, dropout=0.0), 10)))


def _trainer(config: str, arch: str, threads: int, weights: Path):
    """The backend, a model (dropout off, so gradients are comparable) and the configuration's trainer."""
    import numpy as np
    from backends.base import load_backend
    from common.config import ModelConfig, OptimizerConfig, RuntimeConfig
    framework, how = config.split("-", 1)
    backend = load_backend(framework)
    backend.configure(threads, "cpu", 0, RuntimeConfig(cpu_tuning=how == "tuned"))
    if framework == "paddle":
        import paddle
        if how == "1thread":
            paddle.base.core.set_num_threads(1)
        if how == "onednn-all":
            paddle.set_flags({"FLAGS_use_mkldnn": True})
    model = backend.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    backend.load_numpy_state(model, dict(np.load(weights)))
    runner = backend.trainer(model, OptimizerConfig(**OPTIMIZER))
    if how == "adamw":
        runner.optimizer = paddle.optimizer.AdamW(learning_rate=OPTIMIZER["lr"], parameters=model.parameters(),
                                                  weight_decay=OPTIMIZER["weight_decay"])
    if how == "onednn-all":
        from backends.paddle.programs import OnednnDepthwiseProgram
        runner.program = OnednnDepthwiseProgram(runner.objective)  # a to_static program; the flag moves every op
    if how == "conv-fwd":
        from backends.paddle.programs import OnednnDepthwiseProgram
        runner.program = OnednnDepthwiseProgram(runner.objective, onednn_ops=("conv2d", "depthwise_conv2d"),
                                                native_grad_ops=("conv2d_grad",))
    return backend, framework, model, runner


def _torch_gradients(backend, model, runner, x, y, arch: str) -> tuple[dict, dict]:
    """(the trainer's weight gradients, float64 eager gradients of the same weights and batch)."""
    import torch
    from common.config import ModelConfig
    fmt = torch.channels_last if runner.channels_last else torch.contiguous_format
    runner.loss(torch.from_numpy(x).contiguous(memory_format=fmt), torch.from_numpy(y)).backward()
    got = {n: p.grad.double().numpy() for n, p in model.named_parameters() if n.endswith("weight")}
    runner.optimizer.zero_grad(set_to_none=True)
    ref_model = backend.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    ref_model.load_state_dict(model.state_dict())
    ref_model.double().train()
    torch.nn.functional.cross_entropy(ref_model(torch.from_numpy(x).double()), torch.from_numpy(y)).backward()
    return got, {n: p.grad.numpy() for n, p in ref_model.named_parameters() if n.endswith("weight")}


def _paddle_gradients(backend, model, runner, x, y, arch: str) -> tuple[dict, dict]:
    import numpy as np
    import paddle
    from common.config import ModelConfig

    def weight_grads(m) -> dict:
        return {n: p.grad.numpy().astype(np.float64) for n, p in m.named_parameters()
                if not p.stop_gradient and n.endswith("weight")}

    runner.loss(x, y).backward()
    got = weight_grads(model)
    runner.optimizer.clear_grad()
    ref_model = backend.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    backend.load_numpy_state(ref_model, backend.state_to_numpy(model))
    ref_model.to(dtype="float64")
    ref_model.train()
    paddle.nn.functional.cross_entropy(ref_model(paddle.to_tensor(x.astype(np.float64))),
                                       paddle.to_tensor(y)).backward()
    return got, weight_grads(ref_model)


def worker(config: str, arch: str, batch: int, size: int, warmup: int, steps: int, threads: int,
           weights: Path) -> dict:
    import numpy as np
    backend, framework, model, runner = _trainer(config, arch, threads, weights)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    grads = _torch_gradients if framework == "torch" else _paddle_gradients
    got, ref = grads(backend, model, runner, x, y, arch)
    errors = np.array([np.linalg.norm(got[k] - ref[k]) / np.linalg.norm(ref[k]) for k in ref])
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        runner.step(x, y, OPTIMIZER["lr"])
        times.append(time.perf_counter() - t0)
    return {"config": config, "arch": arch, "grad_rel_err_median": float(np.median(errors)),
            "grad_rel_err_max": float(errors.max()), "first_step_s": times[0],
            "step_s": float(np.median(times[warmup:])), "all_s": times}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,mobilenet_v2")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=1,
                   help="run the configurations this many times in A B B A order (the same machine state for "
                        "each); a row is the median over rounds of each process's median step")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "init":
        save_initial_weights(a.archs, a.weights)
        return 0
    if a.worker:
        print(json.dumps(worker(a.worker, a.archs, a.batch, a.image_size, a.warmup, a.steps, a.threads, a.weights)))
        return 0
    from common.run.runner import worker_env
    configs = a.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; accepted: {', '.join(CONFIGS)}")
    rows = []
    tmp = tempfile.TemporaryDirectory()
    for arch in a.archs.split(","):
        weights = Path(tmp.name) / f"{arch}.npz"
        subprocess.run([sys.executable, __file__, "--worker", "init", "--archs", arch, "--weights", str(weights)],
                       check=True, env=worker_env(1), cwd=ROOT)
        order = [c for r in range(a.rounds) for c in (configs if r % 2 == 0 else configs[::-1])]
        per_config: dict[str, list[dict]] = {}
        for config in order:
            proc = subprocess.run([sys.executable, __file__, "--worker", config, "--archs", arch, "--batch",
                                   str(a.batch), "--image-size", str(a.image_size), "--warmup", str(a.warmup),
                                   "--steps", str(a.steps), "--threads", str(a.threads), "--weights", str(weights)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=worker_env(a.threads), cwd=ROOT,
                                  text=True)
            if proc.returncode != 0:  # a configuration that crashes is a result too (paddle-onednn-all, ResNet50)
                last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
                per_config.setdefault(config, []).append(
                    {"config": config, "arch": arch, "failed": f"exit {proc.returncode}: {last[0][:120]}"})
                print(f"[{arch} {config}] failed ({per_config[config][-1]['failed']})", file=sys.stderr, flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            per_config.setdefault(config, []).append(r)
            print(f"[{arch} {config}] {r['step_s']:.3f} s/step, gradient error vs float64 median "
                  f"{r['grad_rel_err_median']:.1e} max {r['grad_rel_err_max']:.1e}", file=sys.stderr, flush=True)
        for config in configs:
            done = [r for r in per_config[config] if "failed" not in r]
            if not done:
                rows.append(per_config[config][0])
                continue
            rows.append({**done[0], "step_s": float(statistics.median(r["step_s"] for r in done)),
                         "step_s_per_round": [r["step_s"] for r in done], "rounds": len(done)})
    print(f"\n{'arch':14} {'config':18} {'s/step':>8} {'first step':>11} {'vs torch-tuned':>15} "
          f"{'grad err median':>16} {'grad err max':>13}")
    for r in rows:
        if "failed" in r:
            print(f"{r['arch']:14} {r['config']:18} failed: {r['failed']}")
            continue
        torch_s = next((t["step_s"] for t in rows if t["arch"] == r["arch"] and t["config"] == "torch-tuned"
                        and "step_s" in t), None)
        ratio = f"{r['step_s'] / torch_s:14.2f}x" if torch_s else f"{'-':>15}"
        print(f"{r['arch']:14} {r['config']:18} {r['step_s']:8.3f} {r['first_step_s']:11.3f} {ratio} "
              f"{r['grad_rel_err_median']:16.1e} {r['grad_rel_err_max']:13.1e}")
    print(f"\nbatch {a.batch}, {a.image_size} px, {a.threads} thread(s) (paddle-1thread: 1), median of {a.steps} steps "
          f"after {a.warmup} warm-up step(s), one process per row and round ({a.rounds} round(s), A B B A, median over "
          "rounds); gradient error: relative L2 error per weight "
          "tensor against float64 gradients of the same (torch-initialised) weights and batch")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
