"""What a whole run costs, stage by stage, and how far its steps and latencies are from the hardware.

    python benchmarks/run_cost.py RUN_DIR [RUN_DIR ...] [--peak benchmarks/results/peak.json]

Read from the run's result files only (so it works on any finished run, including the committed reports):
per backend, the wall time and the share of each part: training (train / distill / prune / QAT optimizer steps),
the per-epoch validation and batch-norm recalibration, evaluate, export, quantize (calibration and conversion),
latency measurement (estimated as mean latency x (warm-up + repeats) of every timed batch), and the rest
(process start, initial weights, parity check, checkpoints). With --peak (hardware_peak.py's JSON), each
training stage's achieved GFLOP/s (2 x forward MACs x 3 for forward + backward, plus the teacher's forward when
distilling, x batch / time per step) and each latency's (2 x MACs x batch / p50) are printed against the
machine's fp32 / int8 ceiling. MACs are counted here on the torchvision model at the run's input size.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.results import load_results, read_json  # noqa: E402

PARTS = ("training", "validation + BN recalibration", "evaluate", "export", "quantize", "latency measurement",
         "other (start, init weights, parity, checkpoints)")


def _measure_cfg(meta: dict, stage: str) -> dict:
    for item in meta["recipe"]["stages"]:
        (_, body), = item.items()
        if body.get("name") == stage:
            return body.get("measure") or {}
    return {}


def _latency_seconds(latency: dict, warmup: int) -> float:
    return sum(rec["mean_ms"] / 1e3 * (rec["repeats"] + warmup) for rec in latency.values())


def stage_parts(record: dict, meta: dict) -> dict[str, float]:
    """One stage record's time split into PARTS."""
    total = record.get("time_s") or 0.0
    kind = record["type"]
    warmup = int(_measure_cfg(meta, record["name"]).get("warmup", 10))
    if kind == "export":
        measured = sum(_latency_seconds(m.get("latency") or {}, warmup) for m in record["models"].values())
        return {"latency measurement": measured, "export": total - measured}
    if kind == "quantize":
        measured = sum(_latency_seconds(record.get(k, {}).get("latency") or {}, warmup) for k in ("fp32", "int8"))
        trained = (record.get("qat") or {}).get("train_time_s") or 0.0
        return {"latency measurement": measured, "training": trained, "quantize": total - measured - trained}
    if kind == "evaluate":
        return {"evaluate": total}
    trained = record.get("train_time_s") or 0.0
    return {"training": trained, "validation + BN recalibration": total - trained}


