"""How fast this machine can go: achievable fp32 GEMM, fp32 convolution and int8 GEMM throughput at the thread
count slimbench runs with, so run_cost.py can say how far each training step and latency is from the hardware.

    python benchmarks/hardware_peak.py [--threads 2] [--out benchmarks/results/peak.json]

Probes run in PyTorch (MKL / oneDNN kernels, the libraries both frameworks call on x86): a square matmul
(fp32, 1024..2048), a 3x3 convolution at 128 channels on 28x28 maps (batch 32, the shape class of a ResNet's
middle layers), and an int8 quantized Linear of the same sizes on torch's quantized engine (x86/fbgemm). Each is the best of several timed repeats after a
warm-up: a ceiling the models' small layers cannot reach, not an average. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best(fn, repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe(threads: int) -> dict:
    import warnings
    import torch
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")
    torch.set_num_threads(threads)
    out: dict = {"threads": threads}
    gemm = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        gemm[n] = 2 * n ** 3 / _best(lambda: a @ b) / 1e9
    out["fp32_gemm_gflops"] = max(gemm.values())
    x = torch.randn(32, 128, 28, 28)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).eval()
    with torch.inference_mode():
        seconds = _best(lambda: conv(x))
    out["fp32_conv3x3_gflops"] = 2 * 32 * 128 * 28 * 28 * 128 * 9 / seconds / 1e9
    # int8 through the quantized engine torch int8 models run on (fbgemm/x86), not torch._int_mm (a reference
    # kernel on CPUs: ~2 GOP/s measured, 60x below this path)
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    ints = {}
    for n in (1024, 2048):
        qa = torch.quantize_per_tensor(torch.rand(n, n), 0.01, 0, torch.quint8)
        packed = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(torch.randn(n, n), 0.02, 0,
                                                                              torch.qint8), None)
        ints[n] = 2 * n ** 3 / _best(lambda: torch.ops.quantized.linear(qa, packed, 1.0, 0)) / 1e9
    out["int8_gemm_gops"] = max(ints.values())
    out["int8_engine"] = torch.backends.quantized.engine
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    a = p.parse_args()
    from common.sysinfo import cpu_info
    from common.load import LoadMeter
    with LoadMeter() as load:
        figures = probe(a.threads)
    figures.update(cpu=cpu_info()["model"], background_cores=load.record().get("background_cores"))
    for k in ("fp32_gemm_gflops", "fp32_conv3x3_gflops", "int8_gemm_gops"):
        print(f"{k:22s} {figures[k]:8.1f}")
    print(f"({figures['cpu']}, {a.threads} threads, background load {figures['background_cores']} cores)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
