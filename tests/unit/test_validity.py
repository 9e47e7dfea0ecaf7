"""Each validity check on hand-made result files: the finding appears where the numbers cannot carry a verdict,
not where they can, and the decision summary withholds exactly the rows it concerns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.report.build import write_report
from common.results import SCHEMA_VERSION, atomic_write_json, load_results
from common.report.validity import check_run

META = {"recipe_name": "kd", "recipe_source": "kd.yaml", "profile": "default", "backends": ["torch", "paddle"],
        "seeds": [0, 1, 2], "threads": 2, "command": "run-recipe kd", "created_at": "x", "recipe_digest": "abc",
        "recipe": {"description": "d", "stages": [
            {"train": {"name": "train_teacher", "model": "teacher"}},
            {"train": {"name": "train_student", "model": "student", "output": "student_baseline"}},
            {"distill": {"name": "distill", "teacher": "teacher", "student": "student", "output": "student_kd"}},
            {"evaluate": {"name": "evaluate", "models": ["teacher", "student_baseline", "student_kd"]}}]}}
QUIET = {"background_cores": 0.0, "contended": False, "threshold_cores": 0.1}
GOOD_HISTORY = [{"epoch": 1, "val_top1": 0.80, "train_loss": 1.0}, {"epoch": 2, "val_top1": 0.95, "train_loss": 0.2},
                {"epoch": 3, "val_top1": 0.953, "train_loss": 0.1}]


def train_record(name: str, model: str, history: list[dict]) -> dict:
    return {"name": name, "type": "train", "status": "ok", "model": model, "epochs": len(history),
            "steps": 10 * len(history), "train_time_s": 5.0, "time_per_step_s": 0.5, "history": history,
            "final": history[-1], "load": QUIET}


def result(backend: str, seed: int, top1: dict[str, float], histories: dict[str, list[dict]] | None = None,
           parity_scale: float = 3.0) -> dict:
    histories = histories or {}
    stages = [train_record(f"train_{slot}", slot, histories.get(slot, GOOD_HISTORY)) for slot in top1]
    stages.append({"name": "evaluate", "type": "evaluate", "status": "ok", "models": {
        slot: {"top1": v, "top5": 1.0, "loss": 0.3, "predictions": f"predictions/evaluate__{slot}.npz"}
        for slot, v in top1.items()}})
    return {"schema_version": SCHEMA_VERSION, "backend": backend, "seed": seed, "status": "ok", "run_id": "run-1",
            "error": None, "stages": stages, "data": {"dataset": "digits", "num_classes": 10,
                                                      "val_class_counts": [36] * 10},
            "init_parity": {"student": {"max_abs": parity_scale * 1e-7, "max_rel": 1e-7, "ref_scale": parity_scale,
                                        "rtol": 1e-4}},
            "environment": {"threads": 2, "device": "cpu", "versions": {backend: "1"}}}


def make_run(tmp_path: Path, results: list[dict], preds: dict | None = None) -> Path:
    run = tmp_path / "kd" / "run-1"
    rng = np.random.default_rng(0)
    for r in results:
        sd = run / r["backend"] / f"seed-{r['seed']}"
        atomic_write_json(sd / "result.json", r)
        (sd / "predictions").mkdir(parents=True, exist_ok=True)
        for slot in r["stages"][-1]["models"]:
            label = np.repeat(np.arange(10), 36)
            pred = (preds or {}).get(slot, np.where(rng.random(360) < 0.9, label, rng.integers(0, 10, 360)))
            np.savez(sd / "predictions" / f"evaluate__{slot}.npz", pred=pred, label=label)
    atomic_write_json(run / "run.json", META)
    return run


def checks(run: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in check_run(run, load_results(run)):
        out.setdefault(f.check, []).append(f.message)
    return out


def runs(top1: dict[str, float], **kw) -> list[dict]:
    return [result(b, s, top1, **kw) for b in ("torch", "paddle") for s in (0, 1, 2)]


def test_a_sound_run_has_no_findings(tmp_path: Path):
    assert checks(make_run(tmp_path, runs({"teacher": 0.95, "student_kd": 0.93}))) == {}


def test_a_model_at_chance_is_found(tmp_path: Path):
    found = checks(make_run(tmp_path, runs({"teacher": 0.95, "student_kd": 0.12})))
    assert list(found) == ["chance"] and "`student_kd` at chance level" in found["chance"][0]
    assert "chance 10.0%" in found["chance"][0]


def test_collapsed_predictions_are_found(tmp_path: Path):
    collapsed = np.where(np.arange(360) < 200, 3, np.repeat(np.arange(10), 36))  # 56% predicted as 3
    found = checks(make_run(tmp_path, runs({"teacher": 0.95, "student_kd": 0.60}), {"student_kd": collapsed}))
    assert "collapsed" in found and "predictions collapse" in found["collapsed"][0]


@pytest.mark.parametrize("history,expected", [
    ([{"epoch": 1, "val_top1": 0.5, "train_loss": 1.0}], "no plateau shown"),
    ([{"epoch": 1, "val_top1": 0.5, "train_loss": 1.0}, {"epoch": 2, "val_top1": 0.6, "train_loss": 0.9}],
     "still improving at its end"),
])
def test_training_not_converged_is_found(tmp_path: Path, history, expected):
    found = checks(make_run(tmp_path, runs({"teacher": 0.95, "student_kd": 0.9},
                                           histories={"student_kd": history})))
    assert list(found) == ["not_converged"] and expected in found["not_converged"][0]


@pytest.mark.parametrize("every_epoch,draw,caveat", [
    (True, "fixed", None),
    (False, None, "the rise may be the recalibration"),
    (True, None, "a different draw of training batches"),
])
def test_a_rise_measured_on_moving_statistics_says_so(tmp_path: Path, every_epoch: bool, draw: str | None,
                                                      caveat: str | None):
    """Older results recalibrated batch norm before the last validation only, or on a new draw of batches each
    epoch: their last-epoch rise is not compared like with like, and the finding says so; results recalibrated
    every epoch on the same draw are compared plainly."""
    history = [{"epoch": 1, "val_top1": 0.84, "train_loss": 0.3}, {"epoch": 2, "val_top1": 0.97, "train_loss": 0.2}]
    results = runs({"teacher": 0.95, "student_kd": 0.97}, histories={"student_kd": history})
    for r in results:
        for st in r["stages"]:
            st.update(bn_recalibration_batches=10, bn_recalibrated_every_epoch=every_epoch)
            if draw:
                st["bn_recalibration_draw"] = draw
    found = checks(make_run(tmp_path, results))
    assert list(found) == ["not_converged"] and "+13.0 points" in found["not_converged"][0]
    caveats = ["the rise may be the recalibration", "a different draw of training batches"]
    assert [c for c in caveats if c in found["not_converged"][0]] == ([caveat] if caveat else [])


def test_timings_from_several_machines_withhold_timing_verdicts(tmp_path: Path):
    results = runs({"teacher": 0.95, "student_kd": 0.93})
    for r in results:
        r["environment"] = {"host": f"node-{r['seed'] % 2}", "cpu": {"model": "EPYC"}}
    found = [f for f in check_run(make_run(tmp_path, results), results) if f.check == "machines"]
    assert len(found) == 1 and "timed on 2 machines (node-0 (EPYC), node-1 (EPYC))" in found[0].message
    assert found[0].groups == ("training time",) and found[0].short == "timed on several machines"
    for r in results:
        r["environment"]["host"] = "node-0"
    assert not [f for f in check_run(make_run(tmp_path / "one", results), results) if f.check == "machines"]


@pytest.mark.parametrize("counts,expected", [([36] * 9 + [0], "no images of class(es) 9"),
                                             ([36] * 9 + [4], "fewer than 10 images")])
def test_a_thin_validation_split_is_found(tmp_path: Path, counts, expected):
    results = runs({"teacher": 0.95})
    for r in results:
        r["data"]["val_class_counts"] = counts
    found = checks(make_run(tmp_path, results))
    assert list(found) == ["split"] and expected in found["split"][0]


def test_parity_on_degenerate_logits_is_found(tmp_path: Path):
    found = checks(make_run(tmp_path, runs({"teacher": 0.95}, parity_scale=1e-11)))
    assert list(found) == ["parity"] and "magnitude 1.0e-11" in found["parity"][0]


def test_too_few_seeds_is_found(tmp_path: Path):
    found = checks(make_run(tmp_path, [result(b, s, {"teacher": 0.95}) for b in ("torch", "paddle") for s in (0, 1)]))
    assert list(found) == ["seeds"] and "2 seed(s)" in found["seeds"][0]


def test_the_decision_summary_withholds_exactly_the_rows_concerned(tmp_path: Path):
    results = runs({"teacher": 0.95, "student_kd": 0.12})
    for r in results:  # a clear lead on both slots, so only the check can withhold a verdict
        r["stages"][-1]["models"]["teacher"]["top1"] += 0.03 if r["backend"] == "paddle" else 0.0
        r["stages"][-1]["models"]["teacher"]["top1"] += 0.001 * r["seed"]
    md = write_report(make_run(tmp_path, results)).read_text()
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("| accuracy |")}
    assert "no verdict: `student_kd` at chance on PyTorch" in rows["top-1 `student_kd`"]
    assert "**PaddlePaddle**" in rows["top-1 `teacher`"]
    assert "1 without verdict" in md and md.index("## Validity checks") < md.index("## Decision summary")
    data = json.loads((tmp_path / "kd" / "run-1" / "results.json").read_text())
    assert [f["check"] for f in data["validity"]] == ["chance", "chance"]
    kd = next(r for r in data["summary"] if r["what"] == "top-1 student_kd")
    assert kd["difference"]["no_verdict"].startswith("`student_kd` at chance") and kd["difference"]["ahead"] is None


def test_contended_timings_withhold_only_their_own_rows(tmp_path: Path):
    results = runs({"teacher": 0.95, "student_kd": 0.93})
    for r in results:
        r["stages"].append({"name": "export", "type": "export", "status": "ok", "models": {slot: {
            "size_bytes": 100, "size_mb": 1.0 if r["backend"] == "torch" else 0.5, "params": 1, "macs": 1, "flops": 2,
            "artifact_top1": 0.9, "runtime": "rt", "format": "f",
            "latency": {"1": {"p50_ms": 2.0 + r["seed"] * 0.1 if r["backend"] == "torch" else 1.0, "p90_ms": 3.0,
                              "load": {"background_cores": 0.9 if slot == "teacher" and r["seed"] == 1 else 0.0,
                                       "contended": slot == "teacher" and r["seed"] == 1, "threshold_cores": 0.1}}}}
            for slot in ("teacher", "student_kd")}})
    run = make_run(tmp_path, results)
    found = checks(run)
    assert list(found) == ["contended"] and len(found["contended"]) == 2  # one per backend
    md = write_report(run).read_text()
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith(("| latency |", "| size |"))}
    assert "no verdict: timed under background load" in rows["batch 1 p50 `teacher`"]
    assert "no verdict" not in rows["batch 1 p50 `student_kd`"] and "no verdict" not in rows["file `teacher`"]


def test_int8_against_fp32_across_seeds_gets_an_interval_and_a_verdict_only_when_valid(tmp_path: Path):
    from tests.unit.test_results_and_report import _quant_stage
    results = runs({"fp32": 0.95})
    for r in results:
        q = _quant_stage(5.0, 2.0)
        q["int8"]["top1"] = 0.90 - 0.001 * r["seed"]  # 5.0, 5.1, 5.2 points lost
        q["fp32"]["top1"] = 0.95
        r["stages"].insert(len(r["stages"]) - 1, q)  # before the evaluate stage make_run reads
    md = write_report(make_run(tmp_path, results)).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `ptq` | PyTorch | `fp32` → `int8`"))
    assert "-5.10 pts [" in row and "**costs 5.10 pts** (significant, 3 seeds)" in row
    # the same numbers over two seeds carry no verdict
    two = [r for r in results if r["seed"] < 2]
    md2 = write_report(make_run(tmp_path / "two", two)).read_text()
    row2 = next(line for line in md2.splitlines() if line.startswith("| `ptq` | PyTorch | `fp32` → `int8`"))
    assert "no verdict: 2 seed(s)" in row2


def test_timings_without_a_load_record_carry_no_verdict(tmp_path: Path):
    """Results from before load was measured cannot show a quiet machine: their timing rows get no verdict."""
    results = runs({"teacher": 0.95})
    for r in results:
        del r["stages"][0]["load"]
        r["stages"][0]["train_time_s"] = 5.0 if r["backend"] == "torch" else 9.0 + r["seed"]
    run = make_run(tmp_path, results)
    found = checks(run)
    assert list(found) == ["load_unknown"] and "not recorded for 6 timing(s)" in found["load_unknown"][0]
    md = write_report(run).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| training time |"))
    assert "no verdict: background load not recorded" in row
    acc = next(line for line in md.splitlines() if line.startswith("| accuracy |"))
    assert "no verdict" not in acc


@pytest.mark.parametrize("paddle_onnx_top1,found", [(0.11, True), (0.97, True), (0.88, False)])
def test_a_conversion_that_changes_the_model_withholds_only_its_rows_on_that_runtime(tmp_path: Path,
                                                                                      paddle_onnx_top1, found):
    """paddle2onnx of a QAT MobileNetV2 scored 11% on ONNX Runtime against its artifact's 96%: a verdict on those
    rows would be about the converter. The artifact's own rows keep theirs."""
    results = runs({"teacher": 0.95, "student_kd": 0.93})
    for r in results:
        onnx_top1 = paddle_onnx_top1 if r["backend"] == "paddle" else 0.9
        r["stages"].append({"name": "export", "type": "export", "status": "ok", "models": {slot: {
            "size_bytes": 100, "size_mb": 1.0 if r["backend"] == "torch" else 0.5, "params": 1, "macs": 1, "flops": 2,
            "artifact_top1": 0.9, "runtime": "rt", "format": "f",
            "latency": {"1": {"p50_ms": 2.0 + r["seed"] * 0.1 if r["backend"] == "torch" else 1.0, "p90_ms": 3.0,
                              "load": QUIET}},
            "runtimes": {"onnxruntime": {
                "status": "ok", "runtime": "ONNX Runtime 1.32.0 (CPUExecutionProvider)", "format": "ONNX",
                "files": [], "entry": "x.onnx", "size_bytes": 1, "size_mb": 1e-6,
                "vs_artifact": {"max_abs": 0.1, "max_rel": 0.01, "argmax_agree": 1.0},
                "artifact_top1": onnx_top1 if slot == "student_kd" else 0.9,
                "latency": {"1": {"p50_ms": 1.0 + r["seed"] * 0.1 if r["backend"] == "torch" else 2.0,
                                  "p90_ms": 3.0, "load": QUIET}}}}}
            for slot in ("teacher", "student_kd")}})
    run = make_run(tmp_path, results)
    conversions = checks(run).get("conversion", [])
    md = write_report(run).read_text()
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith(("| latency |",))}
    reason = "no verdict: `student_kd`'s converted file does not compute what its artifact does on PaddlePaddle"
    if not found:
        assert conversions == [] and "no verdict" not in rows["batch 1 p50 `student_kd` on ONNX Runtime"]
        return
    assert len(conversions) == 1
    assert f"scores {paddle_onnx_top1 * 100:.1f}% top-1 against its artifact's 90.0%" in conversions[0]
    # the side that lost accuracy is named: the converter, or (oneDNN int8) the artifact's own runtime
    assert ("the converter changed the model" in conversions[0]) == (paddle_onnx_top1 < 0.9)
    assert ("the artifact's own runtime loses accuracy" in conversions[0]) == (paddle_onnx_top1 > 0.9)
    assert reason in rows["batch 1 p50 `student_kd` on ONNX Runtime"]
    assert "no verdict" not in rows["batch 1 p50 `student_kd`"]  # the artifact itself, on its own runtime
    assert "no verdict" not in rows["batch 1 p50 `teacher` on ONNX Runtime"]
