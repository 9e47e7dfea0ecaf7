"""What a stage type is, and the one registry the recipe, the worker, the report, the decision summary and
the plots ask instead of switching on type names (docs/ARCHITECTURE.md, "Adding a stage type").

A stage type is one module under common/stages/: its config dataclass, its executor, and what it contributes
to the report. Every hook has a do-nothing default, so a type implements only what it has.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from common.errors import RecipeError

if TYPE_CHECKING:  # runtime imports would be circular: the loop imports backends, which import configs
    from common.stages.loop import RunContext

# Report sections come in this order, whatever the registration order.
SECTION_ORDER = ("distill", "evaluate", "export", "prune", "quantize")


@dataclass(frozen=True)
class Stage:
    """One pipeline step of a recipe: its type name and its validated config."""
    type: str
    config: Any

    @property
    def name(self) -> str:
        return self.config.name


class OneModelSlots:
    """Slot bookkeeping for stages that read `model` and write `output` (default: the same slot)."""
    model: str
    output: str | None

    def outputs(self) -> tuple[str, ...]:
        return (self.output or self.model,)

    def inputs(self) -> tuple[str, ...]:
        return (self.model,)

    def derived_from(self) -> dict[str, str]:
        """output slot -> the input slot whose architecture it has."""
        return {self.output or self.model: self.model}


class ModelsSlots:
    """Slot bookkeeping for stages that read the slots in `models` and write none (evaluate, export)."""
    models: tuple[str, ...]

    def outputs(self) -> tuple[str, ...]:
        return ()

    def inputs(self) -> tuple[str, ...]:
        return self.models

    def derived_from(self) -> dict[str, str]:
        return {}


@dataclass
class SlotState:
    """What validation knows about each model slot while it walks the stages in order."""
    slots: set[str]
    trained: set[str] = field(default_factory=set)  # weights some stage trained (or derived from such weights)
    int8: set[str] = field(default_factory=set)  # int8 slots from a quantize stage: only `evaluate` reads them
    masked: set[str] = field(default_factory=set)  # unstructured pruning masks, kept through later training
    archs: dict[str, str] = field(default_factory=dict)  # slot -> architecture name (derived slots inherit it)


# A metric factory: metric(group, what, unit, higher_is_better, scale=1.0, digits=2, runtime_kind=None)
# -> common.report.decision.Metric
MetricFactory = Callable[..., Any]
# A CSV row sink: add(result, stage name, model slot, metric name, value)
RowSink = Callable[[dict, str, str, str, Any], None]


class StageType:
    """Base of every stage type; subclasses set `name` and `config` and override the hooks they need."""
    name: str = ""
    config: type = object
    reads_int8 = False  # may read int8 slots (only evaluate: an int8 model is its deployed artifact)

    # --- recipe validation -------------------------------------------------------------------------------
    def check(self, cfg: Any, state: SlotState, source: str, path: str) -> None:
        """Rules of this type beyond the schema (settings that depend on each other, what its inputs must be)."""

    def update(self, cfg: Any, state: SlotState) -> None:
        """Record what this stage makes of its output slots (trained, int8, masked) once it validated."""
        for out_slot, in_slot in cfg.derived_from().items():
            (state.masked.add if in_slot in state.masked else state.masked.discard)(out_slot)
            if in_slot in state.archs:
                state.archs[out_slot] = state.archs[in_slot]

    # --- running -----------------------------------------------------------------------------------------
    def run(self, ctx: "RunContext", stage: Stage) -> dict[str, Any]:
        raise NotImplementedError(f"stage type '{self.name}' has no executor")

    def preflight(self, ctx: "RunContext", stage: Stage) -> None:
        """Checks that need the built models (layer shapes), run in the worker before the first stage trains."""

    def reopen(self, ctx: "RunContext", stage: Stage, record: dict, out_dir: Path) -> bool:
        """On resume, restore the outputs of a completed stage that are not plain checkpoints; True if done."""
        return False

    # --- reporting (from result records only) --------------------------------------------------------------
    def metrics(self, metric: MetricFactory, backend: str, seed: int, result: dict, record: dict) -> None:
        """Add this stage's comparable quantities to the decision summary."""

    def csv_rows(self, add: RowSink, result: dict, record: dict) -> None:
        """One row per number this stage recorded (results.csv / results.json)."""

    def training_runs(self, record: dict) -> list[tuple[str, dict]]:
        """(table name, record with epochs/steps/train_time_s/time_per_step_s/final/history) of training done."""
        return []

    def section(self, ix: Any, run_dir: Path, meta: dict) -> str:
        """This stage type's part of report.md."""
        return ""

    def parent_rows(self, ix: Any, run_dir: Path, backend: str) -> list[list[Any]]:
        """Rows of 'What compression changed': [backend, seed, 'parent → compressed', how, comparison]."""
        return []

    def histories(self, record: dict) -> list[list[dict]]:
        """Per-epoch histories this stage trained through (the training-curves figure)."""
        return [run["history"] for _, run in self.training_runs(record) if run.get("history")]

    def timings(self, record: dict) -> list[tuple[str, str, str, dict | None]]:
        """(decision group, subject, what, load record) of every timed window the stage recorded: the validity
        checks flag those taken under background load (common/load.py)."""
        return [("training time", record["name"], f"`{record['name']}`'s training", run.get("load"))
                for _, run in self.training_runs(record)]

    def conversions(self, record: dict) -> list[tuple[str, str, float, float]]:
        """(model slot, runtime, artifact top-1, converted file's top-1) of every file the stage converted to
        another runtime and evaluated: the validity checks flag a conversion that changed what the model computes."""
        return []

    def timed_artifacts(self, record: dict) -> list[tuple[str, dict, str]]:
        """(key, artifact record, 'fp32' or 'int8') of every artifact whose latency this stage measured; the
        artifact record has format, files, entry, extra, runtime and latency. The paired timing phase
        (common/run/paired_timing.py) times each again; the report swaps in those latencies."""
        return []

    def retimed(self, record: dict) -> None:
        """Recompute what this stage derived from its latencies once the report swapped in the paired ones."""

    def figures(self, results: list[dict], backends: list[str]) -> list[Any]:
        """Figures (common.report.plots.Figure) only this stage type can draw."""
        return []

    def how_note(self, who: str, record: dict) -> str | None:
        """'How each framework did it': the tool or workaround behind this stage on one backend."""
        return None


