"""What one Inductor compile costs, per batch size, for the models the recipes export.

    python benchmarks/inductor_compile_per_batch.py [--archs resnet50,mobilenet_v2] [--batches 1,2,8,32]

The torch backend's `inductor` runtime (backends/torch/measure.py) compiles a torch.export program with frozen
weights once per input batch size (static shapes). Every size a stage or a paired-timing process feeds it costs
one compile, so the stages feed as few sizes as they can (validation at a timed size: predict_validation). This
prints each size's first-call seconds in one process, through the backend's own loader, so the kernel cache is as
warm as in a run. Run it alone on the machine; the first compile also pays for C++ kernels not yet cached.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet50,mobilenet_v2")
    ap.add_argument("--batches", default="1,2,8,32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import dataclasses

    import torch

    from backends.torch.export import export_model
    from backends.torch.measure import load_predictor
    from backends.torch.models import build_model
    from common.config import ModelConfig
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as work:
        for arch in args.archs.split(","):
            model = build_model(ModelConfig(arch=arch), 10).eval()
            artifact = export_model(model, np.zeros((2, 3, 32, 32), np.float32), Path(work) / arch)
            artifact = dataclasses.replace(artifact, extra={**artifact.extra, "runtime": "inductor"})
            predict = load_predictor(artifact, torch.device("cpu"))
            print(f"{arch}: load compiled batch {list(predict.compile_batches)} in {predict.compile_s:.1f} s",
                  flush=True)
            for b in batches:
                t0 = time.perf_counter()
                predict(np.zeros((b, 3, 32, 32), np.float32))
                print(f"{arch}: first call at batch {b}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
