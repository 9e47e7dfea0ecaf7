"""Does `MKL_DEBUG_CPU_TYPE=5` make Paddle faster on AMD CPUs, and does it stay exact?

    python benchmarks/paddle_mkl_cpu_type.py                          # resnet50, mobilenet_v2; 3 rounds
    python benchmarks/paddle_mkl_cpu_type.py --archs resnet50 --rounds 5 --json out.json

The MKL 2019 inside paddlepaddle 2.6 picks its code path by CPU vendor: on AMD it takes a generic path unless
`MKL_DEBUG_CPU_TYPE=5` (AVX2) is in the environment before the library loads. For each architecture this runs
fresh processes in alternation, A B B A per round (A: the environment as it is, B: with the variable), so both
see the same machine state:

- training: the slimbench Paddle trainer (cpu_tuning on, batch 64, 32 px), median seconds per step, and the
  relative L2 error of each weight gradient against float64 gradients of the same weights and batch
  (benchmarks/paddle_cpu_training.py does the measuring);
- inference: the exported model on Paddle Inference (oneDNN, IR passes), median batch-1 and batch-32 latency,
  and the largest relative logit difference against the dygraph model.

It prints the CPU, the background load, every pair and the B/A ratio (median over pairs, with the spread).
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
TRAINING = ROOT / "benchmarks" / "paddle_cpu_training.py"
VARIABLE = ("MKL_DEBUG_CPU_TYPE", "5")


def infer_worker(arch: str, weights: Path, threads: int, warmup: int, repeats: int) -> dict:
    """Latency of the exported model on Paddle Inference and its logits against dygraph's."""
    import numpy as np
    from backends.base import load_backend
    from backends.paddle.measure import load_predictor
    from common.config import ModelConfig
    from common.metrics import time_calls
    backend = load_backend("paddle")
    backend.configure(threads, "cpu", 0)
    model = backend.build_model(ModelConfig(arch=arch, dropout=0.0), 10)
    backend.load_numpy_state(model, dict(np.load(weights)))
    rng = np.random.default_rng(0)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = backend.export(model, rng.standard_normal((2, 3, 32, 32)).astype(np.float32), Path(tmp))
        predict = load_predictor(artifact, threads)
        x32 = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
        ref = backend.predict(model, x32)
        got = predict(x32)
        out["logit_rel_diff"] = float(np.abs(got - ref).max() / np.abs(ref).max())
        for bs in (1, 32):
            x = x32[:bs]
            out[f"b{bs}_ms"] = float(np.median(time_calls(lambda: predict(x), warmup, repeats))) * 1e3
    return out


def _env(threads: int, with_variable: bool) -> dict[str, str]:
    from common.run.runner import worker_env
    env = worker_env(threads)
    env.pop(VARIABLE[0], None)
    if with_variable:
        env[VARIABLE[0]] = VARIABLE[1]
    return env


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _busy_cores(seconds: float = 2.0) -> float:
    """CPU time other processes use, in cores, measured over a short idle window."""
    import psutil
    t0 = psutil.cpu_times()
    time.sleep(seconds)
    t1 = psutil.cpu_times()
    busy = sum(getattr(t1, f) - getattr(t0, f) for f in ("user", "nice", "system", "irq", "softirq", "steal")
               if hasattr(t1, f))
    return busy / seconds


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,mobilenet_v2")
    p.add_argument("--rounds", type=int, default=3, help="A B B A rounds per architecture")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path)
    p.add_argument("--infer-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.infer_worker:
        print(json.dumps(infer_worker(a.infer_worker, a.weights, a.threads, warmup=10, repeats=40)))
        return 0
    print(f"CPU: {_cpu_model()}; {os.cpu_count()} cores; {a.threads} thread(s); background load before: "
          f"{_busy_cores():.2f} cores", flush=True)
    report: dict = {"cpu": _cpu_model(), "threads": a.threads, "variable": "=".join(VARIABLE), "archs": {}}
    tmp = tempfile.TemporaryDirectory()
    for arch in a.archs.split(","):
        weights = Path(tmp.name) / f"{arch}.npz"
        subprocess.run([sys.executable, str(TRAINING), "--worker", "init", "--archs", arch, "--weights", str(weights)],
                       check=True, env=_env(1, False), cwd=ROOT)
        train_cmd = [sys.executable, str(TRAINING), "--worker", "paddle-tuned", "--archs", arch, "--batch", "64",
                     "--image-size", "32", "--warmup", "2", "--steps", str(a.steps), "--threads", str(a.threads),
                     "--weights", str(weights)]
        infer_cmd = [sys.executable, __file__, "--infer-worker", arch, "--threads", str(a.threads),
                     "--weights", str(weights)]
        rows = {"A": [], "B": []}
        for r in range(a.rounds):
            for variant in ("A", "B", "B", "A"):
                env = _env(a.threads, variant == "B")
                t = _run(train_cmd, env)
                i = _run(infer_cmd, env)
                row = {"step_s": t["step_s"], "grad_err_median": t["grad_rel_err_median"],
                       "grad_err_max": t["grad_rel_err_max"], **i}
                rows[variant].append(row)
                print(f"[{arch} round {r + 1} {variant}] step {row['step_s']:.3f} s (grad err max "
                      f"{row['grad_err_max']:.1e}); inference b1 {row['b1_ms']:.2f} ms, b32 {row['b32_ms']:.2f} ms "
                      f"(logits vs dygraph {row['logit_rel_diff']:.1e})", flush=True)
        summary = {}
        for key in ("step_s", "b1_ms", "b32_ms"):
            ratios = [b[key] / a_[key] for a_, b in zip(rows["A"], rows["B"])]
            summary[key] = {"A_median": statistics.median(x[key] for x in rows["A"]),
                            "B_median": statistics.median(x[key] for x in rows["B"]),
                            "B_over_A_median": statistics.median(ratios), "B_over_A_min": min(ratios),
                            "B_over_A_max": max(ratios)}
        summary["grad_err_max"] = {v: max(x["grad_err_max"] for x in rows[v]) for v in rows}
        summary["logit_rel_diff_max"] = {v: max(x["logit_rel_diff"] for x in rows[v]) for v in rows}
        report["archs"][arch] = {"rows": rows, "summary": summary}
    report["background_load_after_cores"] = _busy_cores()
    print(f"\nA: environment as is; B: {'='.join(VARIABLE)}; background load after: "
          f"{report['background_load_after_cores']:.2f} cores")
    print(f"{'arch':14} {'measure':10} {'A median':>10} {'B median':>10} {'B/A median':>11} {'B/A range':>15}")
    for arch, data in report["archs"].items():
        s = data["summary"]
        for key, unit in (("step_s", "s"), ("b1_ms", "ms"), ("b32_ms", "ms")):
            v = s[key]
            print(f"{arch:14} {key:10} {v['A_median']:9.3f}{unit[0]} {v['B_median']:9.3f}{unit[0]} "
                  f"{v['B_over_A_median']:11.3f} {v['B_over_A_min']:7.3f}-{v['B_over_A_max']:.3f}")
        print(f"{arch:14} gradient error max A {s['grad_err_max']['A']:.1e}, B {s['grad_err_max']['B']:.1e}; "
              f"inference logits vs dygraph A {s['logit_rel_diff_max']['A']:.1e}, B {s['logit_rel_diff_max']['B']:.1e}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
