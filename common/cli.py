"""Command-line entry points: `run-recipe` and `slimbench {list,show,report,compare,sweep,weights}`."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import yaml

from backends.capabilities import check_capabilities
from common.errors import SlimbenchError, Terminated, UsageError
from common.run.fetch_weights import DEFAULT_DIR, FETCHABLE
from common.run.fetch_weights import fetch as fetch_weights
from common.recipe.loader import BACKENDS, builtin_recipes, load_recipe, recipe_to_dict
from common.results import atomic_write_text, check_publish_target, read_json, read_run_meta


def _seeds(text: str) -> tuple[int, ...]:
    parts = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not p.isdigit() or len(p) > 9 for p in parts):
        raise UsageError(f"--seeds {text[:40]!r}: expected comma-separated integers >= 0, e.g. 0,1,2")
    seeds = tuple(int(p) for p in parts)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: expected distinct seeds")
    return seeds


def _backends(text: str) -> list[str]:
    if text == "all":
        return list(BACKENDS)
    chosen = [b.strip() for b in text.split(",")]
    if not all(b in BACKENDS for b in chosen):
        raise UsageError(f"--backend {text[:40]!r}: expected torch, paddle, all, or a comma-separated list of those")
    if len(set(chosen)) != len(chosen):
        raise UsageError(f"--backend {text!r}: name each backend once")
    return chosen


def _threads(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise UsageError(f"--threads {text[:20]!r}: expected an integer from 1 to 1024 (default: runtime.threads, "
                         "else all cores)")
    return int(text)


def _writable_dir(path: Path, flag: str) -> Path:
    """A directory we may create files in: created if missing; a file, or a place we cannot write, is refused."""
    if "\0" in str(path):
        raise UsageError(f"{flag} {str(path)!r}: a path cannot contain a NUL character")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the directory is not writable")
    return path


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other slimbench error."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _guard(fn):
    """Turn SlimbenchError into one line on stderr and its exit code: users never see our tracebacks
    (SLIMBENCH_DEBUG=1 shows them). An interrupted run exits 130 (Ctrl-C) or 143 (SIGTERM)."""
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return fn(argv)
        except SlimbenchError as e:
            if os.environ.get("SLIMBENCH_DEBUG"):
                raise
            print(f"error: {_one_line(str(e))}", file=sys.stderr)
            return e.exit_code
        except Terminated:  # the runner has already said how to resume
            return 143
        except KeyboardInterrupt:
            return 130
    return wrapped


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="default", help="smoke | default | paper (or any profile the recipe defines)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value, e.g. stages.distill.temperature=2 (repeatable)")
    p.add_argument("--seeds", type=str, default=None, help="comma-separated seeds, e.g. 0,1,2")


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs"), help="runs directory (default ./runs)")
    p.add_argument("--threads", type=_threads, default=None, help="CPU threads per backend (default: runtime.threads "
                   "from the recipe, else all cores)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local: workers one after another "
                   "on this machine (default); ray: each (backend, seed) worker as a Ray task")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="an existing Ray cluster (default with "
                   "--executor ray: a local Ray instance started and stopped for this command)")
    p.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI", help="log every run to "
                   "MLflow (default: a SQLite store, OUT/mlflow.db)")


def _check_executor_flags(a: argparse.Namespace) -> None:
    if a.ray_address and a.executor != "ray":
        raise UsageError("--ray-address needs --executor ray")


def _executor(a: argparse.Namespace):
    if a.executor == "ray":
        from common.run.ray_executor import RayExecutor
        return RayExecutor(a.ray_address)
    from common.run.runner import LocalExecutor
    return LocalExecutor()


def _finish(outcome, mlflow_uri: str | None) -> list[str]:
    """After a run: its report, one warning line per validity finding, MLflow; the run's failures."""
    from common.report.build import write_report
    report = write_report(outcome.run_dir)
    print(f"\nresults: {outcome.run_dir}/<backend>/seed-<n>/result.json\nreport:  {report}")
    _warn_validity(report.parent / "results.json")
    if mlflow_uri is not None:
        from common.run.tracking import log_run
        logged = log_run(outcome.run_dir, mlflow_uri)
        print(f"mlflow:  experiment '{logged['experiment']}' ({logged['experiment_id']}), {len(logged['runs'])} "
              f"run(s) under {logged['parent']} at {logged['uri']}")
    return outcome.failures


