from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.report import build_markdown, flat_rows, write_report
from common.results import SCHEMA_VERSION, atomic_write_json, load_results, new_run_dir


def test_new_run_dirs_never_collide(tmp_path: Path):
    dirs = {new_run_dir(tmp_path, "r") for _ in range(5)}
    assert len(dirs) == 5 and all(d.parent == tmp_path / "r" for d in dirs)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path):
    atomic_write_json(tmp_path / "a" / "x.json", {"v": 1})
    atomic_write_json(tmp_path / "a" / "x.json", {"v": 2})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"v": 2}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def _stage_eval(top1: dict[str, float]) -> dict:
    return {"name": "evaluate", "type": "evaluate", "status": "ok",
            "models": {k: {"top1": v, "top5": 1.0, "loss": 0.5} for k, v in top1.items()}}


def _result(backend: str, seed: int, top1: dict[str, float], status: str = "ok") -> dict:
    return {"schema_version": SCHEMA_VERSION, "backend": backend, "seed": seed, "status": status,
            "error": None if status == "ok" else {"type": "Boom", "stage": "distill", "message": "exploded"},
            "init_parity": {"teacher": {"max_abs": 1e-7, "max_rel": 2e-7, "rtol": 1e-4}},
            "data": {"dataset": "digits", "split": "aaa", "first_batches": "bbb", "train_size": "10", "val_size": "5"},
            "environment": {"threads": 2, "device": "cpu", "versions": {backend: "1.0"}},
            "stages": [_stage_eval(top1)] if status == "ok" else []}


META = {"recipe_name": "kd", "profile": "default", "threads": 2, "command": "run-recipe kd",
        "recipe": {"description": "d", "stages": [
            {"train": {"name": "train_student", "model": "student", "output": "student_baseline"}},
            {"distill": {"name": "distill", "teacher": "teacher", "student": "student", "output": "student_kd"}}]}}


def _write_run(tmp_path: Path, results: list[dict]) -> Path:
    run = tmp_path / "kd" / "run-1"
    for r in results:
        atomic_write_json(run / r["backend"] / f"seed-{r['seed']}" / "result.json", r)
    atomic_write_json(run / "run.json", META)
    return run


def test_report_statistics_against_hand_computed_values(tmp_path: Path):
    results = [_result("torch", 0, {"student_baseline": 0.50, "student_kd": 0.60}),
               _result("torch", 1, {"student_baseline": 0.70, "student_kd": 0.70}),
               _result("paddle", 0, {"student_baseline": 0.40, "student_kd": 0.60}),
               _result("paddle", 1, {"student_baseline": 0.60, "student_kd": 0.80})]
    run = _write_run(tmp_path, results)
    md = build_markdown(run, load_results(run), META)
    # torch baseline: mean 60%, std (ddof=1) 14.14; KD gains 10 and 0 -> 5.00 ± 7.07
    assert "| distill | PyTorch | 60.00% ± 14.14 | 65.00% ± 7.07 | 5.00 pts ± 7.07 |" in md
    # paddle gains 20 and 20 -> 20.00 ± 0.00
    assert "| distill | PaddlePaddle | 50.00% ± 14.14 | 70.00% ± 14.14 | 20.00 pts ± 0.00 |" in md
    # paired difference paddle - torch of student_kd: 0 and +10 -> 5.00 ± 7.07
    assert "| `student_kd` | 65.00% ± 7.07 | 70.00% ± 14.14 | 5.00 pts ± 7.07 |" in md
    assert md.index("PyTorch top-1") < md.index("PaddlePaddle top-1")
    assert "hash identically on every backend" in md


def test_failed_backend_still_yields_a_report(tmp_path: Path):
    run = _write_run(tmp_path, [_result("torch", 0, {"student_baseline": 0.5, "student_kd": 0.6}),
                                _result("paddle", 0, {}, status="failed")])
    path = write_report(run)
    md = path.read_text()
    assert "## Failures" in md and "**paddle seed 0** failed in `distill`: Boom: exploded" in md
    rows = flat_rows(load_results(run))
    assert {"backend": "torch", "seed": 0, "stage": "evaluate", "model": "student_kd", "metric": "top1",
            "value": 0.6} in rows
    assert (run / "results.csv").is_file() and (run / "results.json").is_file()


