"""Ray executor, sweeps and MLflow through the real CLI: a local Ray instance (2 CPUs on CI) runs smoke recipes on
both backends with the same metrics as the local executor; a worker killed mid-run is reported and the run
resumes; MLflow runs are read back through the MLflow client from a temporary store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.integration.test_run_recipe import ROOT, cli

pytestmark = [pytest.mark.torch, pytest.mark.paddle, pytest.mark.ray, pytest.mark.mlflow]
pytest.importorskip("ray")
pytest.importorskip("mlflow")


def _run_dir(out: Path, recipe: str) -> Path:
    runs = list((out / recipe).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def _top1(run: Path) -> dict[tuple[str, str], float]:
    out = {}
    for backend in ("torch", "paddle"):
        r = json.loads((run / backend / "seed-0" / "result.json").read_text())
        assert r["status"] == "ok", r.get("error")
        ev = next(s for s in r["stages"] if s["type"] == "evaluate")
        out.update({(backend, slot): m["top1"] for slot, m in ev["models"].items()})
    return out


def _client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def test_a_sweep_on_local_ray_matches_the_local_executor_and_is_tracked_in_mlflow(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipes": ["kd_resnet50_mobilenet", "quant_ptq_resnet50"],
                                    "profiles": ["smoke"], "backends": "all"}))
    p = cli("slimbench", "sweep", str(grid), "--executor", "ray", "--out", str(tmp_path / "ray"), "--mlflow")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "a local Ray instance" in p.stdout and "sweep: 2/2 runs finished" in p.stdout
    kd, ptq = _run_dir(tmp_path / "ray", "kd_resnet50_mobilenet"), _run_dir(tmp_path / "ray", "quant_ptq_resnet50")
    assert (ptq / "report.md").is_file()
    assert json.loads((kd / "run.json").read_text())["executors"][0]["name"] == "ray"
    # the same recipe on the local executor: the same numbers (deterministic CPU runs, same data and weights)
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--profile", "smoke", "--out", str(tmp_path / "local"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _top1(kd) == _top1(_run_dir(tmp_path / "local", "kd_resnet50_mobilenet"))
    report = (kd / "report.md").read_text()
    assert "| backend | seed | host |" in report
    # MLflow: an experiment per recipe, a parent run per slimbench run, one child per (backend, seed)
    client = _client(f"sqlite:///{tmp_path / 'ray' / 'mlflow.db'}")
    for recipe, run in (("kd_resnet50_mobilenet", kd), ("quant_ptq_resnet50", ptq)):
        exp = client.get_experiment_by_name(recipe)
        logged = client.search_runs([exp.experiment_id])
        parents = [r for r in logged if r.data.tags["slimbench.kind"] == "run"]
        children = {r.data.tags["slimbench.backend"]: r for r in logged if r.data.tags["slimbench.kind"] != "run"}
        assert len(parents) == 1 and set(children) == {"torch", "paddle"}
        assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children.values())
        assert parents[0].data.tags["slimbench.run_dir"] == str(run.resolve())
        assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"report.md", "report.html"}
        for backend, child in children.items():
            assert child.data.params["backend"] == backend and child.data.params["recipe.name"] == recipe
            assert any(a.path == "artifacts" for a in client.list_artifacts(child.info.run_id))
    torch_kd = next(r for r in client.search_runs([client.get_experiment_by_name("kd_resnet50_mobilenet")
                                                   .experiment_id]) if r.data.tags.get("slimbench.backend") == "torch")
    history = client.get_metric_history(torch_kd.info.run_id, "distill.val_top1")
    assert [m.step for m in history] == [1, 2]
    assert torch_kd.data.metrics["evaluate.student_kd.top1"] == pytest.approx(_top1(kd)[("torch", "student_kd")])


def _worker_of(backend: str, run_root: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "common.run.worker" in cmd and "run" in cmd and backend in cmd and any(str(run_root) in c for c in cmd):
            return proc
    return None


def test_a_ray_task_killed_mid_run_is_reported_and_the_run_resumes(tmp_path: Path):
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, "-c", "from common.cli import run_recipe_main; run_recipe_main()",
                               "kd_resnet50_mobilenet", "--profile", "smoke", "--executor", "ray", "--out", str(out)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, victim = time.time() + 240, None
    while time.time() < deadline and victim is None and driver.poll() is None:
        victim = _worker_of("paddle", out)
        time.sleep(0.2)
    assert victim is not None, "the paddle worker never started"
    victim.send_signal(signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stdout[-2000:] + stderr[-2000:]
    assert "paddle seed 0 failed" in stderr and "killed by SIGKILL" in stderr + stdout
    run = _run_dir(out, "kd_resnet50_mobilenet")
    assert json.loads((run / "paddle" / "seed-0" / "result.json").read_text())["status"] != "ok"
    p = cli("run-recipe", "--resume", str(run), "--executor", "ray")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "[torch seed 0] finished earlier: kept" in p.stdout
    assert set(_top1(run)) >= {("torch", "teacher"), ("paddle", "teacher")}
    assert [e["name"] for e in json.loads((run / "run.json").read_text())["executors"]] == ["ray", "ray"]


def test_mlflow_logging_of_a_resumed_run_replaces_its_earlier_runs(tmp_path: Path):
    p = cli("run-recipe", "kd_resnet50_mobilenet", "--profile", "smoke", "--backend", "torch", "--out",
            str(tmp_path), "--mlflow", f"sqlite:///{tmp_path / 'track.db'}")
    assert p.returncode == 0, p.stderr[-2000:]
    run = _run_dir(tmp_path, "kd_resnet50_mobilenet")
    p = cli("run-recipe", "--resume", str(run), "--mlflow", f"sqlite:///{tmp_path / 'track.db'}")
    assert p.returncode == 0, p.stderr[-2000:]
    client = _client(f"sqlite:///{tmp_path / 'track.db'}")
    logged = client.search_runs([client.get_experiment_by_name("kd_resnet50_mobilenet").experiment_id])
    assert sorted(r.data.tags["slimbench.kind"] for r in logged) == ["backend-seed", "run"]


def test_a_node_that_does_not_see_the_run_directory_fails_with_one_line(tmp_path: Path, capsys):
    """Files travel by shared storage: a task that cannot see the run's run.json stops before running anything."""
    from common.config import RuntimeConfig
    from common.errors import UsageError
    from common.run.ray_executor import RayExecutor
    executor = RayExecutor()
    try:
        code = executor.run(["init", str(tmp_path / "elsewhere"), "--backend", "torch", "--seed", "0"],
                            tmp_path / "log.txt", "init seed 0", 1, "torch", RuntimeConfig(), tmp_path / "elsewhere")
        # a GPU is asked for only where the recipe wants one and the cluster has one (this one has none)
        assert executor.gpus_for("auto") == 0 and executor.gpus_for("cpu") == 0
        with pytest.raises(UsageError, match="the Ray cluster has no GPU"):
            executor.gpus_for("cuda")
    finally:
        executor.close()
    assert code == 3
    said = (tmp_path / "log.txt").read_text()
    assert "does not see" in said and "storage every Ray node mounts at the same path" in said
    assert "common.run.worker" not in said  # no worker was started
