"""Sweeps: several recipes, or a small grid of them, in one command; one run directory per run.

`run-recipe R1 R2 ...` runs each recipe as it would run alone; `slimbench sweep GRID.yaml` expands a grid:

    recipes: [kd_resnet50_mobilenet, quant_ptq_resnet50]
    profiles: [smoke]                    # default: [default]
    seeds: [0, 1, 2]                     # default: each recipe's own
    backends: all                        # torch | paddle | all
    variants:                            # default: one variant without overrides
      - []
      - ["stages.distill.temperature=2"]

into recipes x profiles x variants runs (each variant a list of `--set` overrides; a variant that does not
apply to a recipe is that run's one-line error before anything starts). Every run is validated before the
first one starts. The local executor runs them one after another; the Ray executor runs them at once, each
run on one node (common/run/ray_executor.py), so the timings inside a run stay comparable.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from common.errors import RecipeError, UsageError
from common.progress import fmt_duration
from common.recipe.loader import Recipe, load_recipe, yaml_load
from common.schema import bounds, parse


@dataclass(frozen=True)
class SweepGrid:
    recipes: tuple[str, ...] = field(metadata={"nonempty": True})
    profiles: tuple[str, ...] = field(default=("default",), metadata={"nonempty": True})
    variants: tuple[tuple[str, ...], ...] = field(default=((),), metadata={"nonempty": True})
    seeds: tuple[int, ...] | None = field(default=None, metadata={"nonempty": True, **bounds(ge=0, lt=2**31)})
    backends: Literal["torch", "paddle", "all"] = "all"


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its validated recipe and how the console names it."""
    recipe: Recipe
    label: str


def read_grid(path: Path) -> SweepGrid:
    source = path.name
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read sweep grid {path}: {e}") from None
    except Exception as e:  # YAML syntax: one line naming the file
        raise RecipeError(source, "", "valid YAML", str(e).splitlines()[0][:120]) from None
    return parse(SweepGrid, data, source, "")


def plan(names: list[str], profiles: tuple[str, ...] = ("default",), variants: tuple[tuple[str, ...], ...] = ((),),
         seeds: tuple[int, ...] | None = None) -> list[SweepRun]:
    """Every run of the sweep, validated now: a bad recipe, profile or override stops the sweep before it starts."""
    runs = []
    for name in names:
        for profile in profiles:
            for variant in variants:
                recipe = load_recipe(name, profile, list(variant), seeds)
                label = " ".join([recipe.name] + ([f"({profile})"] if profile != "default" else [])
                                 + [f"--set {v}" for v in variant])
                runs.append(SweepRun(recipe, label))
    return runs


def run_sweep(runs: list[SweepRun], start: Callable[[SweepRun], Any], concurrent: bool) -> list[Any]:
    """Start every run (`start` runs one to its end and returns its outcome), at once or one after another, with
    progress for the whole sweep; a run that raises is reported and the others go on."""
    total, t0, done, lock = len(runs), time.time(), [0], threading.Lock()

    def one(i: int, run: SweepRun) -> Any:
        print(f"sweep: run {i + 1}/{total} starts: {run.label}", flush=True)
        try:
            return start(run)
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others; reported here
            print(f"sweep: run {i + 1}/{total} ({run.label}) failed: {type(e).__name__}: {e}", flush=True)
            return e
        finally:
            with lock:
                done[0] += 1
                print(f"sweep: {done[0]}/{total} runs finished ({fmt_duration(time.time() - t0)} elapsed)",
                      flush=True)

    if concurrent and total > 1:
        with ThreadPoolExecutor(max_workers=total) as pool:
            return list(pool.map(lambda args: one(*args), enumerate(runs)))
    return [one(i, run) for i, run in enumerate(runs)]
