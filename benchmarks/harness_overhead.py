"""What slimbench itself costs: its train/distill stages against a hand-written loop in the same framework,
the data pipeline's share of a step, and its latency measurement against a minimal timing loop.

    python benchmarks/harness_overhead.py                      # both backends, tiny + MobileNetV2 + ResNet50, CPU
    python benchmarks/harness_overhead.py --backend torch --device cuda --dataset synthetic --image-size 224 \
        --batch 256 --archs mobilenet_v2 --stages distill --variants fp32,bf16,fp16,bf16+channels_last,bf16+channels_last+compile

Each backend runs in its own process (paddle and torch cannot share one). In every round the project's stage
and the hand-written loop run the same model, batches, optimizer, learning rates, threads and steps, in
alternating order (A B, then B A); rounds continue until there are at least --rounds of them and --min-seconds
of measurement, so short passes (tiny models) get many. Printed: the median over rounds of project /
hand-written, each round's pair measured back to back (a VM's speed wanders by 10% and more between seconds).
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


VARIANT_OPTIONS = ("fp32", "bf16", "fp16", "channels_last", "compile", "untuned")


def runtime_options(variant: str) -> dict:
    """`bf16+channels_last+compile` -> the recipe's runtime keys; `fp32` alone means no option (cpu_tuning on, the
    default); `untuned` turns cpu_tuning off."""
    parts = [v for v in variant.split("+") if v]
    unknown = [v for v in parts if v not in VARIANT_OPTIONS]
    if unknown:
        raise SystemExit(f"--variants: unknown option(s) {unknown} in {variant!r}; accepted: "
                         f"{', '.join(VARIANT_OPTIONS)} joined by '+'")
    amp = next((v for v in parts if v in ("bf16", "fp16")), "off")
    return {"amp": amp, "channels_last": "channels_last" in parts, "compile": "compile" in parts,
            "cpu_tuning": "untuned" not in parts}


def recipe_dict(arch: str, image_size: int, batch: int, steps: int, teacher: str, dataset: str = "digits",
                device: str = "cpu", runtime: dict | None = None) -> dict:
    """A minimal recipe: `steps` training batches (digits, or synthetic images of any count), tiny validation."""
    opt = {"name": OPTIMIZER["name"], "lr": OPTIMIZER["lr"], "weight_decay": OPTIMIZER["weight_decay"]}
    data = {"dataset": dataset, "image_size": image_size, "batch_size": batch,
            "train_limit": steps * batch, "val_limit": 8, "eval_batch_size": 8}
    if dataset == "synthetic":  # enough images for `steps` full batches plus the validation split
        data.update(synthetic_samples=steps * batch + 64, val_fraction=64 / (steps * batch + 64))
    return {"name": "harness_overhead", "description": "benchmark", "data": data,
            "runtime": {"device": device, **(runtime or {})},
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
    from common.recipe.loader import resolve
    from common.schedule import lr_at
    from common.stages import stage_types
    from common.stages.loop import RunContext
    hand = __import__(f"benchmarks.handwritten_{args.backend}", fromlist=["train"])

    backend = load_backend(args.backend)
    options = runtime_options(args.variant)
    out: dict = {"backend": args.backend, "variant": args.variant, "archs": {}}
    for arch in args.archs.split(","):
        recipe = resolve(recipe_dict(arch, args.image_size, args.batch, args.steps, args.teacher, args.dataset,
                                     args.device, options), "harness_overhead")
        info = backend.configure(args.threads, args.device, 0, recipe.runtime)
        device = info["device"].split(":")[0] if args.backend == "torch" else "cpu"
        out["device"] = info
        stream = BatchStream(load_dataset(recipe.data), recipe.data, 0)
        batches = list(stream.train_epoch(0))
        total = len(batches)
        lrs = [lr_at(i, total, total, OPTIMIZER["lr"], recipe.stages[0].config.schedule) for i in range(total)]
        models = {slot: backend.build_model(cfg, 10) for slot, cfg in recipe.models.items()}
        hand_models = {slot: backend.build_model(cfg, 10) for slot, cfg in recipe.models.items()}
        with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
            if args.prebuilt_batches:  # diagnosis: the stage without producing its data
                stream.train_plans = lambda epoch: iter(range(total))
                stream.materialize = lambda i, normalize=True: batches[i]  # float32 either way
            ctx = RunContext(backend, recipe, stream, 10, Path(tmp), args.threads, Progress(stream=devnull),
                             models=dict(models), model_cfgs=dict(recipe.models))

            def project(stage_fn, stage) -> float:
                t0 = time.perf_counter()
                stage_fn(ctx, stage)
                if device == "cuda":
                    import torch
                    torch.cuda.synchronize()
                return time.perf_counter() - t0

            rec: dict = {"steps": total, "batch": args.batch, "image_size": args.image_size}
            if device == "cuda" and stream.raw_available:
                rec["device_normalization_exact"] = cuda_normalization_exact(stream)
            for kind, stage_fn in (("train", stage_types()["train"].run), ("distill", stage_types()["distill"].run)):
                if kind not in args.stages.split(","):
                    continue
                stage = recipe.stages[0 if kind == "train" else 1]
                teacher = hand_models["teacher"] if kind == "distill" else None
                project_s, hand_s = [], []
                hand_args = (hand_models["net"], batches, lrs, OPTIMIZER, device, teacher)
                hand_kwargs = hand_options(args.backend, options, device, hand_models["net"], teacher)
                project(stage_fn, stage)  # warm-up: allocator, kernels, compilation, first-call costs
                hand.train(*hand_args, **hand_kwargs)
                project_s, hand_s = alternate(lambda: project(stage_fn, stage),
                                              lambda: hand.train(*hand_args, **hand_kwargs),
                                              args.rounds, args.min_seconds)
                rec[kind] = {"project_s": project_s, "hand_s": hand_s, **paired_ratio(project_s, hand_s),
                             "project_step_s": float(np.median(project_s)) / total,
                             "hand_images_per_s": args.batch * total / float(np.median(hand_s)),
                             "project_images_per_s": args.batch * total / float(np.median(project_s))}
            step_s = (rec.get("train") or rec["distill"])["project_step_s"]
            t0 = time.perf_counter()
            for _ in range(3):
                for _batch in stream.train_epoch(1):
                    pass
            rec["data_batch_s"] = (time.perf_counter() - t0) / (3 * total)
            rec["data_share_of_step"] = rec["data_batch_s"] / step_s
            if device == "cpu":
                artifact = backend.export(ctx.models["net"], stream.val_images(2), Path(tmp) / "artifact")
                mine = backend.load_artifact(artifact, args.threads)
                minimal = hand.artifact_predictor(str(artifact.entry))
                x = stream.val_images(1)
                p_mine, p_min = alternate(lambda: float(np.median(time_calls(lambda: mine(x), 10, 50))),
                                          lambda: float(np.median(hand_time_calls(minimal, x, 10, 50))),
                                          args.rounds * 2, args.min_seconds / 4)
                rec["latency"] = {"project_p50_ms": float(np.median(p_mine)) * 1e3,
                                  "minimal_p50_ms": float(np.median(p_min)) * 1e3, **paired_ratio(p_mine, p_min)}
        out["archs"][arch] = rec
        ratios = ", ".join(f"{k} x{rec[k]['ratio']:.3f}" for k in ("train", "distill") if k in rec)
        exact = ("" if "device_normalization_exact" not in rec else
                 f", GPU normalization bit-identical to the stream: {rec['device_normalization_exact']}")
        print(f"[{args.backend} {args.variant}] {arch}: {ratios}, data {rec['data_share_of_step'] * 100:.2f}% of a "
              f"step if produced in line (the stages prepare it in background threads){exact}"
              + (f", latency x{rec['latency']['ratio']:.3f}" if "latency" in rec else ""), file=sys.stderr, flush=True)
    return out


def alternate(a, b, rounds: int, min_seconds: float) -> tuple[list[float], list[float]]:
    """The values of a() and b() measured in alternating order (A B, B A, ...), for at least `rounds` rounds and
    `min_seconds` of wall time."""
    values: tuple[list[float], list[float]] = ([], [])
    t0 = time.perf_counter()
    r = 0
    while r < rounds or time.perf_counter() - t0 < min_seconds:
        for who in ((0, 1) if r % 2 == 0 else (1, 0)):
            values[who].append((a, b)[who]())
        r += 1
    return values


def paired_ratio(project: list[float], hand: list[float]) -> dict:
    """Median and quartiles over rounds of project / hand-written, each round's pair measured back to back."""
    import numpy as np
    ratios = np.array(project) / np.array(hand)
    return {"ratio": float(np.median(ratios)), "ratio_q25": float(np.percentile(ratios, 25)),
            "ratio_q75": float(np.percentile(ratios, 75)), "rounds": len(ratios)}


