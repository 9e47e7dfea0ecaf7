"""Runs a recipe: one subprocess per (backend, seed), identical thread settings, results kept per backend.

Isolation matters: `import paddle` then `import torch` crashes, memory is measured per process, and a
crash in one backend keeps the other's results. Backends run one after another so neither competes
with the other for the CPU while being timed.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.errors import Terminated, raise_terminated
from common.progress import MARK, fmt_duration
from common.recipe import pretrain
from common.run import paired_timing
from common.config import RuntimeConfig
from common.recipe.loader import Recipe, validate
from common.sysinfo import PROJECT_ROOT, cpu_vendor
from common.results import SCHEMA_VERSION, atomic_write_json, init_dir, new_run_dir, read_json, seed_dir

class Executor(Protocol):
    """Where workers run: LocalExecutor (subprocesses here) or common/run/ray_executor.RayExecutor (Ray tasks)."""
    name: str

    def describe(self) -> dict[str, object]: ...

    def run(self, args: list[str], log_path: Path, label: str, threads: int, backend: str, runtime: RuntimeConfig,
            run_dir: Path) -> int:
        """Run one worker to its end; its exit code (negative: killed by that signal)."""

    def close(self) -> None: ...


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class RunOutcome:
    run_dir: Path
    failures: list[str] = field(default_factory=list)


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in THREAD_ENV:
        env[k] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info logging goes to the log file only anyway
    return env


# The MKL 2019 inside paddlepaddle 2.6 picks its code path by CPU vendor and takes a generic one on AMD CPUs
# unless this is in the environment before it loads. Measured on a 2-core AMD EPYC VM, processes alternated
# (benchmarks/paddle_mkl_cpu_type.py): ResNet50 training step 2.46 -> 1.16 s, MobileNetV2 0.48 -> 0.38 s,
# gradients as exact (float32 rounding, against float64), Paddle Inference latency and logits unchanged.
MKL_AMD = ("MKL_DEBUG_CPU_TYPE", "5")
SET_BY_SLIMBENCH = "SLIMBENCH_SET_MKL_DEBUG_CPU_TYPE"


def backend_env(backend: str, cpu_tuning: bool, vendor: str | None = None) -> dict[str, str]:
    """Environment a backend's worker needs before its framework loads (part of runtime.cpu_tuning)."""
    vendor = vendor if vendor is not None else cpu_vendor()
    if backend == "paddle" and cpu_tuning and vendor == "AuthenticAMD" and MKL_AMD[0] not in os.environ:
        return {MKL_AMD[0]: MKL_AMD[1], SET_BY_SLIMBENCH: "1"}
    return {}


