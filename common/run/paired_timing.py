"""The paired timing phase: after every backend and seed of a run has finished, each artifact is timed again.

A latency verdict compares two frameworks, so their timings must be taken under the same conditions. Per-stage
timings are not: the backends run one after another, minutes apart, and a busier minute on a shared 2-core VM
flipped a committed verdict. Here every backend's artifacts of one seed are timed in fresh processes, backends
alternating A B B A (`timing.rounds` processes per backend, forward then backward), with the inputs, threads,
warm-up and repeats of the stage that measured them first. Inside a process, the artifacts of a batch size are
timed in alternation too (common/metrics.time_alternating), so int8 against fp32 stays like for like.

Each process writes RUN/timing/seed-N/round-K.<backend>.json; the report pools the rounds of a (backend, seed)
and uses them instead of the per-stage latencies, which stay in result.json for the record
(common/report/paired.py). `run-recipe --resume` times a seed again whose rounds saw background load, keeping
the earlier rounds in RUN/timing/seed-N/contended-K/.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.progress import fmt_duration
from common.results import TIMING_DIR, read_json, seed_dir, timing_round_path
from common.stages.registry import stage_type

if TYPE_CHECKING:
    from common.recipe.loader import Recipe
    from common.run.runner import Executor

def timed_items(result: dict) -> list[dict[str, Any]]:
    """Every artifact a finished (backend, seed) measured: stage name, key in the stage record, fp32 or int8, and
    the artifact record itself (format, files, entry, extra, runtime, latency)."""
    items = []
    for st in result.get("stages", []):
        kind = stage_type(st.get("type", ""))
        if st.get("status") != "ok" or kind is None:
            continue
        for key, record, artifact_kind in kind.timed_artifacts(st):
            items.append({"stage": st["name"], "key": key, "kind": artifact_kind, "record": record})
    return items


def schedule(backends: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, backend) in the order they run: forward, then backward, and so on (two rounds: A B B A)."""
    order: list[tuple[int, str]] = []
    for r in range(rounds):
        order += [(r, b) for b in (backends if r % 2 == 0 else list(reversed(backends)))]
    return order


def is_current(path: Path, result: dict) -> bool:
    """A round file that timed this very result (a backend re-run on resume makes older rounds stale)."""
    if not path.is_file():
        return False
    data = read_json(path)
    return data.get("status") == "ok" and data.get("result_finished_at") == result.get("finished_at")


def contended(path: Path) -> bool:
    """A round file in which some timed window saw background load (common/load.py)."""
    data = read_json(path)
    return any((lat.get("load") or {}).get("contended") for item in data.get("items", [])
               for lat in (item.get("latency") or {}).values())


def set_aside_contended(run_dir: Path, seed: int, results: dict[str, dict]) -> Path | None:
    """On resume, a seed whose current rounds include a contended window is timed again as a whole (A B B A
    together, so the pairing holds): its round files move to timing/seed-N/contended-K/, kept, not read by the
    report. Returns that folder, or None when the seed's rounds were quiet."""
    folder = run_dir / TIMING_DIR / f"seed-{seed}"
    current = [p for b, result in results.items() for p in sorted(folder.glob(f"round-*.{b}.json"))
               if is_current(p, result)]
    if not any(contended(p) for p in current):
        return None
    k = 1
    while (folder / f"contended-{k}").exists():
        k += 1
    aside = folder / f"contended-{k}"
    aside.mkdir()
    for p in sorted(folder.glob("round-*.json")):
        p.rename(aside / p.name)
    return aside


def _ready(run_dir: Path, backends: list[str], seed: int) -> tuple[list[str], str | None]:
    """Backends of a seed with a finished result and something to time; the reason when fewer than two."""
    ready = []
    for b in backends:
        path = seed_dir(run_dir, b, seed) / "result.json"
        if path.is_file():
            result = read_json(path)
            if result.get("status") == "ok" and timed_items(result):
                ready.append(b)
    if len(ready) < 2:
        return ready, ("no exported or int8 artifact to time" if not ready else
                       f"only {ready[0]} has finished artifacts to time")
    return ready, None


def run_phase(run_dir: Path, recipe: "Recipe", backends: list[str], threads: int, executor: "Executor") -> list[str]:
    """Time every seed's artifacts in alternating fresh processes; return the failures (the run's results stand,
    the report then uses the per-stage timings of what could not be re-timed)."""
    failures: list[str] = []
    if not recipe.timing.paired:
        return failures
    t0 = time.time()
    said = False
    for seed in recipe.seeds:
        ready, why_not = _ready(run_dir, backends, seed)
        if why_not:
            if len(backends) > 1:
                print(f"paired timing, seed {seed}: skipped ({why_not})", flush=True)
            continue
        if not said:
            order = " ".join(b for _, b in schedule(ready, recipe.timing.rounds))
            print(f"paired timing: every artifact timed again per seed, processes {order}", flush=True)
            said = True
        results = {b: read_json(seed_dir(run_dir, b, seed) / "result.json") for b in ready}
        log = run_dir / TIMING_DIR / f"seed-{seed}" / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        aside = set_aside_contended(run_dir, seed, results)
        if aside:
            print(f"paired timing, seed {seed}: its rounds were taken under background load; timed again (the "
                  f"earlier rounds are kept in {aside})", flush=True)
        for r, b in schedule(ready, recipe.timing.rounds):
            if is_current(timing_round_path(run_dir, seed, r, b), results[b]):
                continue
            code = executor.run(["time", str(run_dir), "--backend", b, "--seed", str(seed), "--round", str(r)], log,
                                f"{b} seed {seed} timing {r + 1}/{recipe.timing.rounds}", threads, b, recipe.runtime,
                                run_dir)
            if code != 0:
                msg = f"paired timing of {b} seed {seed}, round {r + 1} failed (exit code {code}; log: {log})"
                failures.append(msg)
                print(f"  {msg}", flush=True)
    if said:
        print(f"paired timing finished in {fmt_duration(time.time() - t0)}", flush=True)
    return failures