def _mlflow_uri(a: argparse.Namespace, out: Path) -> str | None:
    if a.mlflow is None:
        return None
    from common.run.tracking import default_uri
    return a.mlflow or default_uri(out)


def _exit(failures: list[str]) -> int:
    if failures:
        print("\nFAILED:\n" + "\n".join(f"  - {f}" for f in failures), file=sys.stderr)
        return 1
    return 0


@_guard
def run_recipe(argv: list[str] | None = None) -> int:
    p = _Parser(prog="run-recipe", description="Run a compression recipe on PyTorch and/or "
                                "PaddlePaddle and write comparable results and a report.")
    p.add_argument("recipe", nargs="*", help="built-in recipe name (see `slimbench list`) or path to a recipe .yaml; "
                   "several: a sweep, one run directory each")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", default=None,
                   help="finish an interrupted or failed run in place (completed stages are kept); "
                   "with --seeds, also run the seeds the run does not have yet")
    p.add_argument("--backend", default="all", help="torch | paddle | all (default)")
    _recipe_args(p)
    _executor_args(p)
    a = p.parse_args(argv)
    _check_executor_flags(a)
    from common.run.runner import resume_run
    if a.resume:
        if a.recipe or a.overrides or a.profile != "default":
            raise UsageError("--resume RUN_DIR takes the recipe and profile from the run itself: pass no recipe, "
                             "--profile or --set (--seeds adds seeds to the run)")
        from common.run.worker import load_run_recipe
        meta = read_run_meta(a.resume)
        check_capabilities(load_run_recipe(a.resume), meta["backends"])
        executor = _executor(a)
        try:
            outcome = resume_run(a.resume, _seeds(a.seeds) if a.seeds is not None else (), executor)
        finally:
            executor.close()
        return _exit(_finish(outcome, _mlflow_uri(a, a.resume.parent.parent)))
    if not a.recipe:
        raise UsageError("give a recipe (see `slimbench list`) or --resume RUN_DIR")
    from common.run.sweep import plan
    runs = plan(a.recipe, (a.profile,), (tuple(a.overrides),), _seeds(a.seeds) if a.seeds is not None else None)
    command = shlex.join(["run-recipe", *(argv if argv is not None else sys.argv[1:])])
    return _run_all(runs, _backends(a.backend), a, command)


def _run_all(runs: list, backends: list[str], a: argparse.Namespace, command: str) -> int:
    """Run one recipe, or a sweep of them, on the chosen executor; a report (and MLflow) per run."""
    from common.run.runner import run_recipe as run
    from common.run.sweep import run_sweep
    for item in runs:  # before anything trains: a stage a backend cannot run fails now
        check_capabilities(item.recipe, backends)
    out = _writable_dir(a.out, "--out")
    uri = _mlflow_uri(a, out)
    executor = _executor(a)

    def start(item) -> list[str]:
        threads = a.threads or item.recipe.runtime.threads or os.cpu_count() or 1
        return _finish(run(item.recipe, backends, out, command, threads, executor), uri)

    try:
        if len(runs) == 1:
            return _exit(start(runs[0]))
        outcomes = run_sweep(runs, start, concurrent=executor.name != "local")
    finally:
        executor.close()
    failures = [f for o, item in zip(outcomes, runs)
                for f in (o if isinstance(o, list) else [f"{item.label}: {type(o).__name__}: {o}"])]
    return _exit(failures)


def _refuse_contended(run_dir: Path, allowed: bool) -> None:
    """A published report is read as decision-grade: timings taken on a busy machine are not published unless
    the user says so."""
    from common.report.paired import load_report_results
    from common.report.validity import check_run
    busy = [f for f in check_run(run_dir, load_report_results(run_dir)[0]) if f.check == "contended"]
    if busy and not allowed:
        raise UsageError(f"{run_dir}: {len(busy)} timing(s) were taken under background load (e.g. "
                         f"{busy[0].message.replace('`', '')}); on a quiet machine, `run-recipe --resume {run_dir}` times again a "
                         "seed whose paired timing was contended (a contended training stage needs a new run), or "
                         "publish anyway with "
                         "--allow-contended (make reports FORCE=1)")


def _warn_validity(results_json: Path) -> None:
    """One line per failed validity check (as the report just wrote them to results.json): the rows they
    concern have no verdict in the report."""
    for f in read_json(results_json)["validity"]:
        print(f"warning: {' '.join(f['message'].replace('`', '').split())}", file=sys.stderr)


