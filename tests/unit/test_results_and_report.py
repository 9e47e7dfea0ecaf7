from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.errors import RunFilesError
from common.report.build import build_markdown, flat_rows, write_report
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
    return {"schema_version": SCHEMA_VERSION, "backend": backend, "seed": seed, "status": status, "run_id": "run-1",
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
    # torch baseline: mean 60%, std (ddof=1) 14.14; KD gains 10 and 0 -> +5.00, 95% CI 5 ± 12.706 * 7.07 / sqrt(2)
    assert "| distill | 0.9 kd(T=4) + 0.1 ce | PyTorch | 60.00% ± 14.14 | 65.00% ± 7.07 | +5.00 pts [-58.53, +68.53] | no verdict: 2 seed(s)" in md
    # paddle gains 20 and 20 -> +20.00 [+20.00, +20.00], still no verdict with two seeds
    assert "| distill | 0.9 kd(T=4) + 0.1 ce | PaddlePaddle | 50.00% ± 14.14 | 70.00% ± 14.14 | +20.00 pts [+20.00, +20.00] | no verdict" in md
    # paired difference paddle - torch of student_kd: 0 and +10 -> 5.00 ± 7.07
    assert "| `student_kd` | 65.00% ± 7.07 | 70.00% ± 14.14 | 5.00 pts ± 7.07 |" in md
    assert md.index("PyTorch top-1") < md.index("PaddlePaddle top-1")
    assert "hash identically on every backend" in md


def test_published_figures_sit_beside_the_gain_for_reference_only(tmp_path: Path):
    meta = json.loads(json.dumps(META))
    meta["recipe"]["stages"][1]["distill"].update(
        losses=[{"ce": {"weight": 1}}, {"dkd": {"beta": 8, "warmup_epochs": 20}}],
        published={"source": "mdistiller, CIFAR-100", "baseline_top1": 64.60, "distilled_top1": 70.35})
    results = [_result(b, s, {"student_baseline": 0.5, "student_kd": 0.6}) for b in ("torch", "paddle") for s in (0, 1)]
    run = _write_run(tmp_path, results)
    md = build_markdown(run, load_results(run), meta)
    assert ("| distill | 1 ce + 1 dkd(α=1, β=8, T=4, warm-up 20 ep) | PyTorch | 50.00% ± 0.00 | 60.00% ± 0.00 | "
            "+10.00 pts [+10.00, +10.00] | no verdict: 2 seed(s) | 64.60% → 70.35% (+5.75 pts) |") in md
    assert "Published figures, for reference only" in md and "mdistiller, CIFAR-100" in md


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
    with pytest.raises(RunFilesError, match="schema version 99"):
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
            "comparison": {"agreement": 0.981, "mcnemar_p": 0.2188, "samples": 359, "changed_predictions": 7,
                           "only_a_correct": 5, "only_b_correct": 1}, "speedup": {"1": fp32_ms / int8_ms},
            "quantize_time_s": 3.0, "kernel_notes": ["kernel k is slow at 22 channels"]}


def test_quantization_section_and_rows(tmp_path: Path):
    r = _result("torch", 0, {"fp32": 0.96, "int8": 0.95})
    r["stages"].insert(0, _quant_stage(10.0, 2.5))
    run = _write_run(tmp_path, [r])
    md = build_markdown(run, load_results(run), META)
    assert ("| `ptq` | PyTorch | 0 | ptq_static (histogram, 8 batches) | 100.00 → 25.00 (25%) | 96.00% → 95.00% | "
            "+1.00 [-0.50, +2.50] | 98.1% | 0.219 | 10.00 → 2.50 (×0.25) |") in md
    assert "- PyTorch: tool-x; weights w; activations a; calibration c; int8 runtime rt." in md
    assert 'PyTorch warned: "x is deprecated"' in md
    assert "- PyTorch int8 kernels (seed 0): kernel k is slow at 22 channels.\n" in md
    assert "| PyTorch | 0 | `fp32` → `int8` | int8 ptq_static | 98.1% | 7 | 5 | 1 | 0.219 |" in md
    rows = {(x["metric"]): x["value"] for x in flat_rows(load_results(run)) if x["stage"] == "ptq"}
    assert rows["size_ratio"] == 0.25 and rows["speedup_b1"] == 4.0 and rows["int8_latency_b1_p50_ms"] == 2.5


