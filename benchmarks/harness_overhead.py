"""What slimbench itself costs: its train/distill stages against a hand-written loop in the same framework,
the data pipeline's share of a step, and its latency measurement against a minimal timing loop.

    python benchmarks/harness_overhead.py                      # both backends, tiny + MobileNetV2 + ResNet50, CPU
    python benchmarks/harness_overhead.py --backend torch --device cuda --image-size 224 --batch 256 --archs resnet50

Each backend runs in its own process (paddle and torch cannot share one). In every round the project's stage
and the hand-written loop run the same model, batches, optimizer, learning rates, threads and steps, in
alternating order (A B, then B A), and the ratio of the medians is printed: project / hand-written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPTIMIZER = {"name": "adamw", "lr": 0.002, "weight_decay": 0.05, "momentum": 0.9}


def recipe_dict(arch: str, image_size: int, batch: int, steps: int, teacher: str) -> dict:
    """A minimal recipe: `steps` training batches of digits, a tiny validation split."""
    opt = {"name": OPTIMIZER["name"], "lr": OPTIMIZER["lr"], "weight_decay": OPTIMIZER["weight_decay"]}
    return {"name": "harness_overhead", "description": "benchmark",
            "data": {"dataset": "digits", "image_size": image_size, "batch_size": batch,
                     "train_limit": steps * batch, "val_limit": 8, "eval_batch_size": 8},
            "models": {"net": {"arch": arch}, "teacher": {"arch": teacher}},
            "stages": [{"train": {"name": "train", "model": "net", "optimizer": opt, "schedule": {"name": "cosine"}}},
                       {"distill": {"name": "distill", "teacher": "teacher", "student": "net", "optimizer": opt,
                                    "schedule": {"name": "cosine"}}}]}


def worker(args: argparse.Namespace) -> dict:
    """Runs inside one backend's process; returns the measured times."""
    import numpy as np

    from backends.base import load_backend
    from common.data import BatchStream, load_dataset
    from common.metrics import time_calls
    from common.progress import Progress
    from common.recipe import resolve
    from common.schedule import lr_at
    from common.stages import RunContext, run_distill, run_train
    hand = __import__(f"benchmarks.handwritten_{args.backend}", fromlist=["train"])

    backend = load_backend(args.backend)
    info = backend.configure(args.threads, args.device, 0)
    device = info["device"].split(":")[0] if args.backend == "torch" else "cpu"
    out: dict = {"backend": args.backend, "device": info, "archs": {}}
    for arch in args.archs.split(","):
        recipe = resolve(recipe_dict(arch, args.image_size, args.batch, args.steps, args.teacher), "harness_overhead")
        stream = BatchStream(load_dataset(recipe.data), recipe.data, 0)
        batches = list(stream.train_epoch(0))
        total = len(batches)
        lrs = [lr_at(i, total, total, OPTIMIZER["lr"], recipe.stages[0].config.schedule) for i in range(total)]
        models = {slot: backend.build_model(cfg, 10) for slot, cfg in recipe.models.items()}
        hand_models = {slot: backend.build_model(cfg, 10) for slot, cfg in recipe.models.items()}
        with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
            ctx = RunContext(backend, recipe, stream, 10, Path(tmp), args.threads, Progress(stream=devnull),
                             models=dict(models), model_cfgs=dict(recipe.models))

            def project(stage_fn, stage) -> float:
                t0 = time.perf_counter()
                stage_fn(ctx, stage)
                if device == "cuda":
                    import torch
                    torch.cuda.synchronize()
                return time.perf_counter() - t0

            rec: dict = {"steps": total}
            for kind, stage_fn in (("train", run_train), ("distill", run_distill)):
                stage = recipe.stages[0 if kind == "train" else 1]
                teacher = hand_models["teacher"] if kind == "distill" else None
                project_s, hand_s = [], []
                project(stage_fn, stage)  # warm-up: allocator, kernels, first-call costs
                hand.train(hand_models["net"], batches, lrs, OPTIMIZER, device, teacher)
                for r in range(args.rounds):
                    order = ("p", "h") if r % 2 == 0 else ("h", "p")
                    for who in order:
                        if who == "p":
                            project_s.append(project(stage_fn, stage))
                        else:
                            hand_s.append(hand.train(hand_models["net"], batches, lrs, OPTIMIZER, device, teacher))
                rec[kind] = {"project_s": project_s, "hand_s": hand_s,
                             "ratio": float(np.median(project_s) / np.median(hand_s)),
                             "project_step_s": float(np.median(project_s)) / total}
            t0 = time.perf_counter()
            for _ in range(3):
                for _batch in stream.train_epoch(1):
                    pass
            rec["data_batch_s"] = (time.perf_counter() - t0) / (3 * total)
            rec["data_share_of_step"] = rec["data_batch_s"] / rec["train"]["project_step_s"]
            if device == "cpu":
                artifact = backend.export(ctx.models["net"], stream.val_images(2), Path(tmp) / "artifact")
                mine = backend.load_artifact(artifact, args.threads)
                minimal = hand.artifact_predictor(str(artifact.entry))
                x = stream.val_images(1)
                p_mine, p_min = [], []
                for r in range(args.rounds * 2):
                    for who in (("m", "h") if r % 2 == 0 else ("h", "m")):
                        times = time_calls(lambda: (mine if who == "m" else minimal)(x), 10, 50)
                        (p_mine if who == "m" else p_min).append(float(np.median(times)))
                rec["latency"] = {"project_p50_ms": float(np.median(p_mine)) * 1e3,
                                  "minimal_p50_ms": float(np.median(p_min)) * 1e3,
                                  "ratio": float(np.median(p_mine) / np.median(p_min))}
        out["archs"][arch] = rec
        print(f"[{args.backend}] {arch}: train x{rec['train']['ratio']:.3f}, distill x{rec['distill']['ratio']:.3f}, "
              f"data {rec['data_share_of_step'] * 100:.2f}% of a step"
              + (f", latency x{rec['latency']['ratio']:.3f}" if "latency" in rec else ""), file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="all", choices=["all", "torch", "paddle"])
    p.add_argument("--archs", default="tiny_cnn,mobilenet_v2,resnet50")
    p.add_argument("--teacher", default="resnet50", help="teacher arch for the distill comparison")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    from common.runner import worker_env
    results = []
    for b in (["torch", "paddle"] if args.backend == "all" else [args.backend]):
        argv = [a for a in sys.argv[1:] if not a.startswith("--backend")]
        if "--backend" in sys.argv:
            i = sys.argv.index("--backend")
            argv = sys.argv[1:i] + sys.argv[i + 2:]
        proc = subprocess.run([sys.executable, __file__, "--worker", "--backend", b, *argv], stdout=subprocess.PIPE,
                              env=worker_env(args.threads), cwd=ROOT, text=True)
        if proc.returncode != 0:
            print(f"{b}: benchmark process failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\n{'backend':8} {'arch':14} {'train':>7} {'distill':>8} {'data/step':>10} {'latency':>8}")
    for r in results:
        for arch, rec in r["archs"].items():
            lat = f"{rec['latency']['ratio']:.3f}" if "latency" in rec else "-"
            print(f"{r['backend']:8} {arch:14} {rec['train']['ratio']:7.3f} {rec['distill']['ratio']:8.3f} "
                  f"{rec['data_share_of_step'] * 100:9.2f}% {lat:>8}")
    print("\ntrain/distill/latency: project time / hand-written time (target <= 1.05); data/step: time to "
          "produce a batch as a share of the project's step time (target <= 5%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
