"""Why does quantization-aware training not settle between epochs, and what makes it settle?

    python benchmarks/qat_plateau.py RUN_DIR                                   # both backends, seed 0
    python benchmarks/qat_plateau.py RUN_DIR --seeds 0,1,2 --recal 0,10 --json out.json

RUN_DIR is a finished run of a recipe with a `quantize` stage in `mode: qat` (quant_qat_mobilenet), whose
reference framework's fp32 checkpoint of the stage's input slot QAT starts from, as the stage does with
`start_from_reference`. For every backend, seed and `bn_recalibration_batches` value in `--recal` it runs that
stage's fake-quant fine-tuning again (prepare_qat, the shared training loop, the recipe's epochs, optimizer and
schedule) and prints each epoch's validation top-1 of the fake-quant model and the last epoch's change, which the
plateau check (common/report/validity.py) flags above one point. Conversion and timing are not run.

With 0, batch norm runs on the EMA statistics training left (torch folds them into its QAT convolutions; Paddle
keeps separate batch-norm layers); with N, they are recomputed over the shared fixed draw of N training batches
before every validation, fake-quant ranges held (the train stage's `bn_recalibration_batches`).
`--freeze-epochs N` freezes the ranges for the last N epochs, as the stage does.

Run it alone: it trains (about 30 s per backend, seed and setting on a 2-core CPU); it prints the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def qat_stage(recipe):
    stages = [s for s in recipe.stages if s.type == "quantize" and s.config.mode == "qat"]
    if not stages:
        raise SystemExit(f"{recipe.source}: no quantize stage with mode: qat")
    return stages[0]


def run_one(run: Path, backend_name: str, seed: int, recal: int, threads: int, overrides: dict) -> dict:
    import os

    import numpy as np

    from backends.base import load_backend
    from common.data import BatchStream, load_dataset
    from common.progress import Progress
    from common.run.worker import load_run_recipe
    from common.stages.loop import RunContext, fit
    from common.stages.quantize import qat_freezer

    recipe = load_run_recipe(run)
    stage = qat_stage(recipe)
    if "lr" in overrides:
        overrides["optimizer"] = dataclasses.replace(stage.config.optimizer, lr=overrides.pop("lr"))
    stage = dataclasses.replace(stage, config=dataclasses.replace(stage.config, bn_recalibration_batches=recal,
                                                                  **overrides))
    cfg = stage.config
    ref = recipe.reference_framework
    ckpt = run / ref / f"seed-{seed}" / "checkpoints" / f"{cfg.model}.npz"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: missing (the {ref} run's trained '{cfg.model}' weights)")
    arch_slot = next(src for st in recipe.stages for dst, src in st.config.derived_from().items() if dst == cfg.model)
    data = load_dataset(recipe.data)
    stream = BatchStream(data, recipe.data, seed)
    backend = load_backend(backend_name)
    backend.configure(threads, "cpu", seed, recipe.runtime)
    model = backend.build_model(recipe.models[arch_slot], data.num_classes)
    backend.load_numpy_state(model, dict(np.load(ckpt)))
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        ctx = RunContext(backend, recipe, stream, data.num_classes, Path(tmp), threads, Progress(stream=devnull),
                         seed, models={cfg.model: model}, model_cfgs={cfg.model: recipe.models[arch_slot]})
        prepared = backend.prepare_qat(model, cfg, stream.val_images(2))
        rec = fit(ctx, stage, backend.trainer(prepared, cfg.optimizer), prepared, cfg.epochs, cfg.optimizer,
                  cfg.schedule, recal, before_step=qat_freezer(ctx, stage, prepared))
    top1 = [round(h["val_top1"] * 100, 2) for h in rec["history"]]
    row = {"backend": backend_name, "seed": seed, "bn_recalibration_batches": recal, "epochs": cfg.epochs,
           "freeze_epochs": cfg.freeze_epochs,
           "lr": cfg.optimizer.lr, "top1": top1,
           "last_change": round(top1[-1] - top1[-2], 2) if len(top1) > 1 else None,
           "train_time_s": round(rec["train_time_s"], 1)}
    print(f"{backend_name:<6} seed {seed} recal {recal:>2} lr {cfg.optimizer.lr:g} frozen {cfg.freeze_epochs}: "
          f"top-1 per epoch {' / '.join(f'{v:.2f}' for v in top1)}"
          f"  (last epoch {row['last_change']:+.2f}; training {row['train_time_s']} s)", flush=True)
    return row


def overrides(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("epochs", "lr", "freeze_epochs") if getattr(args, k) is not None}


def passed(args: argparse.Namespace) -> list[str]:
    return [a for k, v in overrides(args).items() for a in (f"--{k.replace('_', '-')}", str(v))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run directory (runs/<recipe>/<run-id>)")
    ap.add_argument("--backends", default="torch,paddle")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--recal", default="0,10", help="bn_recalibration_batches values to compare")
    ap.add_argument("--epochs", type=int, help="QAT epochs instead of the recipe's")
    ap.add_argument("--lr", type=float, help="QAT learning rate instead of the recipe's")
    ap.add_argument("--freeze-epochs", type=int, help="freeze_epochs instead of the recipe's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quiet-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from common.sysinfo import cpu_info, cpu_description
    if not args.quiet_cpu:
        print(f"CPU: {cpu_description(cpu_info())}; {args.threads} threads")
    backends = args.backends.split(",")
    if len(backends) > 1:  # one framework per process, as the runner does (torch and Paddle in one can crash)
        rows = []
        for backend in backends:
            with tempfile.NamedTemporaryFile(suffix=".json") as part:
                subprocess.run([sys.executable, __file__, str(args.run), "--backends", backend, "--seeds", args.seeds,
                                "--recal", args.recal, "--threads", str(args.threads), "--json", part.name,
                                "--quiet-cpu", *passed(args)], check=True)
                rows += json.loads(Path(part.name).read_text())["rows"]
    else:
        rows = [run_one(args.run, backends[0], seed, recal, args.threads, overrides(args))
                for seed in map(int, args.seeds.split(",")) for recal in map(int, args.recal.split(","))]
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(cpu_info()), "run": str(args.run), "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
