"""The paired timing phase without a framework: the order of its processes, and how the report swaps the rounds'
pooled timings in for the per-stage ones (stale, failed and damaged rounds included)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import RunFilesError
from common.report.build import write_report
from common.report.paired import timing_note, with_paired_latency
from common.results import SCHEMA_VERSION, atomic_write_json, load_results, timing_round_path
from common.run.paired_timing import is_current, run_phase, schedule, set_aside_contended, timed_items
from tests.unit.test_results_and_report import _quant_stage


def test_rounds_alternate_forward_then_backward():
    assert schedule(["torch", "paddle"], 2) == [(0, "torch"), (0, "paddle"), (1, "paddle"), (1, "torch")]
    assert [b for _, b in schedule(["a", "b", "c"], 3)] == list("abccbaabc")
    assert schedule(["torch", "paddle"], 1) == [(0, "torch"), (0, "paddle")]


QUIET = {"background_cores": 0.01, "threshold_cores": 0.1, "contended": False}
BUSY = {"background_cores": 0.9, "threshold_cores": 0.1, "contended": True}


def _lat(ms: float, load: dict = QUIET) -> dict:
    return {"p50_ms": ms, "p90_ms": ms * 1.1, "load": load}


def _result(backend: str, seed: int, export_ms: float, fp32_ms: float, int8_ms: float) -> dict:
    art = {"format": "f", "files": ["artifacts/x/model"], "entry": "artifacts/x/model", "extra": {}, "runtime": "rt"}
    return {
        "schema_version": SCHEMA_VERSION, "backend": backend, "seed": seed, "status": "ok", "run_id": "run-1",
        "finished_at": f"2026-12-01T10:0{seed}:00", "error": None,
        "init_parity": {"s": {"max_abs": 1e-7, "max_rel": 1e-7, "rtol": 1e-4}},
        "data": {"dataset": "digits", "split": "a", "first_batches": "b"},
        "environment": {"threads": 2, "device": "cpu", "versions": {backend: "1"}},
        "stages": [
            {"name": "export", "type": "export", "status": "ok", "models": {"student": {
                **art, "size_bytes": 1000, "size_mb": 0.001, "params": 10, "macs": 100, "flops": 200,
                "artifact_top1": 0.9, "latency": {"1": _lat(export_ms)}}}},
            {**_quant_stage(fp32_ms, int8_ms), "source": "student",
             "fp32": {**art, "size_mb": 1.0, "size_bytes": 1000, "top1": 0.9, "latency": {"1": _lat(fp32_ms)}},
             "int8": {**art, "size_mb": 0.25, "size_bytes": 250, "top1": 0.89, "engine": "e",
                      "latency": {"1": _lat(int8_ms)}},
             "latency_ratio": {"1": int8_ms / fp32_ms}}]}


def _round(result: dict, round_no: int, times: dict[str, list[float]], load: dict = QUIET,
           status: str = "ok", finished_at: str | None = None) -> dict:
    items = [{"stage": stage, "key": key, "kind": "fp32", "runtime": "rt",
              "latency": {"1": {"p50_ms": float(np.median(t)), "times_ms": t, "load": load}}}
             for (stage, key), t in ((k.split("/", 1), v) for k, v in times.items())]
    return {"backend": result["backend"], "seed": result["seed"], "round": round_no, "status": status,
            "result_finished_at": finished_at or result["finished_at"], "items": items}


def _run(tmp_path: Path, results: list[dict], rounds: list[dict]) -> Path:
    run = tmp_path / "r" / "run-1"
    for r in results:
        atomic_write_json(run / r["backend"] / f"seed-{r['seed']}" / "result.json", r)
    for x in rounds:
        atomic_write_json(timing_round_path(run, x["seed"], x["round"], x["backend"]), x)
    atomic_write_json(run / "run.json", {"recipe_name": "r", "profile": "default", "threads": 2, "command": "c",
                                         "recipe": {"description": "d", "stages": []}})
    return run


def test_timed_items_name_every_artifact_a_stage_measured():
    items = timed_items(_result("torch", 0, 5.0, 5.0, 2.0))
    assert [(i["stage"], i["key"], i["kind"]) for i in items] == [
        ("export", "models.student", "fp32"), ("ptq", "fp32", "fp32"), ("ptq", "int8", "int8")]
    old = _result("torch", 0, 5.0, 5.0, 2.0)
    del old["stages"][0]["models"]["student"]["entry"]  # written before export records named their entry file
    assert [i["stage"] for i in timed_items(old)] == ["ptq", "ptq"]


def test_rounds_are_pooled_and_replace_the_stage_latency(tmp_path: Path):
    torch_r = _result("torch", 0, 50.0, 50.0, 40.0)
    times = {"export/models.student": [10.0, 12.0, 14.0], "ptq/fp32": [10.0, 10.0, 10.0], "ptq/int8": [5.0, 5.0, 5.0]}
    later = {"export/models.student": [16.0, 18.0, 20.0], "ptq/fp32": [20.0, 20.0, 20.0], "ptq/int8": [5.0, 5.0, 5.0]}
    run = _run(tmp_path, [torch_r], [_round(torch_r, 0, times), _round(torch_r, 1, later)])
    (r,), info = with_paired_latency(run, load_results(run))
    lat = r["stages"][0]["models"]["student"]["latency"]["1"]
    assert lat["p50_ms"] == pytest.approx(15.0) and lat["rounds"] == 2 and lat["paired"] is True  # median of 6
    assert r["stages"][0]["models"]["student"]["latency_in_stage"]["1"]["p50_ms"] == 50.0
    q = r["stages"][1]
    assert q["speedup"]["1"] == pytest.approx(15.0 / 5.0)  # recomputed from the pooled fp32 and int8 medians
    assert info["retimed"] == 3 and info["rounds"] == {"torch": [2]} and info["stale"] == 0
    assert load_results(run)[0]["stages"][0]["models"]["student"]["latency"]["1"]["p50_ms"] == 50.0  # disk intact
    assert "paired timing phase" in timing_note(info)


def test_stale_and_failed_rounds_are_not_used(tmp_path: Path):
    r0 = _result("torch", 0, 50.0, 50.0, 40.0)
    t = {"export/models.student": [1.0], "ptq/fp32": [1.0], "ptq/int8": [1.0]}
    run = _run(tmp_path, [r0], [_round(r0, 0, t, finished_at="an earlier attempt"), _round(r0, 1, t, status="failed")])
    (r,), info = with_paired_latency(run, load_results(run))
    assert r["stages"][0]["models"]["student"]["latency"]["1"]["p50_ms"] == 50.0
    assert info["retimed"] == 0 and info["stale"] == 1
    assert "no paired timing phase" in timing_note(info)
    assert not is_current(timing_round_path(run, 0, 0, "torch"), r0)


def test_one_contended_round_flags_the_pooled_figure(tmp_path: Path):
    r0 = _result("torch", 0, 50.0, 50.0, 40.0)
    t = {"export/models.student": [1.0], "ptq/fp32": [1.0], "ptq/int8": [1.0]}
    run = _run(tmp_path, [r0], [_round(r0, 0, t), _round(r0, 1, t, load=BUSY)])
    (r,), _ = with_paired_latency(run, load_results(run))
    assert r["stages"][0]["models"]["student"]["latency"]["1"]["load"]["contended"] is True


class _Timing:
    paired, rounds = True, 2


class _Recipe:
    timing, seeds, runtime = _Timing(), (0,), None


class _QuietRounds:
    """Stands in for the worker processes of the phase (their timing is tested with the frameworks): each call
    writes the quiet round file the real `time` command would."""

    def __init__(self, results: dict[str, dict]):
        self.results, self.calls = results, []

    def run(self, args, log, label, threads, backend, runtime, run_dir) -> int:
        seed, round_no = int(args[args.index("--seed") + 1]), int(args[args.index("--round") + 1])
        self.calls.append((round_no, backend))
        t = {"export/models.student": [1.0], "ptq/fp32": [1.0], "ptq/int8": [1.0]}
        atomic_write_json(timing_round_path(run_dir, seed, round_no, backend),
                          _round(self.results[backend], round_no, t))
        return 0


def test_resume_times_again_a_seed_whose_rounds_were_contended_and_keeps_the_old_rounds(tmp_path: Path):
    results = {b: _result(b, 0, 50.0, 50.0, 40.0) for b in ("torch", "paddle")}
    t = {"export/models.student": [1.0], "ptq/fp32": [1.0], "ptq/int8": [1.0]}
    rounds = [_round(results["torch"], 0, t, load=BUSY), _round(results["paddle"], 0, t),
              _round(results["paddle"], 1, t), _round(results["torch"], 1, t)]
    run = _run(tmp_path, list(results.values()), rounds)
    executor = _QuietRounds(results)
    assert run_phase(run, _Recipe(), ["torch", "paddle"], 2, executor) == []
    assert executor.calls == [(0, "torch"), (0, "paddle"), (1, "paddle"), (1, "torch")]  # the whole A B B A again
    kept = run / "timing" / "seed-0" / "contended-1"
    assert sorted(p.name for p in kept.iterdir()) == ["round-0.paddle.json", "round-0.torch.json",
                                                      "round-1.paddle.json", "round-1.torch.json"]
    (r, _), _ = with_paired_latency(run, load_results(run))
    assert r["stages"][0]["models"]["student"]["latency"]["1"]["load"]["contended"] is False
    executor.calls.clear()  # quiet now: a second resume keeps every round
    assert run_phase(run, _Recipe(), ["torch", "paddle"], 2, executor) == [] and executor.calls == []
    assert set_aside_contended(run, 0, results) is None and not (run / "timing" / "seed-0" / "contended-2").exists()


@pytest.mark.parametrize("damage", [
    lambda x: x.pop("items"),
    lambda x: x["items"][0].pop("latency"),
    lambda x: x["items"][0]["latency"]["1"].update(times_ms=[]),
    lambda x: x["items"][0]["latency"]["1"].update(times_ms="fast"),
    lambda x: x.update(seed="zero"),
])
def test_a_damaged_round_is_a_one_line_run_files_error(tmp_path: Path, damage):
    r0 = _result("torch", 0, 50.0, 50.0, 40.0)
    x = _round(r0, 0, {"export/models.student": [1.0]})
    damage(x)
    run = _run(tmp_path, [r0], [x])
    with pytest.raises(RunFilesError, match="not a paired timing round"):
        with_paired_latency(run, load_results(run))


def test_the_report_says_where_its_latency_comes_from_and_keeps_the_rounds(tmp_path: Path):
    results = [_result(b, 0, 50.0, 50.0, 40.0) for b in ("torch", "paddle")]
    t = {"export/models.student": [3.0, 3.0], "ptq/fp32": [3.0, 3.0], "ptq/int8": [1.0, 1.0]}
    run = _run(tmp_path, results, [_round(r, k, t) for r in results for k in (0, 1)])
    out = tmp_path / "published"
    md = write_report(run, out).read_text()
    assert "the paired timing phase after training" in md and "rounds per seed: PyTorch 2, PaddlePaddle 2" in md
    assert len(list((out / "timing" / "seed-0").glob("round-*.json"))) == 4  # the report can be regenerated there
    again = write_report(out).read_text()
    tail = lambda text: text[text.index("## Validity checks"):]  # noqa: E731  (the header names the directory)
    assert tail(again) == tail(md)  # the same report from the published copy