def _onnx_pair(fp32_ms: float, int8_ms: float) -> dict:
    lat = lambda ms: {"1": {"p50_ms": ms, "p90_ms": ms * 1.1}}  # noqa: E731
    art = lambda kind, fmt: {"format": fmt, "files": [f"artifacts/int8/{kind}.onnx/model.onnx"],  # noqa: E731
                             "entry": f"artifacts/int8/{kind}.onnx/model.onnx", "extra": {}, "size_bytes": 10,
                             "size_mb": 1e-5, "runtime": "ORT 9"}
    return {"status": "ok", "runtime": "ORT 9", "threads": 2, "speedup": {"1": fp32_ms / int8_ms},
            "accuracy_drop": 0.02, "comparison": {"agreement": 0.97},
            "fp32": {**art("fp32", "ONNX (opset 17)"), "top1": 0.96, "latency": lat(fp32_ms),
                     "vs_artifact": {"max_abs": 1e-6, "max_rel": 1e-7, "ref_scale": 9.0, "argmax_agree": 1.0}},
            "int8": {**art("int8", "ONNX QDQ (opset 17)"), "top1": 0.94, "latency": lat(int8_ms),
                     "vs_artifact": {"max_abs": 0.5, "max_rel": 0.05, "ref_scale": 10.0, "argmax_agree": 0.99}}}


def test_int8_pair_on_onnx_runtime_section_rows_and_reasons(tmp_path: Path):
    torch_r = _result("torch", 0, {"fp32": 0.96, "int8": 0.95})
    torch_r["stages"].insert(0, {**_quant_stage(10.0, 8.0), "runtimes": {"onnxruntime": _onnx_pair(4.0, 2.0)}})
    paddle_r = _result("paddle", 0, {"fp32": 0.96, "int8": 0.95})
    paddle_r["stages"].insert(0, {**_quant_stage(9.0, 3.0), "runtimes": {"onnxruntime": {
        "status": "unavailable", "runtime": "ORT 9", "reason": "int8: RuntimeError: op fancy"}}})
    run = _write_run(tmp_path, [torch_r, paddle_r])
    md = build_markdown(run, load_results(run), META)
    assert "**The same fp32 and int8 models on ONNX Runtime**" in md
    assert ("| `ptq` | PyTorch | 0 | ONNX QDQ (opset 17) | 0.5 (largest logit 10) | 99.0% | 96.00% → 94.00% | "
            "4.00 → 2.00 (×0.50; own runtime ×0.80) |") in md
    assert "- PaddlePaddle `ptq` seed 0: unavailable on ONNX Runtime (int8: RuntimeError: op fancy).\n" in md
    # like with like: the int8 model on ONNX Runtime gets its own rows, empty where one side did not convert
    assert "| latency | batch 1 p50 `int8` on ONNX Runtime | 2.00 ms | – | – |" in md
    assert "| accuracy | top-1 `int8` on ONNX Runtime | 94.00% | – | – |" in md
    # and the fp32 parent no export stage measured: the like-with-like twin of its reference-runtime row
    assert "| latency | batch 1 p50 `fp32` on ONNX Runtime | 4.00 ms | – | – |" in md
    rows = {x["metric"]: x["value"] for x in flat_rows(load_results(run)) if x["stage"] == "ptq"
            and x["backend"] == "torch"}
    assert rows["onnxruntime_speedup_b1"] == 2.0 and rows["onnxruntime_int8_latency_b1_p50_ms"] == 2.0
    assert rows["onnxruntime_int8_max_abs_logit_diff"] == 0.5
    from common.stages.registry import stage_type
    rec = load_results(run)[0]["stages"][0]
    assert [k for k, _, kind in stage_type("quantize").timed_artifacts(rec)] == [
        "fp32", "int8", "runtimes.onnxruntime.fp32", "runtimes.onnxruntime.int8"]
    rec["runtimes"]["onnxruntime"]["int8"]["latency"]["1"]["p50_ms"] = 1.0  # as the paired phase re-times it
    stage_type("quantize").retimed(rec)
    assert rec["runtimes"]["onnxruntime"]["speedup"] == {"1": 4.0} and rec["speedup"] == {"1": 1.25}


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


def test_decision_summary_against_hand_computed_values(tmp_path: Path):
    results = [_result("torch", 0, {"student_kd": 0.60}), _result("torch", 1, {"student_kd": 0.70}),
               _result("torch", 2, {"student_kd": 0.65}), _result("paddle", 0, {"student_kd": 0.60}),
               _result("paddle", 1, {"student_kd": 0.80}), _result("paddle", 2, {"student_kd": 0.75})]
    run = _write_run(tmp_path, results)
    md = build_markdown(run, load_results(run), META)
    # paddle - torch per seed: 0, +10, +10 pts -> mean +6.67, sd 5.7735, half width 4.303 * 5.7735 / sqrt(3) = 14.34
    assert ("| accuracy | top-1 `student_kd` | 65.00% ± 5.00 | 71.67% ± 10.41 | +6.67 [-7.68, +21.01] pts | "
            "no verdict: within seed noise (PaddlePaddle +6.67 pts; the 95% interval spans zero, 3 seeds) |") in md
    assert "- **accuracy** (1 comparison): 1 without verdict (within seed noise)" in md
    assert md.index("## Decision summary") < md.index("## Accuracy on the validation split")
    assert "## Reproducibility" in md and "- Seeds: 0, 1, 2;" in md
    # with two of those seeds the same numbers get no verdict: a verdict needs three
    two = build_markdown(run, [r for r in load_results(run) if r["seed"] < 2], META)
    assert "no verdict: 2 seed(s) |" in two
    assert "- **accuracy** (1 comparison): 1 without verdict (see the validity checks)" in two


