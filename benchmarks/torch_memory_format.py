"""Is channels_last (NHWC) still the faster torch CPU training layout on this CPU? NCHW against channels_last.

    python benchmarks/torch_memory_format.py mobilenet_v2 6        # archs (comma-separated), rounds

`runtime.cpu_tuning` trains models with depthwise convolutions in channels_last on the CPU because it ran
MobileNetV2 steps 2.1x faster on a 2-core Intel Xeon with AVX-512 (benchmarks/README.md). This times the two
layouts' training steps (32x32, batch 64, AdamW) in one process, alternating A B / B A per round (5 steps each),
so a machine without AVX-512 can be checked. Run it alone; it prints the CPU.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from backends.base import load_backend  # noqa: E402
from common.config import ModelConfig, OptimizerConfig, RuntimeConfig  # noqa: E402
from common.sysinfo import cpu_description, cpu_info  # noqa: E402


def main() -> None:
    archs, rounds = sys.argv[1].split(","), int(sys.argv[2])
    print(f"CPU: {cpu_description(cpu_info())}")
    backend = load_backend("torch")
    backend.configure(2, "cpu", 0, RuntimeConfig(cpu_tuning=False))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    opt = OptimizerConfig(name="adamw", lr=0.001)
    for arch in archs:
        trainers = {}
        for name, runtime in (("nchw", RuntimeConfig(cpu_tuning=False)),
                              ("channels_last", RuntimeConfig(cpu_tuning=False, channels_last=True))):
            backend.runtime = runtime  # what the backend's trainer() reads
            trainers[name] = backend.trainer(backend.build_model(ModelConfig(arch=arch), 10), opt)
            for _ in range(3):  # warm-up
                trainers[name].step(x, y, 0.001)
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for r in range(rounds):
            for name, t in (list(trainers.items()) if r % 2 == 0 else list(reversed(trainers.items()))):
                t0 = time.perf_counter()
                for _ in range(5):
                    t.step(x, y, 0.001)
                times[name].append((time.perf_counter() - t0) / 5)
        for name, v in times.items():
            print(f"{arch:14s} {name:14s} median step {np.median(v) * 1000:.1f} ms "
                  f"(min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f}; {rounds} rounds x 5 steps)")


if __name__ == "__main__":
    main()
