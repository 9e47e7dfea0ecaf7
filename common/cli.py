"""Command-line entry points: `run-recipe` and `slimbench {list,show,report}`."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import yaml

from common.errors import SlimbenchError, UsageError
from common.recipe import BACKENDS, builtin_recipes, load_recipe, recipe_to_dict


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise UsageError("--seeds: expected at least one seed")
    return seeds


def _backends(text: str) -> list[str]:
    if text == "all":
        return list(BACKENDS)
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in chosen if b not in BACKENDS]
    if bad or not chosen:
        raise UsageError(f"--backend {text!r}: expected torch, paddle, all, or a comma-separated list of those")
    return chosen


def _guard(fn):
    """Turn SlimbenchError into one line on stderr and its exit code: users never see our tracebacks."""
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return fn(argv)
        except SlimbenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:  # the runner has already said how to resume
            return 130
    return wrapped


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="default", help="smoke | default | paper (or any profile the recipe defines)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value, e.g. stages.distill.temperature=2 (repeatable)")
    p.add_argument("--seeds", type=str, default=None, help="comma-separated seeds, e.g. 0,1,2")


@_guard
def run_recipe(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run-recipe", description="Run a compression recipe on PyTorch and/or "
                                "PaddlePaddle and write comparable results and a report.")
    p.add_argument("recipe", nargs="?", help="built-in recipe name (see `slimbench list`) or path to a recipe .yaml")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", default=None,
                   help="finish an interrupted or failed run in place (completed stages are kept); "
                   "with --seeds, also run the seeds the run does not have yet")
    p.add_argument("--backend", default="all", help="torch | paddle | all (default)")
    _recipe_args(p)
    p.add_argument("--out", type=Path, default=Path("runs"), help="runs directory (default ./runs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per backend (default: runtime.threads "
                   "from the recipe, else all cores)")
    a = p.parse_args(argv)
    from common.report import write_report
    from common.runner import resume_run, run_recipe as run
    if a.resume:
        if a.recipe or a.overrides or a.profile != "default":
            raise UsageError("--resume RUN_DIR takes the recipe and profile from the run itself: pass no recipe, "
                             "--profile or --set (--seeds adds seeds to the run)")
        if not (a.resume / "run.json").is_file():
            raise UsageError(f"{a.resume} is not a run directory (no run.json): pass runs/<recipe>/<run-id>")
        outcome = resume_run(a.resume, _seeds(a.seeds) if a.seeds else ())
    else:
        if not a.recipe:
            raise UsageError("give a recipe (see `slimbench list`) or --resume RUN_DIR")
        backends = _backends(a.backend)
        recipe = load_recipe(a.recipe, a.profile, a.overrides, _seeds(a.seeds) if a.seeds else None)
        threads = a.threads or recipe.runtime.threads or os.cpu_count() or 1
        command = shlex.join(["run-recipe", *(argv if argv is not None else sys.argv[1:])])
        outcome = run(recipe, backends, a.out, command, threads)
    report = write_report(outcome.run_dir)
    print(f"\nresults: {outcome.run_dir}/<backend>/seed-<n>/result.json\nreport:  {report}")
    if outcome.failures:
        print("\nFAILED:\n" + "\n".join(f"  - {f}" for f in outcome.failures), file=sys.stderr)
        return 1
    return 0


@_guard
def _headline(desc: str, width: int = 90) -> str:
    """The part of a description before its first colon (recipes open with 'What: how ...'), else cut at a word."""
    head = desc.split(":", 1)[0]
    if len(head) <= width:
        return head
    return desc[:width].rsplit(" ", 1)[0] + " ..."


def slimbench(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slimbench", description="slimbench: compare model compression on "
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
    cmp = sub.add_parser("compare", help="the same recipe run twice (two machines, two versions) side by side")
    cmp.add_argument("run_a", type=Path)
    cmp.add_argument("run_b", type=Path)
    cmp.add_argument("--out", type=Path, default=None, help="also write the comparison (Markdown) to this file")
    a = p.parse_args(argv)
    if a.command == "list":
        for name, path in builtin_recipes().items():
            desc = " ".join(str((yaml.safe_load(path.read_text()) or {}).get("description", "")).split())
            print(f"{name:30s} {_headline(desc)}")
        return 0
    if a.command == "show":
        recipe = load_recipe(a.recipe, a.profile, a.overrides, _seeds(a.seeds) if a.seeds else None)
        print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
        return 0
    if a.command == "compare":
        from common.compare import compare_runs
        text = compare_runs(a.run_a, a.run_b)
        print(text, end="")
        if a.out:
            a.out.write_text(text)
        return 0
    from common.report import write_report
    if not (a.run_dir / "run.json").is_file():
        raise UsageError(f"{a.run_dir} is not a run directory (no run.json): pass runs/<recipe>/<run-id>")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    print(write_report(a.run_dir, a.out))
    return 0


def run_recipe_main() -> None:
    sys.exit(run_recipe())


def slimbench_main() -> None:
    sys.exit(slimbench())