def test_regenerated_report_is_byte_identical_apart_from_its_timestamp(tmp_path: Path):
    """From the committed example (real results with curves, latency, pruning): every output file twice."""
    import shutil
    src = Path(__file__).resolve().parents[2] / "reports" / "prune_agp_mobilenet"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    outputs = ["report.md", "report.html", "results.csv", "results.json"]

    def generate() -> dict[str, bytes]:
        write_report(run)
        files = {name: (run / name).read_bytes() for name in outputs}
        files.update({f"plots/{p.name}": p.read_bytes() for p in sorted((run / "plots").glob("*.png"))})
        return files

    def without_timestamp(text: bytes) -> bytes:
        import re
        return re.sub(rb"Generated \d{4}-\d\d-\d\d \d\d:\d\d", b"Generated <time>", text)

    first = generate()
    assert {"plots/accuracy_vs_latency.png", "plots/training_curves.png", "plots/sparsity_schedule.png"} <= set(first)
    second = generate()
    assert first.keys() == second.keys()
    for name in first:
        assert without_timestamp(first[name]) == without_timestamp(second[name]), name


def test_html_report_is_self_contained(tmp_path: Path):
    import re
    import shutil
    src = Path(__file__).resolve().parents[2] / "reports" / "prune_agp_mobilenet"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    html = (write_report(run).parent / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(list((run / "plots").glob("*.png"))) >= 3
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    assert "<table>" in html and "Decision summary" in html


def test_report_written_elsewhere_carries_its_result_files(tmp_path: Path):
    run = _write_run(tmp_path, [_result("torch", 0, {"a": 0.5}), _result("paddle", 0, {"a": 0.6})])
    out = tmp_path / "published"
    write_report(run, out)
    assert (out / "run.json").is_file() and (out / "paddle" / "seed-0" / "result.json").is_file()
    before = (out / "report.md").read_text()
    write_report(out)  # regenerated from the copy alone
    assert (out / "report.md").read_text().split("Generated")[0] == before.split("Generated")[0]


def test_compare_two_runs_pairs_seeds_and_names_what_differs(tmp_path: Path):
    from common.report.compare import compare_runs
    a = _write_run(tmp_path / "a", [_result("torch", 0, {"net": 0.50}), _result("torch", 1, {"net": 0.60})])
    rb = [_result("torch", 0, {"net": 0.55}), _result("torch", 1, {"net": 0.70})]
    for r in rb:
        r["environment"]["versions"] = {"torch": "2.0"}
    b = _write_run(tmp_path / "b", rb)
    text = compare_runs(a, b)
    assert "| torch | 1.0 | 2.0 |" in text
    # B - A per seed: +5 and +10 pts -> +7.50, sd 3.54, half width 12.706 * 3.536 / sqrt(2) = 31.77
    assert "| accuracy | top-1 `net` | PyTorch | 55.00% ± 7.07 | 62.50% ± 10.61 | +7.50 [-24.27, +39.27] | " \
           "+13.6% | within seed noise |" in text


def _export_stage(ref_ms: float, onnx: dict) -> dict:
    lat = lambda ms: {"1": {"p50_ms": ms, "p90_ms": ms * 1.1}}  # noqa: E731
    return {"name": "export", "type": "export", "status": "ok", "models": {"student": {
        "format": "fmt", "files": ["artifacts/student/m"], "entry": "artifacts/student/m", "extra": {},
        "size_bytes": 1_000_000, "size_mb": 1.0, "params": 1000, "macs": 2000, "flops": 4000,
        "runtime": "own-rt", "threads": 2, "artifact_top1": 0.9, "latency": lat(ref_ms),
        "runtimes": {"onnxruntime": onnx}}}}


def test_onnx_runtime_section_rows_and_unavailable_reasons(tmp_path: Path):
    lat = {"1": {"p50_ms": 0.5, "p90_ms": 0.6}}
    torch_r = _result("torch", 0, {"student": 0.9})
    torch_r["stages"].append(_export_stage(4.0, {
        "status": "ok", "format": "ONNX (opset 17)", "files": ["artifacts/student.onnx/model.onnx"],
        "entry": "artifacts/student.onnx/model.onnx", "extra": {}, "size_bytes": 10, "size_mb": 1e-5,
        "runtime": "ONNX Runtime 9 (CPU)", "threads": 2, "artifact_top1": 0.9, "latency": lat,
        "vs_artifact": {"max_abs": 2.5e-7, "max_rel": 1e-7, "ref_scale": 3.0, "argmax_agree": 1.0}}))
    paddle_r = _result("paddle", 0, {"student": 0.9})
    paddle_r["stages"].append(_export_stage(3.0, {"status": "unavailable", "runtime": "ONNX Runtime 9 (CPU)",
                                                  "reason": "RuntimeError: op fancy is not supported"}))
    run = _write_run(tmp_path, [torch_r, paddle_r])
    md = build_markdown(run, load_results(run), META)
    assert "## The same artifacts on ONNX Runtime (neutral ground)" in md
    assert "| `student` | PyTorch | ONNX (opset 17) | 2.5e-07 | 100.00% | 90.00% | 0.50 (reference runtime 4.00) |" in md
    assert "- PaddlePaddle `student`: unavailable on ONNX Runtime (RuntimeError: op fancy is not supported)." in md
    # like with like: the ONNX Runtime row compares nothing where one side did not convert
    assert "| latency | batch 1 p50 `student` | 4.00 ms | 3.00 ms |" in md
    assert "| latency | batch 1 p50 `student` on ONNX Runtime | 0.50 ms | – | – |" in md
    rows = {x["metric"]: x["value"] for x in flat_rows(load_results(run)) if x["stage"] == "export"
            and x["backend"] == "torch"}
    assert rows["onnxruntime_latency_b1_p50_ms"] == 0.5 and rows["onnxruntime_max_abs_logit_diff"] == 2.5e-7


def test_best_runtime_section_names_the_choice_and_every_candidate(tmp_path: Path):
    lat = {"1": {"p50_ms": 1.5, "p90_ms": 1.6}}
    r = _result("torch", 0, {"student": 0.9})
    r["stages"].append(_export_stage(4.0, {"status": "unavailable", "runtime": "ort", "reason": "x"}))
    r["stages"][-1]["models"]["student"]["runtimes"]["best"] = {
        "status": "ok", "chosen": "TS", "chosen_at_batch": 1, "is_reference": False, "runtime": "TS",
        "format": "TorchScript", "files": ["artifacts/s/m.pt"], "entry": "artifacts/s/m.pt", "extra": {},
        "size_bytes": 1, "size_mb": 1e-6, "artifact_top1": 0.9, "latency": lat,
        "candidates": [{"runtime": "own-rt", "status": "ok", "reference": True, "batch_1_p50_ms": 4.1},
                       {"runtime": "TS", "status": "ok", "batch_1_p50_ms": 1.4},
                       {"runtime": "TS-opt", "status": "unavailable", "reason": "RuntimeError: no"}]}
    p = _result("paddle", 0, {"student": 0.9})
    p["stages"].append(_export_stage(3.0, {"status": "unavailable", "runtime": "ort", "reason": "x"}))
    p["stages"][-1]["models"]["student"]["runtimes"]["best"] = {
        "status": "ok", "chosen": "own-rt", "chosen_at_batch": 1, "is_reference": True,
        "candidates": [{"runtime": "own-rt", "status": "ok", "reference": True, "batch_1_p50_ms": 2.9},
                       {"runtime": "native", "status": "incorrect", "batch_1_p50_ms": 1.0}]}
    run = _write_run(tmp_path, [r, p])
    md = build_markdown(run, load_results(run), META)
    assert ("| `student` | PyTorch | TS | own-rt (4.10 ms); TS (1.40 ms); TS-opt (unavailable: RuntimeError: no) "
            "| 1.50 |") in md
    assert "| `student` | PaddlePaddle | own-rt | own-rt (2.90 ms); native (incorrect) | 3.00 |" in md
    # best against best: the chosen path's latency, or the reference's where the reference was fastest
    assert "| latency | batch 1 p50 `student` on each framework's best runtime | 1.50 ms | 3.00 ms |" in md


def test_pareto_plots_take_each_models_own_row_not_its_other_runtimes(tmp_path: Path):
    from common.report.decision import collect_metrics
    from common.report.plots import pareto_metrics
    torch_r = _result("torch", 0, {"fp32": 0.96, "int8": 0.95})
    torch_r["stages"].insert(0, {**_quant_stage(10.0, 8.0), "runtimes": {"onnxruntime": _onnx_pair(4.0, 2.0)}})
    metrics = collect_metrics([torch_r])
    acc, lat = pareto_metrics(metrics, "latency")
    assert acc["int8"].what == "top-1 `int8`" and lat["int8"].what == "batch 1 p50 `int8`"
