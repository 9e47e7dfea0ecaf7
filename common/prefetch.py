"""Prepare the next training batches in background threads while the current step runs.

On a GPU a step of ResNet50+MobileNetV2 at 224 px takes less time than numpy takes to index, crop, flip and
normalise a batch of 256 images in one thread: done in line, data preparation would add its whole time to
every step (measured on an H100: the project's KD stage at 1,220 img/s against 3,600 for a loop fed
pre-built batches). numpy releases the GIL in its array kernels, so a few threads overlap with the step and
with each other. Batches come out in the order of `items`; the random draws that decide a batch happen in
the caller's thread (see BatchStream.train_plans), so the stream stays bit-identical across backends.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


def default_workers(cpu_count: int | None = None) -> int:
    """One thread on small machines (the step itself needs the cores), up to 4 on large ones;
    SLIMBENCH_DATA_THREADS overrides (0: batches are made in line, no thread)."""
    if os.environ.get("SLIMBENCH_DATA_THREADS"):
        return max(0, int(os.environ["SLIMBENCH_DATA_THREADS"]))
    cores = cpu_count or os.cpu_count() or 1
    return 1 if cores <= 4 else min(4, cores // 4)


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, depth: int | None = None) -> Iterator[R]:
    """`map(fn, items)` computed up to `depth` items ahead by `workers` threads, yielded in order.

    An exception in `fn` is raised where its item would have been yielded. Leaving the loop early cancels
    the items not started and waits for the (at most `workers`) running ones.
    """
    if workers == 0:
        yield from map(fn, items)
        return
    depth = max(depth or workers + 1, 1)
    source = iter(items)
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="slimbench-prefetch")

    def submit_next() -> None:
        item = next(source, _END)
        if item is not _END:
            pending.append(pool.submit(fn, item))

    try:
        for _ in range(depth):
            submit_next()
        while pending:
            result = pending.popleft().result()
            submit_next()
            yield result
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
