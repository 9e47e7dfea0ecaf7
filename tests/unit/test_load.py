"""Background load during a timed window: measured from /proc/stat minus this process's own CPU time."""
from __future__ import annotations

import subprocess
import sys
import time

from common.load import CONTENDED_CORES, LoadMeter


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_our_own_work_is_not_background_load():
    with LoadMeter() as meter:
        _spin(0.6)
    assert meter.background_cores is not None and meter.background_cores < 0.5


def test_another_process_spinning_is_background_load():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        with LoadMeter() as meter:
            time.sleep(1.0)
    finally:
        hog.kill()
        hog.wait()
    rec = meter.record()
    assert rec["background_cores"] > 0.5 and rec["contended"] is True and rec["threshold_cores"] == CONTENDED_CORES
    assert "flagged contended" in meter.warning("a test")


def test_windows_accumulate():
    meter = LoadMeter()
    for _ in range(3):
        meter.start()
        time.sleep(0.1)
        meter.stop()
    assert 0.25 < meter.wall_s < 1.0
