"""The report's latencies from the paired timing phase (common/run/paired_timing.py).

For each (backend, seed) whose artifacts were timed again, the timings of its rounds are pooled per artifact and
batch size, and replace the per-stage latency in the records the report reads; the per-stage figures move to
`latency_in_stage` beside them. The result files on disk are not changed. A round is used only if it timed the
result as it is now (a backend re-run on resume makes older rounds stale) and finished.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from common.backend_names import title
from common.errors import RunFilesError
from common.metrics import latency_summary
from common.results import load_results, read_json, timing_round_files
from common.stages.registry import stage_type


def load_report_results(run_dir: Path) -> tuple[list[dict], dict]:
    """A run's results as every report reads them (report, compare, the publishing check): per-stage latencies
    replaced by the paired timing phase's where it ran."""
    return with_paired_latency(run_dir, load_results(run_dir))


def _is_item(it: object) -> bool:
    if not isinstance(it, dict) or not {"stage", "key"} <= set(it) or not isinstance(it.get("latency"), dict):
        return False
    return all(isinstance(lat, dict) and isinstance(lat.get("times_ms"), list) and lat["times_ms"]
               and all(isinstance(t, (int, float)) for t in lat["times_ms"]) for lat in it["latency"].values())


def _rounds_by_result(run_dir: Path) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for path in timing_round_files(run_dir):
        data = read_json(path)
        if data.get("status") != "ok":
            continue  # a failed or interrupted round: its (backend, seed) keeps what the other rounds measured
        items = data.get("items")
        if (not isinstance(data.get("backend"), str) or not isinstance(data.get("seed"), int)
                or not isinstance(items, list) or not all(_is_item(it) for it in items)):
            raise RunFilesError(f"{path}: not a paired timing round (expected backend, seed and items with stage, key "
                                "and per-batch latency with times_ms); the file is damaged or comes from another "
                                "slimbench version")
        out.setdefault((data["backend"], data["seed"]), []).append(data)
    return out


def _timed(st: dict) -> list[tuple[str, dict, str]]:
    kind = stage_type(st.get("type", ""))
    return kind.timed_artifacts(st) if st.get("status") == "ok" and kind is not None else []


def _latencies(st: dict) -> int:
    """How many latency figures a stage record holds (results from before export records named their entry file
    cannot be re-timed, but were timed)."""
    kind = stage_type(st.get("type", ""))
    if st.get("status") != "ok" or kind is None:
        return 0
    return sum(1 for group, *_ in kind.timings(st) if group == "latency")


def _pooled(entries: list[dict]) -> dict:
    """One latency record from several rounds' records of one batch size: every timed call pooled, the window
    with the most background load kept (a single contended round is enough to flag the figure)."""
    times = np.concatenate([np.asarray(e["times_ms"], dtype=float) / 1e3 for e in entries])
    loads = [e["load"] for e in entries if e.get("load")]
    worst = max(loads, key=lambda ld: ld.get("background_cores") or 0.0) if loads else None
    return {**latency_summary(times), "rounds": len(entries), "paired": True, **({"load": worst} if worst else {})}


def with_paired_latency(run_dir: Path, results: list[dict]) -> tuple[list[dict], dict]:
    """Copies of `results` with each re-timed artifact's latency replaced by the paired phase's, and what was
    done: {"rounds": {backend: rounds per seed}, "retimed": artifacts re-timed, "timed": latency figures at all,
    "stale": rounds not used}. Results without current rounds keep their per-stage latency."""
    rounds = _rounds_by_result(run_dir)
    info: dict = {"rounds": {}, "retimed": 0, "stale": 0, "timed": sum(_latencies(st) for r in results
                                                                     for st in r.get("stages", []))}
    if not rounds:
        return results, info
    out = []
    for r in results:
        mine = [x for x in rounds.get((r["backend"], r["seed"]), [])]
        current = [x for x in mine if x.get("result_finished_at") == r.get("finished_at")]
        info["stale"] += len(mine) - len(current)
        if not current:
            out.append(r)
            continue
        r = copy.deepcopy(r)
        info["rounds"].setdefault(r["backend"], set()).add(len(current))
        timed = {(it["stage"], it["key"]): [] for x in current for it in x["items"]}
        for x in current:
            for it in x["items"]:
                timed[(it["stage"], it["key"])].append(it["latency"])
        for st in r.get("stages", []):
            changed = False
            for key, rec, _ in _timed(st):
                per_round = timed.get((st["name"], key))
                if not per_round:
                    continue
                rec["latency_in_stage"] = rec["latency"]
                rec["latency"] = {bs: _pooled([lat[bs] for lat in per_round if bs in lat])
                                  for bs in per_round[0]}
                info["retimed"] += 1
                changed = True
            if changed:
                stage_type(st["type"]).retimed(st)
        out.append(r)
    info["rounds"] = {b: sorted(n) for b, n in info["rounds"].items()}
    return out, info


def timing_note(info: dict) -> str:
    """The line under the decision summary that says where its latencies come from."""
    if not info.get("timed"):
        return ""
    if not info.get("retimed"):
        return ("Latency: timed inside each stage, backend after backend (no paired timing phase in this run: "
                "cross-framework latency differences are not measured at the same time).\n\n")
    rounds = ", ".join(f"{title(b)} {'/'.join(map(str, n))}" for b, n in info["rounds"].items())
    stale = f" {info['stale']} round(s) of an earlier attempt were not used." if info.get("stale") else ""
    return ("Latency: the paired timing phase after training: each artifact timed again in fresh processes, "
            f"backends alternating (A B B A ...; rounds per seed: {rounds}), the same inputs, threads, warm-up and "
            "repeats, every timed call of the rounds pooled; the per-stage timings stay in result.json "
            f"(`latency_in_stage`).{stale}\n\n")