def run_worker(args: list[str], log_path: Path, label: str, threads: int,
               extra_env: dict[str, str] | None = None) -> int:
    """Start a worker, show its progress lines on the console, keep everything in its log file.

    The worker runs in its own session, so a terminal's Ctrl-C reaches only this process, which passes
    exactly one signal on (SIGINT for Ctrl-C, SIGTERM for a SIGTERM) and waits for the worker to record
    'interrupted' in its result: stopping run-recipe stops the whole tree, and nothing is left running."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "common.run.worker", *args, "--threads", str(threads)]
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**worker_env(threads), **(extra_env or {})},
                                cwd=PROJECT_ROOT,
                                start_new_session=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith(MARK):
                    print(f"[{label}] {line[len(MARK):].rstrip()}", flush=True)
        except (KeyboardInterrupt, Terminated) as stop:
            proc.send_signal(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
            try:
                log.write(proc.communicate(timeout=60)[0] or "")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.write(f"# interrupted; worker exit code {proc.returncode}\n")
            raise
        code = proc.wait()
        log.write(f"# exit code {code}\n")
    return code


class LocalExecutor:
    """The default executor: each worker a subprocess of this machine, one after another."""
    name = "local"

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def run(self, args: list[str], log_path: Path, label: str, threads: int, backend: str, runtime: RuntimeConfig,
            run_dir: Path) -> int:
        return run_worker(args, log_path, label, threads, backend_env(backend, runtime.cpu_tuning))

    def close(self) -> None:
        pass


def file_command(name: str, args: list[str], env: dict[str, str]) -> str | None:
    """`python -m common.run.worker NAME ARGS` (read-weights, write-weights): one checkpoint file handled by a
    worker of its own framework, since frameworks never share a process. None when it worked, else the line saying
    why not."""
    p = subprocess.run([sys.executable, "-m", "common.run.worker", name, *args], capture_output=True, text=True,
                       env=env, cwd=PROJECT_ROOT)
    if p.returncode == 0:
        return None
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    said = next((ln for ln in reversed(lines) if ln.startswith("error: ")), lines[-1] if lines else "")
    return said.removeprefix("error: ") or f"exit code {p.returncode}"


def _last_error(log_path: Path) -> str:
    """The line of a worker's log that says why it stopped: its FAILED progress line, else the last line
    of a traceback (an error while the worker started, before it could write its result)."""
    lines = [ln.strip() for ln in _tail(log_path, 200).splitlines() if ln.strip() and not ln.startswith("# ")]
    failed = [ln[len(MARK):] for ln in lines if ln.startswith(MARK + "FAILED")]
    if failed:
        return failed[-1]
    return lines[-1][:300] if lines else "no output"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _mark_crashed(result_path: Path, code: int, backend: str, seed: int, log_path: Path) -> None:
    """A worker that failed before writing its result, or died without finishing (signal, OOM), is recorded with
    the real error from its log and the stage it was in."""
    why = _last_error(log_path)
    if not result_path.is_file():
        atomic_write_json(result_path, {"schema_version": SCHEMA_VERSION, "backend": backend, "seed": seed,
                                        "status": "failed", "stages": [],
                                        "error": {"type": "WorkerFailed", "stage": "setup",
                                                  "message": f"worker stopped while starting ({_exit_reason(code)}): "
                                                             f"{why}"}})
        return
    data = read_json(result_path)
    if data.get("status") == "running":
        running = [st.get("name") for st in data.get("stages", []) if st.get("status") == "running"]
        for st in data.get("stages", []):
            if st.get("status") == "running":
                st["status"] = "failed"
        data["status"] = "failed"
        data["error"] = {"type": "WorkerCrashed", "stage": running[-1] if running else "between stages",
                         "message": f"worker died ({_exit_reason(code)}) before finishing; last log line: {why}"}
        atomic_write_json(result_path, data)


def run_recipe(recipe: Recipe, backends: list[str], out: Path, command: str, threads: int,
               executor: "Executor | None" = None) -> RunOutcome:
    """A new run in a fresh directory. The reference framework runs first for each seed: later backends may
    start a stage from its trained weights (prune's start_from_reference)."""
    backends = sorted(backends, key=lambda b: b != recipe.reference_framework)
    run_dir = new_run_dir(out, recipe.name)
    _write_run_meta(run_dir, recipe, backends, threads, command)
    print(f"slimbench: {recipe.name} (profile {recipe.profile}) on {', '.join(backends)}; seeds "
          f"{', '.join(map(str, recipe.seeds))}; {threads} thread(s)\n  run directory: {run_dir}", flush=True)
    return _execute(run_dir, recipe, backends, threads, resume=False, executor=executor or LocalExecutor())


def _write_run_meta(run_dir: Path, recipe: Recipe, backends: list[str], threads: int, command: str) -> None:
    atomic_write_json(run_dir / "run.json", {
        "recipe": recipe.raw, "recipe_source": recipe.source, "recipe_name": recipe.name,
        "recipe_digest": recipe.digest(), "profile": recipe.profile, "backends": backends,
        "seeds": list(recipe.seeds), "threads": threads, "command": command,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _pretrain(run_dir: Path, recipe: Recipe, threads: int, resume: bool, executor: "Executor") -> Recipe:
    """Write the stand-in checkpoint of every slot that `pretrain` lists and has no weights (common/recipe/pretrain.py),
    each in a sub-run of its own under RUN/pretrain/; return the recipe whose slots start from those files.
    On resume a written file is kept, and an interrupted sub-run resumes."""
    todo = pretrain.pending(recipe)
    if not todo:
        return recipe
    from common.run.worker import load_run_recipe
    meta = read_json(run_dir / "run.json")
    for slot, cfg in todo.items():
        target = pretrain.checkpoint_path(run_dir, slot, cfg)
        sub_dir = target.parent / slot
        if slot in (meta.get("pretrained") or {}) and target.is_file():
            continue
        sub = validate(pretrain.sub_recipe_data(recipe, slot, cfg), f"{recipe.source} (pretrain.{slot})",
                       recipe.profile)
        again = resume and (sub_dir / "run.json").is_file()
        if not again:
            sub_dir.mkdir(parents=True, exist_ok=resume)
            _write_run_meta(sub_dir, sub, [cfg.framework], threads, f"pretrain.{slot} of {run_dir.name}")
        print(f"pretrain: {slot} ({recipe.models[slot].arch}) trained from scratch by {cfg.framework} for "
              f"{cfg.epochs} epoch(s) as a stand-in for a user's checkpoint\n  sub-run: {sub_dir}", flush=True)
        outcome = _execute_all(sub_dir, sub, [cfg.framework], threads, again, executor)
        if outcome.failures:
            raise pretrain.PretrainFailed(f"pretrain.{slot}: {outcome.failures[0]}")
        said = file_command("write-weights", pretrain.write_weights_args(sub_dir, slot, cfg, target),
                            {**worker_env(threads), **backend_env(cfg.framework, recipe.runtime.cpu_tuning)})
        if said:
            raise pretrain.PretrainFailed(f"pretrain.{slot}: writing {target.name} with {cfg.framework} failed: {said}")
        result = read_json(seed_dir(sub_dir, cfg.framework, cfg.seed) / "result.json")
        meta.setdefault("pretrained", {})[slot] = pretrain.pretrain_record(sub_dir, slot, cfg, target, result)
        atomic_write_json(run_dir / "run.json", meta)
        print(f"pretrain: {slot} written to {target} (sha256 {meta['pretrained'][slot]['sha256'][:12]}); the run "
              "starts it from this file as from a user's checkpoint", flush=True)
    return load_run_recipe(run_dir)


def resume_run(run_dir: Path, add_seeds: tuple[int, ...] = (), executor: "Executor | None" = None) -> RunOutcome:
    """Finish an interrupted or failed run in place: finished (backend, seed) runs and completed stages are kept.
    `add_seeds` extends the run by more replicates of the same recipe (a 1-seed run grown to 3 keeps its seed 0)."""
    from common.run.worker import load_run_recipe
    meta = read_json(run_dir / "run.json")
    new = [s for s in add_seeds if s not in meta["seeds"]]
    if new:
        meta["seeds"] = meta["recipe"]["seeds"] = sorted(set(meta["seeds"]) | set(new))
        meta.setdefault("extended", []).append({"seeds": new, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        atomic_write_json(run_dir / "run.json", meta)
    recipe = load_run_recipe(run_dir)
    print(f"slimbench: resuming {run_dir} ({recipe.name}, profile {recipe.profile})"
          + (f"; adding seed(s) {', '.join(map(str, new))}" if new else ""), flush=True)
    return _execute(run_dir, recipe, meta["backends"], meta["threads"], resume=True,
                    executor=executor or LocalExecutor())


def _execute(run_dir: Path, recipe: Recipe, backends: list[str], threads: int, resume: bool,
             executor: "Executor") -> RunOutcome:
    meta = read_json(run_dir / "run.json")
    meta.setdefault("executors", []).append({**executor.describe(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_json(run_dir / "run.json", meta)
    main_thread = threading.current_thread() is threading.main_thread()  # a sweep runs runs in threads
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None
    try:
        return _execute_all(run_dir, recipe, backends, threads, resume, executor)
    except (KeyboardInterrupt, Terminated) as stop:
        what = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        meta = read_json(run_dir / "run.json")
        meta.setdefault("interruptions", []).append({"signal": what, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        atomic_write_json(run_dir / "run.json", meta)
        print(f"\ninterrupted ({what}): finished stages are kept; continue with `run-recipe --resume {run_dir}`",
              file=sys.stderr, flush=True)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _execute_all(run_dir: Path, recipe: Recipe, backends: list[str], threads: int, resume: bool,
                 executor: "Executor") -> RunOutcome:
    outcome = RunOutcome(run_dir)
    t0 = time.time()
    recipe = _pretrain(run_dir, recipe, threads, resume, executor)
    for seed in recipe.seeds:
        ref = recipe.reference_framework
        log = init_dir(run_dir, seed) / "log.txt"
        if resume and (init_dir(run_dir, seed) / "init.json").is_file():
            code = 0
        else:
            code = executor.run(["init", str(run_dir), "--backend", ref, "--seed", str(seed)], log,
                                f"init seed {seed}", threads, ref, recipe.runtime, run_dir)
        if code != 0:
            msg = (f"seed {seed}: creating initial weights with the reference framework '{ref}' failed "
                   f"(exit {code}); see {log}")
            outcome.failures.append(msg)
            print(f"  {msg}\n{_tail(log)}", flush=True)
            for backend in backends:
                _mark_crashed(seed_dir(run_dir, backend, seed) / "result.json", code, backend, seed, log)
            continue
        for backend in backends:
            sdir = seed_dir(run_dir, backend, seed)
            if resume and (sdir / "result.json").is_file() and read_json(sdir / "result.json").get("status") == "ok":
                print(f"[{backend} seed {seed}] finished earlier: kept", flush=True)
                continue
            t_b = time.time()
            args = ["run", str(run_dir), "--backend", backend, "--seed", str(seed)] + (["--resume"] if resume else [])
            code = executor.run(args, sdir / "log.txt", f"{backend} seed {seed}", threads, backend,
                                recipe.runtime, run_dir)
            if code != 0:
                _mark_crashed(sdir / "result.json", code, backend, seed, sdir / "log.txt")
                err = read_json(sdir / "result.json").get("error") or {}
                msg = (f"{backend} seed {seed} failed in {err.get('stage', '?')}: "
                       f"{err.get('message', f'exit code {code}')} (log: {sdir / 'log.txt'})")
                outcome.failures.append(msg)
                print(f"  {msg}", flush=True)
            else:
                print(f"[{backend} seed {seed}] finished in {fmt_duration(time.time() - t_b)}", flush=True)
    outcome.failures += paired_timing.run_phase(run_dir, recipe, backends, threads, executor)
    print(f"all runs finished in {fmt_duration(time.time() - t0)}", flush=True)
    return outcome