def hand_time_calls(predict, x, warmup: int, repeats: int) -> list[float]:
    """The minimal timing loop: perf_counter around each call."""
    for _ in range(warmup):
        predict(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return times


def cuda_normalization_exact(stream) -> bool:
    """Does the GPU trainer's normalization of uint8 batches give the numpy stream's float32 values exactly?"""
    import numpy as np
    import torch

    from backends.torch.train import normalize_uint8
    plan = next(stream.train_plans(0))
    expected, _ = stream.materialize(plan)
    raw, _ = stream.materialize(plan, normalize=False)
    mean, std = (torch.from_numpy(a).cuda() for a in stream.normalization)
    got = normalize_uint8(torch.from_numpy(raw).cuda(), mean, std).cpu().numpy()
    return bool(np.array_equal(got, expected))


def hand_options(backend: str, options: dict, device: str, model, teacher) -> dict:
    """The runtime options in the hand-written loop's own terms, cpu_tuning included: the same configuration the
    project's stage picks for these models (torch: channels_last for depthwise models on the CPU; paddle: the
    depthwise convolutions on oneDNN)."""
    tuned = options["cpu_tuning"] and device == "cpu"
    if backend == "paddle":
        if options["amp"] != "off" or options["channels_last"] or options["compile"]:
            raise SystemExit("--variants: the paddle backend records but does not apply amp/channels_last/compile")
        from backends.paddle.programs import depthwise_conv_count
        return {"onednn_depthwise": tuned and depthwise_conv_count(model) > 0}
    from backends.torch.train import has_depthwise
    return {"amp": options["amp"], "compile": options["compile"],
            "channels_last": options["channels_last"] or (tuned and has_depthwise(model)),
            "teacher_channels_last": options["channels_last"] or (tuned and teacher is not None
                                                                  and has_depthwise(teacher))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="all", choices=["all", "torch", "paddle"])
    p.add_argument("--archs", default="tiny_cnn,mobilenet_v2,resnet50")
    p.add_argument("--teacher", default="resnet50", help="teacher arch for the distill comparison")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4, help="at least this many alternating rounds")
    p.add_argument("--min-seconds", type=float, default=30.0,
                   help="and at least this much measurement per stage comparison (a quarter for latency)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="digits", choices=["digits", "synthetic"],
                   help="synthetic: as many images as --steps x --batch needs (digits has 1438 training images)")
    p.add_argument("--stages", default="train,distill", help="which of train,distill to compare")
    p.add_argument("--variants", default="fp32", help="comma-separated runtime option sets, each in its own "
                   "process: fp32, bf16, fp16, channels_last, compile joined by '+' (torch only); untuned (both): "
                   "runtime.cpu_tuning off")
    p.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--prebuilt-batches", action="store_true",
                   help="diagnosis: feed the project's stages the hand-written loop's pre-built batches")
    p.add_argument("--json", type=Path, help="also write the measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    from common.run.runner import worker_env
    for v in args.variants.split(","):
        runtime_options(v)  # reject a misspelt option before any process starts
    results = []
    passthrough = {"--backend", "--variants", "--json"}
    for b in (["torch", "paddle"] if args.backend == "all" else [args.backend]):
        for variant in args.variants.split(","):
            argv = [a for a in _without(sys.argv[1:], passthrough)]
            proc = subprocess.run([sys.executable, __file__, "--worker", "--backend", b, "--variant", variant, *argv],
                                  stdout=subprocess.PIPE, env=worker_env(args.threads), cwd=ROOT, text=True)
            if proc.returncode != 0:
                print(f"{b} {variant}: benchmark process failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    def cell(m: dict | None) -> str:
        return f"{m['ratio']:.3f} [{m['ratio_q25']:.2f}-{m['ratio_q75']:.2f}]" if m else "-"

    print(f"\n{'backend':8} {'variant':20} {'arch':13} {'train':>19} {'distill':>19} {'img/s project':>14} "
          f"{'img/s hand':>11} {'data/step':>10} {'latency':>19}")
    for r in results:
        for arch, rec in r["archs"].items():
            main_kind = rec.get("distill") or rec["train"]
            print(f"{r['backend']:8} {r['variant']:20} {arch:13} {cell(rec.get('train')):>19} "
                  f"{cell(rec.get('distill')):>19} {main_kind['project_images_per_s']:14.1f} "
                  f"{main_kind['hand_images_per_s']:11.1f} {rec['data_share_of_step'] * 100:9.2f}% "
                  f"{cell(rec.get('latency')):>19}")
    print("\ntrain/distill/latency: project time / hand-written time, median over rounds [quartiles] (target "
          "<= 1.05; latency within 5%); img/s: training throughput of the distill stage (train where distill was "
          "not run); data/step: time to produce a batch as a share of the project's step time (target <= 5%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _without(argv: list[str], options: set[str]) -> list[str]:
    """argv minus the given options and their values (both `--opt v` and `--opt=v`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif a.split("=", 1)[0] not in options:
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
