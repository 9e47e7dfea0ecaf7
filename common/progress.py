"""Live progress for long work: stage, epoch, step, loss and ETA, throttled to stay readable.

Workers print lines starting with MARK; the runner shows those on the console and keeps the
framework's own chatter in the log file only.
"""
from __future__ import annotations

import sys
import time

MARK = "[slimbench] "


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, every_s: float = 10.0, stream=None):
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self._last = 0.0

    def say(self, text: str) -> None:
        self.stream.write(MARK + text + "\n")
        self.stream.flush()

    def start_loop(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        self.stage, self.epochs, self.spe = stage, epochs, steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.t0 = time.perf_counter()
        self._last = self.t0
        self.say(f"{stage}: {epochs} epoch(s) x {steps_per_epoch} steps")

    def step(self, epoch: int, step: int, loss: float, lr: float) -> None:
        now = time.perf_counter()
        done = epoch * self.spe + step + 1
        if now - self._last < self.every_s and done != 1:
            return
        self._last = now
        eta = (now - self.t0) / done * (self.total - done)
        self.say(f"{self.stage}  epoch {epoch + 1}/{self.epochs}  step {step + 1}/{self.spe}  loss {loss:.4f}  "
                 f"lr {lr:.2e}  ETA {fmt_duration(eta)}")

    def epoch_done(self, epoch: int, train_loss: float, val: dict, seconds: float) -> None:
        self.say(f"{self.stage}  epoch {epoch + 1}/{self.epochs} done in {seconds:.1f}s  train loss {train_loss:.4f}  "
                 f"val top1 {val['top1'] * 100:.2f}%  val loss {val['loss']:.4f}")
