"""End to end through the real CLI: the smoke profile on each backend and on both, failures, bad recipes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    code = "import sys; from common.cli import {fn}; sys.exit({fn}(sys.argv[1:]))"
    fn = "run_recipe" if args[0] == "run-recipe" else "slimbench"
    return subprocess.run([sys.executable, "-c", code.format(fn=fn), *args[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/seed-0/result.json")}


def only_run(out: Path) -> Path:
    runs = list((out / "kd_resnet50_mobilenet").iterdir())
    assert len(runs) == 1
    return runs[0]


def check_result(r: dict) -> None:
    assert r["status"] == "ok", r.get("error")
    assert r["schema_version"] == 1
    assert [s["name"] for s in r["stages"]] == ["train_teacher", "train_student", "distill", "evaluate", "export"]
    assert all(p["max_rel"] < 1e-4 for p in r["init_parity"].values())
    # Batch norm recalibrated before every validation, on the seed's one fixed draw of training batches.
    assert all(s["bn_recalibrated_every_epoch"] and s["bn_recalibration_draw"] == "fixed" for s in r["stages"][:3])
    ev = r["stages"][3]["models"]
    assert set(ev) == {"teacher", "student_baseline", "student_kd"}
    assert ev["teacher"]["top1"] > 0.3  # learns something in seconds on the synthetic smoke data
    ex = r["stages"][4]["models"]["teacher"]
    assert ex["size_bytes"] > 0 and ex["macs"] > 0 and ex["latency"]["1"]["p50_ms"] > 0
    assert ex["artifact_top1"] == pytest.approx(ev["teacher"]["top1"], abs=0.02)
    # The same artifact converted by the framework's converter runs on ONNX Runtime and agrees with it.
    ort = ex["runtimes"]["onnxruntime"]
    assert ort["status"] == "ok", ort.get("reason")
    assert ort["vs_artifact"]["argmax_agree"] == 1.0 and ort["vs_artifact"]["max_rel"] < 1e-4
    assert ort["artifact_top1"] == pytest.approx(ex["artifact_top1"], abs=0.02)
    assert ort["runtime"].startswith("ONNX Runtime") and ort["latency"]["1"]["p50_ms"] > 0
    # The fastest correct deployment on the framework's own stack, chosen among the reference and candidates.
    best = ex["runtimes"]["best"]
    assert best["status"] == "ok" and best["candidates"][0]["reference"] and len(best["candidates"]) >= 2
    timed = [c for c in best["candidates"] if c["status"] == "ok"]
    assert best["chosen"] == min(timed, key=lambda c: c["batch_1_p50_ms"])["runtime"]
    assert best["is_reference"] == (best["chosen"] == ex["runtime"])
    if not best["is_reference"]:
        assert best["vs_artifact"]["argmax_agree"] == 1.0 and best["latency"]["1"]["p50_ms"] > 0


@pytest.mark.torch
def test_smoke_torch(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "torch", "--profile", "smoke", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    run = only_run(tmp_path)
    check_result(results(run)["torch"])
    assert "train_teacher  epoch 1/2" in p.stdout and "ETA" in p.stdout
    assert (run / "report.md").is_file() and "report:" in p.stdout


@pytest.mark.paddle
def test_smoke_paddle(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "paddle", "--profile", "smoke", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    check_result(results(only_run(tmp_path))["paddle"])


@pytest.mark.torch
@pytest.mark.paddle
def test_smoke_all_backends_same_data_and_report(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "all", "--profile", "smoke", "--out", str(tmp_path),
            "--set", "stages.distill.temperature=2")
    assert p.returncode == 0, p.stdout + p.stderr
    run = only_run(tmp_path)
    res = results(run)
    for r in res.values():
        check_result(r)
    assert res["torch"]["data"] == res["paddle"]["data"]  # identical split and batch stream
    assert res["torch"]["stages"][2]["temperature"] == 2.0
    # Same start, same data, same schedule: the teacher's first-epoch loss agrees closely across frameworks.
    lt = res["torch"]["stages"][0]["history"][0]["train_loss"]
    lp = res["paddle"]["stages"][0]["history"][0]["train_loss"]
    assert lt == pytest.approx(lp, rel=1e-3)
    report = (run / "report.md").read_text()
    for text in ("PyTorch top-1", "PaddlePaddle top-1", "Knowledge-distillation gain", "initial-weight parity",
                 "split hash", "Paddle Inference", "torch.export", "batch 1 latency p50 / p90 ms",
                 "## The same artifacts on ONNX Runtime (neutral ground)", "paddle2onnx 1.3", "torch.onnx.export",
                 "| latency | batch 1 p50 `student_kd` on ONNX Runtime |",
                 "## Each framework's best runtime (chosen by measurement)", "PyTorch TorchScript (traced",
                 "| latency | batch 1 p50 `student_kd` on each framework's best runtime |",
                 "PyTorch CPU training (runtime.cpu_tuning): models with depthwise convolutions train in channels_last",
                 "PaddlePaddle CPU training (runtime.cpu_tuning): models with depthwise convolutions train, predict"):
        assert text in report, text
    assert (run / "results.csv").read_text().startswith("backend,seed,stage,model,metric,value")
    # A run this short cannot carry a verdict: the report and the console say why (validity checks).
    assert "## Validity checks" in report and "1 seed(s): a verdict needs at least 3" in report
    rows = [line for line in report.splitlines() if line.startswith(("| accuracy |", "| size |", "| latency |"))]
    assert rows and all("no verdict: " in line for line in rows)
    assert "warning: 1 seed(s): a verdict needs at least 3" in p.stderr
    # Paired timing: after both backends finished, every exported artifact is timed again in fresh processes,
    # torch paddle paddle torch, with the stage's warm-up and repeats; the report uses those rounds.
    assert "paired timing: every artifact timed again per seed, processes torch paddle paddle torch" in p.stdout
    rounds = sorted((run / "timing" / "seed-0").glob("round-*.json"))
    assert [r.name for r in rounds] == ["round-0.paddle.json", "round-0.torch.json", "round-1.paddle.json",
                                        "round-1.torch.json"]
    for path in rounds:
        data = json.loads(path.read_text())
        backend = path.name.split(".")[1]
        assert data["status"] == "ok", data.get("error")
        assert data["result_finished_at"] == res[backend]["finished_at"]
        exported = set(res[backend]["stages"][4]["models"])
        models = res[backend]["stages"][4]["models"]
        assert {(i["stage"], i["key"], i["kind"]) for i in data["items"]} == (
            {("export", f"models.{s}", "fp32") for s in exported}
            | {("export", f"models.{s}.runtimes.best", "fp32") for s in exported
               if not models[s]["runtimes"]["best"]["is_reference"]}
            | {("export", f"models.{s}.runtimes.onnxruntime", "onnx") for s in exported})
        assert all(len(i["latency"][bs]["times_ms"]) == 3 for i in data["items"] for bs in ("1", "4"))
    assert "the paired timing phase after training" in report
    # The report is rebuilt from result files alone.
    # (--allow-contended: this test is about regeneration, not about how quiet the test machine is)
    p2 = cli("slimbench", "report", str(run), "--out", str(tmp_path / "again"), "--allow-contended")
    assert p2.returncode == 0, p2.stderr
    assert (tmp_path / "again" / "report.md").read_text().split("Generated")[1][20:] == report.split("Generated")[1][20:]


@pytest.mark.torch
@pytest.mark.paddle
def test_one_backend_failing_keeps_the_other_and_exits_nonzero(tmp_path: Path):
    # A tolerance below paddle's conversion error (~1e-7) but above torch's (0): paddle must stop at init.
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--profile", "smoke", "--out", str(tmp_path),
            "--set", "parity.rtol=1e-12")
    assert p.returncode == 1
    assert "paddle seed 0 failed in init" in p.stderr and "parity.rtol" in p.stderr
    run = only_run(tmp_path)
    res = results(run)
    assert res["torch"]["status"] == "ok"
    assert res["paddle"]["status"] == "failed" and res["paddle"]["error"]["type"] == "ParityError"
    assert "## Failures" in (run / "report.md").read_text()


@pytest.mark.torch
def test_diverging_training_stops_with_a_clear_reason(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "torch", "--profile", "smoke", "--out", str(tmp_path),
            "--set", "stages.train_teacher.optimizer.lr=100",  # with decay 1, w *= 1 - 100 per step: overflows
            "--set", "stages.train_teacher.optimizer.weight_decay=1",
            "--set", "stages.train_teacher.optimizer.name=sgd")
    assert p.returncode == 1
    r = results(only_run(tmp_path))["torch"]
    assert r["error"]["type"] == "TrainingDiverged" and r["error"]["stage"] == "train_teacher"
    assert "stages[0].train.optimizer.lr" in r["error"]["message"]


def test_malformed_recipe_is_one_line_with_key_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    src = (ROOT / "common" / "recipes" / "kd_resnet50_mobilenet.yaml").read_text()
    bad.write_text(src.replace("temperature: 4\n", "temperature: high\n", 1))
    p = cli("run-recipe", str(bad), "--out", str(tmp_path / "runs"))
    assert p.returncode == 2
    assert p.stderr.strip() == 'error: bad.yaml: stages[2].distill.temperature: expected a number > 0, got "high"'
    assert not (tmp_path / "runs").exists()


def test_cli_usage_errors():
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "tensorflow")
    assert p.returncode == 2 and "expected torch, paddle, all" in p.stderr and "Traceback" not in p.stderr
    p = cli("run-recipe", "no_such_recipe")
    assert p.returncode == 2 and "built-in recipes are" in p.stderr


def test_slimbench_list_and_show():
    p = cli("slimbench", "list")
    assert p.returncode == 0
    listed = {line.split()[0]: line for line in p.stdout.splitlines()}
    assert set(listed) == {"kd_resnet50_mobilenet", "kd_methods_resnet50_mobilenet", "prune_agp_mobilenet", "prune_filter_resnet50",
                           "quant_ptq_resnet50", "quant_qat_mobilenet", "compress_resnet50_mobilenet",
                           "from_checkpoint_resnet18_mobilenet"}
    assert listed["quant_ptq_resnet50"].split(None, 1)[1] == "Post-training static int8 quantization"
    p = cli("slimbench", "show", "kd_resnet50_mobilenet", "--profile", "smoke", "--set", "stages.distill.alpha=0.5")
    assert p.returncode == 0 and "alpha: 0.5" in p.stdout and "arch: tiny_cnn" in p.stdout


@pytest.mark.slow
@pytest.mark.torch
def test_default_profile_torch_teacher_reaches_95(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "torch", "--out", str(tmp_path), "--seeds", "0",
            timeout=1800)
    assert p.returncode == 0, p.stderr
    r = results(only_run(tmp_path))["torch"]
    assert r["stages"][3]["models"]["teacher"]["top1"] >= 0.95


@pytest.mark.gpu
@pytest.mark.torch
def test_smoke_torch_on_cuda(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "torch", "--profile", "smoke", "--out", str(tmp_path),
            "--set", "runtime.device=cuda")
    assert p.returncode == 0, p.stdout + p.stderr
    r = results(only_run(tmp_path))["torch"]
    assert r["environment"]["device"].startswith("cuda")


@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.torch),
                                     pytest.param("paddle", marks=pytest.mark.paddle)])
def test_resume_keeps_completed_stages_and_finishes_the_run(tmp_path: Path, backend: str):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", backend, "--profile", "smoke", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    path = run / backend / "seed-0" / "result.json"
    full = json.loads(path.read_text())
    # The state a crash after the distill stage leaves behind: three stages done, the run not finished.
    crashed = dict(full, status="failed", stages=full["stages"][:3])
    path.write_text(json.dumps(crashed))
    exported = {f: (run / backend / "seed-0" / f).read_bytes()
                for m in full["stages"][4]["models"].values() for f in m["files"]}
    p = cli("run-recipe", "--resume", str(run))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "distill: completed earlier, outputs reloaded from checkpoints" in p.stdout
    assert "train_teacher  epoch" not in p.stdout  # not retrained
    resumed = json.loads(path.read_text())
    assert resumed["status"] == "ok" and resumed["resumed_stages"] == ["train_teacher", "train_student", "distill"]
    # Reloaded checkpoints reproduce the uninterrupted run's evaluation exactly.
    for slot, m in full["stages"][3]["models"].items():
        assert {k: resumed["stages"][3]["models"][slot][k] for k in ("top1", "top5", "loss")} == \
            {k: m[k] for k in ("top1", "top5", "loss")}
    # The teacher's file does not depend on whether the distill stage (which freezes it) ran in this process.
    for f, data in exported.items():
        assert (run / backend / "seed-0" / f).read_bytes() == data, f
    p = cli("run-recipe", "--resume", str(run))
    assert p.returncode == 0 and "finished earlier: kept" in p.stdout


@pytest.mark.torch
def test_resume_with_more_seeds_keeps_the_run_and_adds_the_seeds(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--backend", "torch", "--profile", "smoke", "--seeds", "0",
            "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    seed0 = (run / "torch" / "seed-0" / "result.json").read_text()
    p = cli("run-recipe", "--resume", str(run), "--seeds", "0,1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "adding seed(s) 1" in p.stdout and "[torch seed 0] finished earlier: kept" in p.stdout
    assert (run / "torch" / "seed-0" / "result.json").read_text() == seed0  # untouched
    r1 = json.loads((run / "torch" / "seed-1" / "result.json").read_text())
    assert r1["status"] == "ok" and r1["recipe_digest"] == json.loads(seed0)["recipe_digest"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["seeds"] == [0, 1] and meta["extended"][0]["seeds"] == [1]
    report = (run / "report.md").read_text()
    assert "seeds 0, 1" in report and "Extended on" in report and (run / "report.html").is_file()
    env = r1["environment"]
    assert env["numpy"] and (env["slimbench"] is None or len(env["slimbench"]["commit"]) == 40)
    p = cli("slimbench", "compare", str(run), str(run), "--out", str(tmp_path / "cmp.md"))
    assert p.returncode == 0, p.stderr
    assert "Nothing recorded differs" in p.stdout and "| accuracy | top-1 `teacher` | PyTorch |" in p.stdout
    assert (tmp_path / "cmp.md").read_text() == p.stdout
