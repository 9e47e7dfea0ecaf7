"""Was the machine quiet while we timed? CPU time other processes used during a timed window.

Oversubscribed cores slow torch and Paddle by up to 10x (a busy 2-core VM flipped a latency verdict), so every
timed window (a latency measurement, a training stage) records the background load: the machine's busy CPU time
from /proc/stat minus this process's own, per second of wall time, in cores. Above CONTENDED_CORES the
measurement is flagged "contended": the report gives its rows no verdict and the console warns.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CONTENDED_CORES = 0.1
# Tick-counted CPU times cannot resolve 0.1 core over a few milliseconds: a shorter window is extended by an idle
# wait of this length in total, during which whatever CPU is used is other processes'.
MIN_WINDOW_S = 0.3
_STAT = Path("/proc/stat")
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (not idle, not iowait)


def _machine_busy_s() -> float | None:
    """Seconds of CPU the whole machine spent busy since boot, or None where /proc/stat is missing."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadMeter:
    """Background load over one or more windows: `with meter: ...` (repeatable, e.g. each epoch's training
    outside its validation pass), then `meter.record()`."""
    other_s: float = 0.0
    wall_s: float = 0.0
    margin_s: float = 0.0  # what clock-tick rounding of the counters can add to other_s
    measured: bool = True
    _start: tuple[float, float | None, float] = (0.0, None, 0.0)

    def __enter__(self) -> "LoadMeter":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._start = (time.perf_counter(), _machine_busy_s(), _own_cpu_s())

    def stop(self) -> None:
        wall0, busy0, own0 = self._start
        busy = _machine_busy_s()
        if busy is None or busy0 is None:
            self.measured = False
            return
        self.wall_s += time.perf_counter() - wall0
        self.other_s += max(0.0, (busy - busy0) - (_own_cpu_s() - own0))
        # /proc/stat and os.times() count whole clock ticks (10 ms): each read can be off by a tick per CPU
        self.margin_s += 2 * ((os.cpu_count() or 1) + 1) / os.sysconf("SC_CLK_TCK")

    @property
    def background_cores(self) -> float | None:
        return self.other_s / self.wall_s if self.measured and self.wall_s > 0 else None

    @property
    def contended(self) -> bool:
        """More background load than the threshold even after the counters' rounding is given the benefit of
        the doubt (a window of a tenth of a second cannot show 0.1 core; one of seconds can)."""
        if self.background_cores is None:
            return False
        return (self.other_s - self.margin_s) / self.wall_s > CONTENDED_CORES

    def settle(self, min_window_s: float = MIN_WINDOW_S) -> None:
        """Extend a window shorter than `min_window_s` by an idle wait, so the counters can resolve the load."""
        if self.measured and self.wall_s < min_window_s:
            self.start()
            time.sleep(min_window_s - self.wall_s)
            self.stop()

    def record(self) -> dict[str, object]:
        """What a result stores: background cores (None where it cannot be measured) and the contended flag."""
        self.settle()
        cores = self.background_cores
        return {"background_cores": cores, "contended": self.contended, "threshold_cores": CONTENDED_CORES,
                "window_s": self.wall_s, "rounding_cores": self.margin_s / self.wall_s if self.wall_s else None}

    def warning(self, what: str) -> str | None:
        """A console line when the window was contended."""
        self.settle()
        cores = self.background_cores
        if cores is None or not self.contended:
            return None
        return (f"warning: other processes used {cores:.2f} cores during {what}: the timing is flagged contended "
                "and gets no verdict (run on a quiet machine)")
