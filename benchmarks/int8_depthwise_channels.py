"""Why a filter-pruned MobileNetV2 runs slower in PyTorch int8 than in fp32 (issue 14, item 4): fbgemm's int8
depthwise convolution against the channel count, one layer at a time, fp32 beside it, timed in alternation.

    .venv/bin/python benchmarks/int8_depthwise_channels.py          # 3x3 depthwise, batch 32, 16x16 maps
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.ao.nn import quantized as nnq  # noqa: E402

from common.load import LoadMeter  # noqa: E402
from common.metrics import latency_summary, time_alternating  # noqa: E402
from common.sysinfo import platform_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", default="22,24,64,67,96,100,128,134")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.backends.quantized.engine = "fbgemm"
    torch.set_num_threads(args.threads)
    info = platform_info()
    print(f"{info.get('cpu')} | torch {torch.__version__} | {args.threads} threads | batch {args.batch}, "
          f"{args.size}x{args.size}, 3x3 depthwise")
    print("| channels | multiple of 8 | fp32 p50 ms | int8 p50 ms | int8 / fp32 |\n|---|---|---|---|---|")
    for c in map(int, args.channels.split(",")):
        x = torch.randn(args.batch, c, args.size, args.size)
        fp32 = torch.nn.Conv2d(c, c, 3, padding=1, groups=c).eval()
        int8 = nnq.Conv2d(c, c, 3, padding=1, groups=c)
        xq = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
        with torch.inference_mode(), LoadMeter() as load:
            t = time_alternating({"fp32": lambda: fp32(x), "int8": lambda: int8(xq)}, 5, 30)
        a, b = latency_summary(t["fp32"])["p50_ms"], latency_summary(t["int8"])["p50_ms"]
        flag = " (contended)" if load.record()["contended"] else ""
        print(f"| {c} | {'yes' if c % 8 == 0 else 'no'} | {a:.2f} | {b:.2f} | {b / a:.1f}x{flag} |")


if __name__ == "__main__":
    main()
