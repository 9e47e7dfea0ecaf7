"""The contract around a run: signals stop the whole process tree and mark the run interrupted; a capability a
backend lacks stops the run before anything trains; a wheel install (not editable) has the built-in recipes."""
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

ROOT = Path(__file__).resolve().parents[2]

LONG_RECIPE = {
    "name": "long_train", "description": "Long: a training stage long enough to be interrupted.",
    "seeds": [0],
    "data": {"dataset": "synthetic", "image_size": 16, "synthetic_samples": 320, "batch_size": 32},
    "models": {"net": {"arch": "tiny_cnn"}},
    "stages": [{"train": {"name": "train_long", "model": "net", "epochs": 5000}},
               {"evaluate": {"name": "evaluate", "models": ["net"]}}],
}


def _start(tmp_path: Path) -> subprocess.Popen:
    recipe = tmp_path / "long.yaml"
    recipe.write_text(yaml.safe_dump(LONG_RECIPE, sort_keys=False))
    code = "import sys; from common.cli import run_recipe; sys.exit(run_recipe(sys.argv[1:]))"
    # SIGINT as a terminal delivers it: a test suite started as a background job of a script inherits SIGINT
    # ignored (POSIX shells do that to background jobs, `SigIgn` in /proc), and so would run-recipe, which then
    # rightly never sees the Ctrl-C this test sends.
    return subprocess.Popen([sys.executable, "-c", code, str(recipe), "--backend", "torch", "--out",
                             str(tmp_path / "runs"), "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_training(proc: subprocess.Popen, timeout: float = 180) -> list[str]:
    """Read the console until the training loop has started; return what was printed."""
    seen, t0 = [], time.time()
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "train_long: 5000 epoch(s)" in line:
            return seen
        assert time.time() - t0 < timeout, "".join(seen)
    raise AssertionError("run ended before training started:\n" + "".join(seen))


@pytest.mark.torch
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_whole_tree_and_marks_the_run_interrupted(tmp_path: Path, sig, code):
    proc = _start(tmp_path)
    _wait_for_training(proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the worker should be running"
    proc.send_signal(sig)
    try:
        out = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired as e:  # what was still running, and what the run printed last
        tree = [(p.pid, p.name(), p.status()) for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.kill()
        seen = e.output.decode() if isinstance(e.output, bytes) else (e.output or "")
        raise AssertionError(f"run-recipe still running 120 s after {sig!r}; its process tree: {tree}; output "
                             f"tail:\n{(seen + (proc.communicate()[0] or ''))[-3000:]}") from e
    assert proc.returncode == code, out
    assert "interrupted" in out and "run-recipe --resume" in out
    time.sleep(0.5)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE], "worker left running"
    run = next((tmp_path / "runs" / "long_train").iterdir())
    result = json.loads((run / "torch" / "seed-0" / "result.json").read_text())
    assert result["status"] == "interrupted" and result["error"]["stage"] == "train_long"
    assert [s["status"] for s in result["stages"]] == ["failed"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["interruptions"][0]["signal"] == {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}[sig]


def test_a_stage_a_backend_cannot_run_fails_before_anything_trains(tmp_path: Path):
    """Paddle has no dynamic int8: asking for it on both backends is a recipe error at once, no run directory."""
    code = "import sys; from common.cli import run_recipe; sys.exit(run_recipe(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "quant_qat_mobilenet", "--profile", "smoke", "--set",
                        "stages.qat.mode=dynamic", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "stages[1].quantize.mode" in p.stderr and "'paddle'" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_wheel_install_lists_the_builtin_recipes(tmp_path: Path):
    """`pip install .` (not -e) must ship the recipes as package data; checked in a fresh virtual environment that
    sees this environment's packages but imports slimbench only from the built wheel."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("slimbench-*.whl"))
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("SLIMBENCH_RECIPES", None)
    code = ("import sys, common; assert common.__file__.startswith(sys.argv[1]), common.__file__; "
            "from common.cli import slimbench; sys.exit(slimbench(['list']))")
    p = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert "kd_resnet50_mobilenet" in names and len(names) == len(list((ROOT / "common" / "recipes").glob("*.yaml")))


@pytest.mark.torch
def test_a_cpu_hog_beside_a_run_flags_its_timings_contended(tmp_path: Path):
    """Timings under background load get no verdict, the console says so, and publishing them needs a flag."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        code = "import sys; from common.cli import run_recipe; sys.exit(run_recipe(sys.argv[1:]))"
        p = subprocess.run([sys.executable, "-c", code, "kd_resnet50_mobilenet", "--backend", "torch", "--profile",
                            "smoke", "--threads", "1", "--out", str(tmp_path / "runs")], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    finally:
        hog.kill()
        hog.wait()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "flagged contended" in p.stdout and "warning: " in p.stderr and "timed while other processes used" in p.stderr
    run = next((tmp_path / "runs" / "kd_resnet50_mobilenet").iterdir())
    result = json.loads((run / "torch" / "seed-0" / "result.json").read_text())
    assert result["stages"][4]["models"]["teacher"]["latency"]["1"]["load"]["contended"] is True
    assert result["stages"][0]["load"]["contended"] is True
    report = (run / "report.md").read_text()
    validity = report[report.index("## Validity checks"):report.index("## Exported artifacts")]
    assert "`teacher`'s batch-1 latency on PyTorch was timed while other processes used" in validity
    code = "import sys; from common.cli import slimbench; sys.exit(slimbench(sys.argv[1:]))"
    pub = subprocess.run([sys.executable, "-c", code, "report", str(run), "--out", str(tmp_path / "pub")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert pub.returncode == 2 and "background load" in pub.stderr and not (tmp_path / "pub").exists()
    forced = subprocess.run([sys.executable, "-c", code, "report", str(run), "--out", str(tmp_path / "pub"),
                             "--allow-contended"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr
