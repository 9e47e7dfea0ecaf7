"""The background batch preparation keeps the stream's order and its errors, and stops when the loop stops."""
from __future__ import annotations

import threading
import time

import pytest

from common.prefetch import default_workers, prefetch_map


def _slow_square(x: int) -> int:
    time.sleep(0.001 * (x % 3))  # out-of-order completion across threads
    return x * x


@pytest.mark.parametrize("workers", [1, 3])
def test_results_come_in_input_order(workers):
    assert list(prefetch_map(_slow_square, range(50), workers=workers)) == [x * x for x in range(50)]


def test_error_in_a_batch_is_raised_at_that_batch():
    def fn(x):
        if x == 2:
            raise ValueError("bad batch 2")
        return x

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for x in prefetch_map(fn, range(10), workers=2):
            got.append(x)
    assert got == [0, 1]


def test_leaving_early_stops_the_threads():
    started = []

    def fn(x):
        started.append(x)
        return x

    for x in prefetch_map(fn, range(10_000), workers=2, depth=3):
        if x == 3:
            break
    assert not any(t.name.startswith("slimbench-prefetch") for t in threading.enumerate())
    assert len(started) <= 3 + 1 + 3  # consumed + the one in hand + look-ahead


def test_works_ahead_of_the_consumer():
    done = []

    def fn(x):
        done.append(x)
        return x

    for x in prefetch_map(fn, range(5), workers=1, depth=2):
        if x == 0:
            time.sleep(0.2)
            assert len(done) >= 2


def test_default_workers_leave_small_machines_one_thread():
    assert default_workers(2) == 1
    assert default_workers(16) == 4
    assert default_workers(128) == 4


def test_zero_workers_make_batches_in_line(monkeypatch):
    monkeypatch.setenv("SLIMBENCH_DATA_THREADS", "0")
    assert default_workers(16) == 0
    calls = []
    out = prefetch_map(lambda i: calls.append(i) or i * 2, range(5), workers=0)
    assert calls == []  # lazy, like map
    assert next(out) == 0 and calls == [0]
    assert list(out) == [2, 4, 6, 8]
    assert threading.active_count() == 1 or all(not t.name.startswith("slimbench-prefetch")
                                                  for t in threading.enumerate())