def cost_table(run_dir: Path) -> str:
    meta = read_json(run_dir / "run.json")
    results = [r for r in load_results(run_dir) if r.get("status") == "ok"]
    by_backend: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    wall: dict[str, float] = defaultdict(float)
    for r in results:
        parts = by_backend[r["backend"]]
        for st in r.get("stages", []):
            for part, seconds in stage_parts(st, meta).items():
                parts[part] += seconds
        wall[r["backend"]] += r.get("wall_time_s") or 0.0
        parts["other (start, init weights, parity, checkpoints)"] += (r.get("wall_time_s") or 0.0) - sum(
            st.get("time_s") or 0.0 for st in r.get("stages", []))
    cpu = ((results[0].get("environment") or {}).get("cpu") or {}).get("model", "?") if results else "?"
    seeds = sorted({r["seed"] for r in results})
    backends = sorted(by_backend)
    lines = [f"### {meta['recipe_name']} (profile {meta['profile']}, seeds {', '.join(map(str, seeds))}, "
             f"{meta['threads']} threads, {cpu})", "",
             "| part | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for part in PARTS:
        cells = [f"{by_backend[b].get(part, 0.0) / 60:.1f} min ({by_backend[b].get(part, 0.0) / max(wall[b], 1e-9):.0%})"
                 for b in backends]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **wall time** | " + " | ".join(f"**{wall[b] / 60:.1f} min**" for b in backends) + " |")
    return "\n".join(lines) + "\n"


def _macs(arch: str, small_input: bool, size: int, num_classes: int) -> int:
    """Forward MACs of one image, counted on the torchvision model (convolutions and linear layers)."""
    import torch
    from backends.torch.models import build_model
    from common.config import ModelConfig
    from common.metrics import conv_macs
    model = build_model(ModelConfig(arch=arch, small_input=small_input), num_classes).eval()
    total = [0]

    def hook(module, _inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            total[0] += conv_macs(tuple(output.shape[1:]), tuple(module.weight.shape))
        elif isinstance(module, torch.nn.Linear):
            total[0] += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total[0]


def throughput_table(run_dir: Path, peak: dict) -> str:
    """Achieved GFLOP/s of every training stage and latency against the machine's ceiling."""
    meta = read_json(run_dir / "run.json")
    recipe = meta["recipe"]
    size, batch = recipe["data"].get("image_size", 32), recipe["data"].get("batch_size", 64)
    models = recipe["models"]
    arch_of: dict[str, tuple[str, bool]] = {s: (m["arch"], bool(m.get("small_input"))) for s, m in models.items()}
    for item in recipe["stages"]:  # derived slots have their parent's architecture
        (_, body), = item.items()
        src = body.get("model") or body.get("student")
        for out in ([body.get("output")] if body.get("output") else []):
            if src in arch_of:
                arch_of[out] = arch_of[src]
    macs_cache: dict[tuple[str, bool], int] = {}
    counted: dict[tuple[str, str], int] = {}  # (backend, slot) -> MACs counted from its exported artifact

    def macs(slot: str, backend: str) -> int | None:
        """The artifact's count where the slot was exported (a pruned model's own), else the architecture's."""
        if (backend, slot) in counted:
            return counted[(backend, slot)]
        if slot not in arch_of:
            return None
        key = arch_of[slot]
        if key not in macs_cache:
            macs_cache[key] = _macs(key[0], key[1], size, 10)
        return macs_cache[key]

    results = [r for r in load_results(run_dir) if r.get("status") == "ok"]
    for r in results:
        for st in r.get("stages", []):
            if st["type"] == "export":
                counted.update({(r["backend"], slot): m["macs"] for slot, m in st["models"].items() if m.get("macs")})
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in results:
        b = r["backend"]
        for st in r.get("stages", []):
            if st.get("time_per_step_s") and st.get("steps"):
                body = next(b for item in recipe["stages"] for b in item.values() if b.get("name") == st["name"])
                student = body.get("student") or body.get("model")
                out = st.get("model") or student
                flops = 6 * (macs(out, b) or 0) + (2 * (macs(body["teacher"], b) or 0) if body.get("teacher") else 0)
                rows[(f"`{st['name']}` training step (batch {batch})", b)].append(
                    flops * batch / st["time_per_step_s"] / 1e9)
            if st["type"] == "export":
                for slot, m in st["models"].items():
                    runtime = str(m.get("runtime", "?")).split(" (")[0]
                    for bs, rec in (m.get("latency") or {}).items():
                        if macs(slot, b):
                            rows[(f"`{slot}` latency, {runtime}, batch {bs}", b)].append(
                                2 * macs(slot, b) * int(bs) / (rec["p50_ms"] / 1e3) / 1e9)
    ceiling = max(peak.get("fp32_conv3x3_gflops") or 0, peak.get("fp32_gemm_gflops") or 0)  # the best fp32 seen
    cpus = {((r.get("environment") or {}).get("cpu") or {}).get("model") for r in results}
    same = cpus == {peak.get("cpu")}
    lines = [f"fp32 ceiling {ceiling:.0f} GFLOP/s on {peak.get('cpu')} (hardware_peak.py, the faster of GEMM "
             f"{peak.get('fp32_gemm_gflops', 0):.0f} and 3x3 conv {peak.get('fp32_conv3x3_gflops', 0):.0f}; int8 "
             f"GEMM {peak.get('int8_gemm_gops', 0):.0f} GOP/s)"
             + ("" if same else f"; the run is from {', '.join(sorted(map(str, cpus)))}: no share of the ceiling "
                "is given for another machine"), "",
             "| what | backend | achieved GFLOP/s | of ceiling |", "|---|---|---|---|"]
    for (what, backend), values in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        mean = sum(values) / len(values)
        lines.append(f"| {what} | {backend} | {mean:.1f} | {f'{mean / ceiling:.0%}' if same else '-'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--peak", type=Path, default=None, help="hardware_peak.py --out JSON: adds achieved GFLOP/s")
    a = p.parse_args()
    peak = json.loads(a.peak.read_text()) if a.peak else None
    for run in a.runs:
        print(cost_table(run))
        if peak:
            print(throughput_table(run, peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
