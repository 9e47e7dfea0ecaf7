"""Inference latency of one model on every deployment runtime slimbench measures (issue 14, item 1), in one
process and in alternation, so the runtimes are compared at the same moment on the same machine.

Per architecture (randomly initialised, batch-norm statistics from two batches so logits are O(1); the same
weights on both frameworks through slimbench's converter): PyTorch eager on the torch.export program (reference),
TorchScript frozen at load, TorchScript with optimize_for_inference, torch.compile (Inductor, frozen weights,
compiled per batch size before its timing), ONNX Runtime on torch.onnx.export's file;
Paddle Inference with oneDNN (reference), Paddle Inference native, ONNX Runtime on paddle2onnx's file. Every path
is checked against its framework's reference artifact first (max logit difference relative to the largest).

    .venv/bin/python benchmarks/deployment_runtimes.py --archs mobilenet_v2,resnet50 --batches 1,32
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402  (torch before paddle, as the tests import them)

from backends.base import load_backend  # noqa: E402
from common import onnx_runtime  # noqa: E402
from common.config import ModelConfig  # noqa: E402
from common.load import LoadMeter  # noqa: E402
from common.metrics import latency_summary, logit_difference, time_alternating  # noqa: E402
from common.sysinfo import platform_info  # noqa: E402


def paths(name: str, backend, arch: str, state: dict | None, work: Path, threads: int) -> tuple[dict, dict]:
    """runtime -> predictor for one framework, and the weights it used (numpy state) for the other."""
    model = backend.build_model(ModelConfig(arch=arch, small_input=True), 10)
    if state is None:
        rng = np.random.default_rng(0)
        backend.recalibrate_bn(model, iter([rng.standard_normal((16, 3, 32, 32)).astype(np.float32)] * 2))
        state = backend.state_to_numpy(model)
    else:
        backend.load_numpy_state(model, state)
    example = np.zeros((2, 3, 32, 32), np.float32)
    artifact = backend.export(model, example, work / name / "artifact")
    out = {f"{name}: {backend.runtime_name()}": backend.load_artifact(artifact, threads)}
    for cand in backend.export_candidates(model, artifact, example, work / name / "candidates"):
        key = f"{name}: {backend.runtime_name(cand)}"
        try:
            out[key] = backend.load_artifact(cand, threads)
        except Exception as e:  # printed: a path this model cannot take
            print(f"{key} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if getattr(out[key], "compile_s", None):  # compiled at load for compile_batches
            sizes = " and ".join(str(b) for b in out[key].compile_batches)
            print(f"{key}: compiled for batch {sizes} in {out[key].compile_s:.1f} s", file=sys.stderr)
    onnx = backend.export_onnx(model, artifact, example, work / name / "onnx")
    out[f"{name}: {onnx_runtime.runtime_name()}"] = onnx_runtime.load_predictor(onnx.entry, threads)
    return out, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="mobilenet_v2,resnet50")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, help="JSON of every figure")
    args = ap.parse_args()
    backends = {}
    for name in ("torch", "paddle"):
        backends[name] = load_backend(name)
        backends[name].configure(args.threads, "cpu", 0)
    report = {"environment": {**platform_info(), "threads": args.threads}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            fns, state = paths("torch", backends["torch"], arch, None, Path(tmp) / arch, args.threads)
            more, _ = paths("paddle", backends["paddle"], arch, state, Path(tmp) / arch, args.threads)
            fns.update(more)
            probe = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
            refs = {fw: next(f for k, f in fns.items() if k.startswith(fw))(probe) for fw in ("torch", "paddle")}
            report["compile_s"] = {**report.get("compile_s", {}), **{
                f"{arch}: {k}": f.compile_s for k, f in fns.items() if getattr(f, "compile_s", None)}}
            for bs in map(int, args.batches.split(",")):
                x = np.random.default_rng(2).standard_normal((bs, 3, 32, 32)).astype(np.float32)
                for k, f in fns.items():  # first call outside the window: a compiling runtime compiles this size
                    t0 = time.perf_counter()
                    f(x)
                    if getattr(f, "compile_s", None):
                        report["compile_s"][f"{arch}: {k} first call at batch {bs}"] = time.perf_counter() - t0
                with LoadMeter() as load:
                    times = time_alternating({k: (lambda f=f: f(x)) for k, f in fns.items()}, args.warmup,
                                             args.repeats)
                for k, t in times.items():
                    check = logit_difference(refs[k.split(":")[0]], fns[k](probe))
                    row = {"arch": arch, "batch": bs, "runtime": k, **latency_summary(t),
                           "max_rel_vs_reference": check["max_rel"], "top1_agree": check["argmax_agree"],
                           "load": load.record()}
                    report["rows"].append(row)
                    print(f"{arch:13s} b{bs:<3d} {k:95s} p50 {row['p50_ms']:8.2f} ms  "
                          f"rel {check['max_rel']:.1e}  background cores {load.record()['background_cores']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