def test_results_with_another_schema_version_are_refused(tmp_path: Path):
    r = _result("torch", 0, {"a": 1.0})
    r["schema_version"] = 99
    run = _write_run(tmp_path, [r])
    with pytest.raises(ValueError, match="schema version 99"):
        load_results(run)


def _quant_stage(fp32_ms: float, int8_ms: float) -> dict:
    lat = lambda ms: {"1": {"p50_ms": ms, "p90_ms": ms * 1.1}}  # noqa: E731
    return {"name": "ptq", "type": "quantize", "status": "ok", "model": "int8", "source": "fp32",
            "mode": "ptq_static", "calibration": "histogram", "calibration_batches": 8,
            "start_weights": "own trained weights", "framework_warnings": ["x is deprecated"],
            "lowering": {"tool": "tool-x", "weights": "w", "activations": "a", "calibration": "c", "runtime": "rt"},
            "fp32": {"size_mb": 100.0, "size_bytes": 100_000_000, "top1": 0.96, "latency": lat(fp32_ms)},
            "int8": {"size_mb": 25.0, "size_bytes": 25_000_000, "top1": 0.95, "latency": lat(int8_ms)},
            "size_ratio": 0.25, "accuracy_drop": 0.01, "accuracy_drop_ci95": [-0.005, 0.025],
            "comparison": {"agreement": 0.981, "mcnemar_p": 0.2188}, "speedup": {"1": fp32_ms / int8_ms},
            "quantize_time_s": 3.0}


def test_quantization_section_and_rows(tmp_path: Path):
    r = _result("torch", 0, {"fp32": 0.96, "int8": 0.95})
    r["stages"].insert(0, _quant_stage(10.0, 2.5))
    run = _write_run(tmp_path, [r])
    md = build_markdown(run, load_results(run), META)
    assert ("| `ptq` | PyTorch | 0 | ptq_static (histogram, 8 batches) | 100.00 → 25.00 (25%) | 96.00% → 95.00% | "
            "+1.00 [-0.50, +2.50] | 98.1% | 0.219 | 10.00 → 2.50 (×0.25) |") in md
    assert "- PyTorch: tool-x; weights w; activations a; calibration c; int8 runtime rt." in md
    assert 'PyTorch warned: "x is deprecated"' in md
    rows = {(x["metric"]): x["value"] for x in flat_rows(load_results(run)) if x["stage"] == "ptq"}
    assert rows["size_ratio"] == 0.25 and rows["speedup_b1"] == 4.0 and rows["int8_latency_b1_p50_ms"] == 2.5


def test_per_sample_agreement_between_frameworks_hand_computed(tmp_path: Path):
    labels = np.array([0, 1, 2, 3, 0, 1], dtype=np.int16)
    preds = {"torch": np.array([0, 1, 2, 3, 1, 1]), "paddle": np.array([0, 1, 2, 0, 0, 2])}
    results = []
    for b, pred in preds.items():
        r = _result(b, 0, {"m": float((pred == labels).mean())})
        r["stages"][0]["models"]["m"]["predictions"] = "predictions/evaluate__m.npz"
        results.append(r)
    run = _write_run(tmp_path, results)
    for b, pred in preds.items():
        (run / b / "seed-0" / "predictions").mkdir()
        np.savez(run / b / "seed-0" / "predictions" / "evaluate__m.npz", pred=pred.astype(np.int16), label=labels)
    md = build_markdown(run, load_results(run), META)
    # 3 of 6 agree; torch alone right on 2 samples, paddle alone on 1; diff -1/6; McNemar 2*(1+3)/8 -> 1
    half = 1.96 * np.array([0, 0, 0, -1, 1, -1.0]).std(ddof=1) / np.sqrt(6) * 100
    assert (f"| `m` | 0 | 50.0% | 2 | 1 | -16.67 [{-100 / 6 - half:+.2f}, {-100 / 6 + half:+.2f}] | 1 |") in md