_REGISTRY: dict[str, StageType] = {}
BUILTIN = ("train", "distill", "prune", "quantize", "evaluate", "export")


def register(stage_type: StageType) -> StageType:
    """Make a stage type available to recipes, runs and reports (its module calls this at import)."""
    _REGISTRY[stage_type.name] = stage_type
    return stage_type


def stage_types() -> dict[str, StageType]:
    """Every registered stage type; the built-in modules are imported on first use."""
    for name in BUILTIN:
        if name not in _REGISTRY:
            importlib.import_module(f"common.stages.{name}")
    # Built-in types in BUILTIN order whatever imported first (report rows and figures follow this order),
    # then any other registered type in registration order.
    return {**{n: _REGISTRY[n] for n in BUILTIN}, **{n: t for n, t in _REGISTRY.items() if n not in BUILTIN}}


def stage_type(name: str) -> StageType | None:
    """The registered type of a stage record (None for a type this slimbench does not know)."""
    return stage_types().get(name)


def finished_stages(results: list[dict]) -> Iterator[tuple[dict, dict, StageType]]:
    """(result, stage record, its stage type) of every stage that finished in these results, in order: what the
    report's parts ask each stage type about (a stage of an unknown type is skipped)."""
    for r in results:
        for st in r.get("stages", []):
            kind = stage_type(st["type"])
            if st.get("status") == "ok" and kind is not None:
                yield r, st, kind


def in_section_order() -> list[StageType]:
    types = stage_types()
    return [types[n] for n in SECTION_ORDER if n in types] + [t for n, t in types.items() if n not in SECTION_ORDER]


def check_refs(cfg: Any, stype: str, state: SlotState, source: str, path: str) -> None:
    """Every model a stage reads exists by then, and int8 slots are read only by types that may."""
    for fname in ("model", "teacher", "student", "models"):
        refs = getattr(cfg, fname, None)
        for j, ref in enumerate((refs,) if isinstance(refs, str) else (refs or ())):
            key = f"{path}.{fname}" + (f"[{j}]" if fname == "models" else "")
            if ref not in state.slots:
                raise RecipeError(source, key, f"a model defined in `models` or produced by an earlier stage "
                                  f"({', '.join(sorted(state.slots))})", ref)
            if ref in state.int8 and not stage_types()[stype].reads_int8:
                what = ("the quantize stage already exports and measures it" if stype == "export"
                        else "int8 models cannot be trained, pruned or quantized again")
                raise RecipeError(source, f"{path}.{fname}", f"an fp32 model: '{ref}' is an int8 model from a "
                                  f"quantize stage and only `evaluate` can use it ({what})", ref)
