"""How much of the last-epoch change in validation top-1 is batch-norm recalibration, not learning?

    python benchmarks/bn_recalibration_noise.py RUN_DIR                        # every trained slot, seed 0
    python benchmarks/bn_recalibration_noise.py RUN_DIR --backend torch --seeds 0,1,2 --draws 10 --json out.json

With `bn_recalibration_batches: N` the training loop replaces each model's batch-norm statistics by their
average over the first N training batches of the *next* epoch's shuffle before every validation
(common/stages/loop.py `recalibrate_bn`): each epoch sees other batches. The plateau check
(common/report/validity.py) reads the last two epochs' top-1 and flags a rise of a point (3.6 of digits'
360 validation images). This takes the *final* weights of every trained slot of a finished run (its
canonical `.npz` checkpoints), recalibrates them with the batches of `--draws` different epochs, exactly as the
loop does, and prints how far top-1 moves with the weights held fixed: the part of an epoch-to-epoch change
that no amount of training removes.

Run it alone (it trains nothing, but it is CPU work on 2 cores); it prints the CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def trained_slots(result: dict) -> dict[str, int]:
    """slot -> bn_recalibration_batches, for every slot a train or distill stage produced with recalibration."""
    out = {}
    for st in result["stages"]:
        if st.get("type") in ("train", "distill") and st.get("status") == "ok" and st.get("bn_recalibration_batches"):
            out[st["model"]] = st["bn_recalibration_batches"]
    return out


def dense_architectures(recipe) -> dict[str, object]:
    """slot -> its ModelConfig, for slots that only train and distill stages derived from a recipe model (a pruned
    slot's checkpoint does not fit a fresh model)."""
    cfgs = dict(recipe.models)
    for stage in recipe.stages:
        if stage.type not in ("train", "distill"):
            continue
        for dst, src in stage.config.derived_from().items():
            if src in cfgs:
                cfgs[dst] = cfgs[src]
            else:
                cfgs.pop(dst, None)
    return cfgs


def measure(run: Path, backend_name: str, seed: int, draws: int, threads: int) -> list[dict]:
    import numpy as np

    from backends.base import load_backend
    from common.data import BatchStream, load_dataset
    from common.metrics import classification_metrics
    from common.run.worker import load_run_recipe
    from common.stages.loop import predict_validation

    recipe = load_run_recipe(run)
    result = json.loads((run / backend_name / f"seed-{seed}" / "result.json").read_text())
    stream = BatchStream(load_dataset(recipe.data), recipe.data, seed)
    backend = load_backend(backend_name)
    backend.configure(threads, "cpu", seed)
    num_classes = load_dataset(recipe.data).num_classes
    rows = []
    cfgs = dense_architectures(recipe)
    for slot, n in trained_slots(result).items():
        ckpt = run / backend_name / f"seed-{seed}" / "checkpoints" / f"{slot}.npz"
        if not ckpt.is_file() or slot not in cfgs:
            print(f"{backend_name} seed {seed} {slot}: skipped (no canonical checkpoint, or a pruned architecture)")
            continue
        model = backend.build_model(cfgs[slot], num_classes)
        backend.load_numpy_state(model, dict(np.load(ckpt)))
        top1 = []
        for epoch in range(1, draws + 1):  # epoch e's first n batches, as the loop draws them after epoch e - 1
            backend.recalibrate_bn(model, (x for i, (x, _) in enumerate(stream.train_epoch(epoch)) if i < n))
            top1.append(classification_metrics(*predict_validation(lambda x: backend.predict(model, x),
                                                                   stream))["top1"])
        a = np.array(top1) * 100
        rows.append({"backend": backend_name, "seed": seed, "slot": slot, "recal_batches": n, "draws": draws,
                     "top1": [round(v, 2) for v in a.tolist()], "min": float(a.min()), "max": float(a.max()),
                     "std": float(a.std(ddof=1)),
                     "largest_step": float(np.abs(np.diff(a)).max()) if len(a) > 1 else 0.0})
        print(f"{backend_name} seed {seed} {slot:<20} top-1 over {draws} recalibrations: {a.min():.2f}-{a.max():.2f}% "
              f"(std {a.std(ddof=1):.2f} pts; largest change between consecutive draws "
              f"{rows[-1]['largest_step']:.2f} pts)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run directory (runs/<recipe>/<run-id>)")
    ap.add_argument("--backend", default="torch", choices=["torch", "paddle"])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--draws", type=int, default=8, help="recalibrations, each on another epoch's batches")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; {args.threads} threads")
    rows = [r for seed in args.seeds.split(",") for r in measure(args.run, args.backend, int(seed), args.draws,
                                                                 args.threads)]
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "run": str(args.run), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