def _headline(desc: str, width: int = 90) -> str:
    """The part of a description before its first colon (recipes open with 'What: how ...'), else cut at a word."""
    head = desc.split(":", 1)[0]
    if len(head) <= width:
        return head
    return desc[:width].rsplit(" ", 1)[0] + " ..."


@_guard
def slimbench(argv: list[str] | None = None) -> int:
    p = _Parser(prog="slimbench", description="slimbench: compare model compression on "
                                "PyTorch and PaddlePaddle.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list built-in recipes")
    show = sub.add_parser("show", help="print a resolved recipe (profile and overrides applied)")
    show.add_argument("recipe")
    _recipe_args(show)
    rep = sub.add_parser("report", help="(re)build the report of a run directory from its result files")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--out", type=Path, default=None, help="write the report here (with a copy of the run's result "
                     "files, so it can be regenerated from there) instead of into the run directory")
    rep.add_argument("--allow-contended", action="store_true", help="publish (--out) even if timings were taken "
                     "under background load (their rows have no verdict either way)")
    cmp = sub.add_parser("compare", help="the same recipe run twice (two machines, two versions) side by side")
    cmp.add_argument("run_a", type=Path)
    cmp.add_argument("run_b", type=Path)
    cmp.add_argument("--out", type=Path, default=None, help="also write the comparison (Markdown) to this file")
    swp = sub.add_parser("sweep", help="run a grid of recipes x profiles x --set variants, one run directory each")
    swp.add_argument("grid", type=Path, help="the grid's YAML file (keys: recipes, profiles, variants, seeds, "
                     "backends; see common/run/sweep.py)")
    _executor_args(swp)
    wts = sub.add_parser("weights", help="published weights: `weights fetch ARCH` downloads torchvision's ImageNet "
                         "weights into a cache directory for models.<slot>.weights")
    wsub = wts.add_subparsers(dest="weights_command", required=True)
    fetch = wsub.add_parser("fetch", help="download torchvision's published ImageNet weights of ARCH")
    fetch.add_argument("arch", choices=FETCHABLE)
    fetch.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"cache directory (default {DEFAULT_DIR})")
    fetch.add_argument("--mirror", default=None, help="fetch the same file name from this base URL instead")
    a = p.parse_args(argv)
    if a.command == "sweep":
        _check_executor_flags(a)
        from common.run.sweep import plan, read_grid
        grid = read_grid(a.grid)
        runs = plan(list(grid.recipes), grid.profiles, grid.variants, grid.seeds)
        command = shlex.join(["slimbench", *(argv if argv is not None else sys.argv[1:])])
        return _run_all(runs, _backends(grid.backends), a, command)
    if a.command == "weights":
        path = fetch_weights(a.arch, a.dir, a.mirror)
        print(f"{path}\nuse it with: --set models.<slot>.weights={path}  (or `weights: {path}` in a recipe)")
        return 0
    if a.command == "list":
        names = builtin_recipes()
        width = max(map(len, names), default=0) + 2
        for name in names:
            recipe = load_recipe(name)
            print(f"{name:{width}s}{_headline(' '.join(recipe.description.split()))}")
        return 0
    if a.command == "show":
        recipe = load_recipe(a.recipe, a.profile, a.overrides, _seeds(a.seeds) if a.seeds is not None else None)
        print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
        return 0
    if a.command == "compare":
        from common.report.compare import compare_runs
        for run in (a.run_a, a.run_b):
            read_run_meta(run)
        if a.out is not None and (a.out.exists() or a.out.is_symlink()):
            raise UsageError(f"--out {a.out}: exists; slimbench never overwrites a file, choose a new name")
        if a.out is not None:
            _writable_dir(a.out.parent if str(a.out.parent) else Path("."), "--out (its folder)")
        text = compare_runs(a.run_a, a.run_b)
        print(text, end="")
        if a.out:
            atomic_write_text(a.out, text)
        return 0
    from common.report.build import write_report
    read_run_meta(a.run_dir)
    if a.out:
        check_publish_target(a.run_dir, a.out)
        _refuse_contended(a.run_dir, a.allow_contended)
        _writable_dir(a.out, "--out")
    print(write_report(a.run_dir, a.out))
    return 0


def run_recipe_main() -> None:
    sys.exit(run_recipe())


def slimbench_main() -> None:
    sys.exit(slimbench())
