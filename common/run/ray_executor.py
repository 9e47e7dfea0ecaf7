"""`--executor ray`: each (backend, seed) worker of a run as a Ray task (docs/ARCHITECTURE.md, "Executors").

Files travel by shared storage: a task runs the ordinary worker (`python -m common.run.worker ...`) on its node, and
that worker reads and writes the run directory at the same path as the driver. On one machine (the local Ray
instance started without `--ray-address`) that holds trivially; on a cluster the run directory must be on a
file system every node mounts at the same path. A task first checks that it sees the run's run.json and fails
with one line naming its node otherwise, so a cluster without shared storage never half-writes a run.

Timings stay comparable: every task of one run is pinned to the node its first task ran on (a run's latency is
compared on one machine; a sweep spreads whole runs over nodes), and tasks ask for the recipe's threads as CPUs
(and a GPU for `runtime.device: cuda`, or `auto` on a cluster with GPUs) plus one unit of the `slimbench`
resource when the cluster defines it (start each node with
`--resources='{"slimbench": 1}'` to run one slimbench worker per node at a time; the local instance does).
The node's own CPU decides the backend's environment (e.g. MKL on AMD), and results record the host.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common.errors import UsageError
from common.progress import MARK
from common.sysinfo import PROJECT_ROOT

TIMING_RESOURCE = "slimbench"  # one unit per node: one slimbench worker at a time there
ROOT = PROJECT_ROOT


def _run_on_node(args: list[str], log_path: str, threads: int, backend: str, cpu_tuning: bool,
                 run_json: str) -> dict[str, Any]:
    """The Ray task: the worker as a subprocess of this node, its output appended to the run's log file."""
    import ray
    from common.run.runner import backend_env, worker_env
    host = socket.gethostname()
    node = ray.get_runtime_context().get_node_id()
    if not Path(run_json).is_file():
        return {"code": 3, "host": host, "node_id": node,
                "error": f"node {host} does not see {run_json}: the run directory must be on storage every Ray node "
                         "mounts at the same path"}
    cmd = [sys.executable, "-m", "common.run.worker", *args, "--threads", str(threads)]
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n# ray task on node {host} ({node[:12]})\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**worker_env(threads), **backend_env(backend, cpu_tuning)})
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # ray.cancel: the worker records "interrupted" and exits
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        log.write(f"# exit code {code}\n")
    return {"code": code, "host": host, "node_id": node}


class RayExecutor:
    """Runs workers as Ray tasks; a local Ray instance starts (and stops with `close`) when no address is given."""
    name = "ray"

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'slimbench[ray]'") from None
        self._ray = ray
        self.address = address
        self._own = not ray.is_initialized()
        if self._own:
            quiet = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.ERROR}
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, resources={TIMING_RESOURCE: 1}, **quiet)
        self._task = ray.remote(_run_on_node)
        self._pins: dict[Path, str] = {}
        self._lock = threading.Lock()
        resources = ray.cluster_resources()
        self._timing_slot = TIMING_RESOURCE in resources
        self._max_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        print(f"ray: workers run as tasks on {where} ({self.describe()['nodes']} node(s), {resources.get('CPU', 0):g} "
              f"CPUs{'; one slimbench worker per node at a time' if self._timing_slot else ''})", flush=True)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address or "local instance",
                "nodes": sum(1 for n in self._ray.nodes() if n.get("Alive"))}

    def gpus_for(self, device: str) -> int:
        """A GPU for the task when the recipe asks for CUDA, or for `auto` where the cluster has GPUs."""
        has_gpu = self._ray.cluster_resources().get("GPU", 0) >= 1
        if device == "cuda" and not has_gpu:
            raise UsageError("runtime.device is 'cuda' but the Ray cluster has no GPU; use 'auto' or 'cpu'")
        return 1 if device == "cuda" or (device == "auto" and has_gpu) else 0

    def run(self, args: list[str], log_path: Path, label: str, threads: int, backend: str, runtime: Any,
            run_dir: Path) -> int:
        """One worker as a task pinned to the run's node; its progress lines are shown from the shared log file."""
        if threads > self._max_cpus:
            raise UsageError(f"--threads {threads}: no Ray node has that many CPUs (largest: {self._max_cpus:g})")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        log_path.parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"num_cpus": threads, "num_gpus": self.gpus_for(runtime.device), "max_retries": 0}
        if self._timing_slot:
            options["resources"] = {TIMING_RESOURCE: 1}
        with self._lock:
            pin = self._pins.get(run_dir)
        if pin:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(pin, soft=False)
        ref = self._task.options(**options).remote(args, str(log_path), threads, backend, runtime.cpu_tuning,
                                                   str(run_dir / "run.json"))
        try:
            out = self._follow(ref, log_path, label)
        except (KeyboardInterrupt, SystemExit):
            self._ray.cancel(ref)
            raise
        except self._ray.exceptions.RayError as e:  # the task or its node died: a crash like any other
            with open(log_path, "a") as log:
                log.write(f"# ray task lost: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n")
            return -signal.SIGKILL
        if out.get("error"):
            with open(log_path, "a") as log:
                log.write(f"FAILED: {out['error']}\n")
            print(f"[{label}] {out['error']}", flush=True)
        with self._lock:
            self._pins.setdefault(run_dir, out["node_id"])
        return int(out["code"])

    def _follow(self, ref: Any, log_path: Path, label: str) -> dict[str, Any]:
        """Wait for the task, printing the worker's progress lines as they reach the log file."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        while True:
            ready, _ = self._ray.wait([ref], timeout=0.5)
            offset = self._show(log_path, offset, label)
            if ready:
                time.sleep(0.05)
                self._show(log_path, offset, label)
                return self._ray.get(ref)

    @staticmethod
    def _show(log_path: Path, offset: int, label: str) -> int:
        if not log_path.exists():
            return offset
        with open(log_path) as log:
            log.seek(offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        for line in complete.splitlines():
            if line.startswith(MARK):
                print(f"[{label}] {line[len(MARK):].rstrip()}", flush=True)
        return offset + len(complete.encode())

    def close(self) -> None:
        if self._own and self._ray.is_initialized():
            self._ray.shutdown()
