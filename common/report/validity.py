"""Can these numbers carry a verdict? Checks computed from a run's result files only.

A comparison between frameworks means something only if the models learned (above chance, predictions not
collapsed onto a few classes), training reached a plateau, the validation split covers every class with enough
samples, the initial-weight parity check compared outputs that could have differed, and there are enough seeds.
Each failed check is a Finding; the decision summary gives no verdict to a row a finding applies to and says
why, the report lists them at the top, results.json carries them, and the console prints one line each.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import onnx_runtime
from common.backend_names import title
from common.config import DATASET_CLASSES

MIN_SEEDS = 3  # a Student-t interval over fewer paired seeds is too wide (t(1) = 12.7) to separate frameworks
CHANCE_MARGIN = 0.05  # top-1 within 5 points of 1/num_classes counts as chance
COLLAPSE_SHARE = 0.5  # one predicted class holding half the validation samples (with >= 4 classes)
PLATEAU_GAIN = 0.01  # validation top-1 still rising by a point over the last epoch: not converged
MIN_CLASS_SAMPLES = 10  # a validation class with fewer images gives its per-class accuracy in steps of >10 points
DEGENERATE_LOGITS = 1e-3  # largest |logit| of the parity probe below this: the check compared near-zero numbers
CONVERSION_TOP1 = 0.05  # a converted file (ONNX) more than 5 points of top-1 off its artifact computes another model


@dataclass(frozen=True)
class Finding:
    check: str  # chance | collapsed | not_converged | split | parity | conversion | seeds | contended | load_unknown
    #             | machines
    subject: str  # the model slot or stage it concerns; "" for the whole run
    message: str  # one line a team can act on
    backend: str | None = None
    short: str = ""  # what a decision row says after "no verdict: "
    groups: tuple[str, ...] = ()  # the decision-row groups it withholds; empty: as its check decides
    rows: str = ""  # only decision rows whose text contains this (e.g. "on ONNX Runtime"); empty: all of them

    def __post_init__(self) -> None:
        if not self.short:
            object.__setattr__(self, "short", _SHORT[self.check](self))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_SHORT = {
    "seeds": lambda f: f.message.split(":")[0],
    "split": lambda f: "thin validation split",
    "parity": lambda f: f"same start of `{f.subject}` not shown (degenerate parity check)",
    "chance": lambda f: f"`{f.subject}` at chance" + (f" on {title(f.backend)}" if f.backend else ""),
    "collapsed": lambda f: f"`{f.subject}` predictions collapsed" + (f" on {title(f.backend)}" if f.backend else ""),
    "not_converged": lambda f: f"`{f.subject}` not converged",
    "contended": lambda f: "timed under background load" + (f" on {title(f.backend)}" if f.backend else ""),
    "load_unknown": lambda f: "background load not recorded",
    "machines": lambda f: "timed on several machines",
    "conversion": lambda f: f"`{f.subject}`'s converted file does not compute what its artifact does"
                            + (f" on {title(f.backend)}" if f.backend else ""),
}


def prediction_path(run_dir: Path, r: dict, slot: str) -> Path | None:
    """The validation predictions one result's evaluate stage saved for a model slot, if they are on disk."""
    for st in r.get("stages", []):
        if st.get("type") == "evaluate" and st.get("status") == "ok":
            rel = (st.get("models", {}).get(slot) or {}).get("predictions")
            path = run_dir / r["backend"] / f"seed-{r['seed']}" / rel if rel else None
            if path is not None and path.is_file():
                return path
    return None


def num_classes(run_dir: Path, results: list[dict]) -> int | None:
    """Recorded class count, else the dataset's known count, else the largest saved label + 1."""
    for r in results:
        k = (r.get("data") or {}).get("num_classes")
        if isinstance(k, int):
            return k
    for r in results:
        k = DATASET_CLASSES.get((r.get("data") or {}).get("dataset", ""))
        if k:
            return k
    for r in results:
        for st in r.get("stages", []):
            for slot in (st.get("models") or {}) if st.get("type") == "evaluate" else ():
                path = prediction_path(run_dir, r, slot)
                if path is not None:
                    return int(np.load(path)["label"].max()) + 1
    return None


def _model_findings(run_dir: Path, results: list[dict], k: int | None) -> list[Finding]:
    """Evaluated models at chance or with collapsed predictions, per backend (worst seed named)."""
    out: dict[tuple[str, str, str], Finding] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        for st in r.get("stages", []):
            if st.get("type") != "evaluate" or st.get("status") != "ok":
                continue
            for slot, m in st.get("models", {}).items():
                who = title(r["backend"])
                if k and m["top1"] < 1 / k + CHANCE_MARGIN:
                    out.setdefault(("chance", slot, r["backend"]), Finding(
                        "chance", slot, f"`{slot}` at chance level on {who} (seed {r['seed']}: top-1 "
                        f"{m['top1'] * 100:.1f}%, chance {100 / k:.1f}%)", r["backend"]))
                path = prediction_path(run_dir, r, slot)
                if path is None or not k or k < 4:
                    continue
                pred = np.load(path)["pred"]
                share = np.bincount(pred, minlength=k).max() / max(len(pred), 1)
                if share >= COLLAPSE_SHARE:
                    out.setdefault(("collapsed", slot, r["backend"]), Finding(
                        "collapsed", slot, f"`{slot}` predictions collapse on {who} (seed {r['seed']}: "
                        f"{share * 100:.0f}% of validation images get one class)", r["backend"]))
    return list(out.values())


def training_records(record: dict) -> list[tuple[str, dict]]:
    """(model slot, record with history) for the training a stage record shows."""
    if record.get("history"):
        return [(record.get("model", ""), record)]
    qat = record.get("qat") or {}
    return [(record.get("model", ""), qat)] if qat.get("history") else []


def _convergence_findings(results: list[dict]) -> list[Finding]:
    """A training stage still improving at its end, or too short to show a plateau."""
    out: dict[tuple[str, str], Finding] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        for st in r.get("stages", []):
            if st.get("status") != "ok":
                continue
            for slot, rec in training_records(st):
                hist = rec["history"]
                key = (st["name"], r["backend"])
                who = title(r["backend"])
                if len(hist) < 2:
                    out.setdefault(key, Finding("not_converged", slot, f"`{st['name']}` trained "
                                   f"{len(hist)} epoch on {who}: no plateau shown (validation top-1 after each epoch "
                                   "is all there is to judge convergence by)", r["backend"],
                                   short=f"`{st['name']}` trained one epoch, no plateau shown"))
                    continue
                gain = hist[-1]["val_top1"] - hist[-2]["val_top1"]
                if gain >= PLATEAU_GAIN:
                    mixed = _recalibration_caveat(rec)
                    out.setdefault(key, Finding("not_converged", slot, f"`{st['name']}` still improving at its end "
                                   f"on {who} (seed {r['seed']}: validation top-1 +{gain * 100:.1f} points over the "
                                   f"last epoch{mixed})", r["backend"], short=f"`{st['name']}` not converged"))
    return list(out.values())


def _recalibration_caveat(rec: dict[str, Any]) -> str:
    """What the result files say about how comparable the last two epochs' top-1 were (older results)."""
    if not rec.get("bn_recalibration_batches"):
        return ""
    if not rec.get("bn_recalibrated_every_epoch"):  # only the last epoch's statistics were recalibrated
        return ("; only that epoch was evaluated on recalibrated batch-norm statistics, the earlier ones on EMA "
                "statistics, so the rise may be the recalibration and a plateau is not shown")
    if rec.get("bn_recalibration_draw") != "fixed":  # each epoch recalibrated on the next epoch's first batches
        return ("; each epoch's batch-norm statistics came from a different draw of training batches, which alone "
                "moves top-1 by up to 1.7 points on digits (benchmarks/bn_recalibration_noise.py)")
    return ""


def _split_findings(run_dir: Path, results: list[dict], k: int | None) -> list[Finding]:
    """A validation split that misses classes or has classes with very few images."""
    for r in results:
        train = (r.get("data") or {}).get("train_class_counts")
        if train and any(c == 0 for c in train):
            absent = [i for i, c in enumerate(train) if c == 0]
            return [Finding("split", "", f"the training split has no images of class(es) "
                            f"{', '.join(map(str, absent[:8]))}: no model can learn them")]
    for r in results:
        counts = (r.get("data") or {}).get("val_class_counts")
        if counts is None:
            for st in r.get("stages", []):
                for slot in (st.get("models") or {}) if st.get("type") == "evaluate" else ():
                    path = prediction_path(run_dir, r, slot)
                    if path is not None:
                        counts = np.bincount(np.load(path)["label"], minlength=k or 0).tolist()
                        break
                if counts is not None:
                    break
        if counts is None:
            continue
        missing = [i for i, c in enumerate(counts) if c == 0]
        few = [i for i, c in enumerate(counts) if 0 < c < MIN_CLASS_SAMPLES]
        if missing:
            return [Finding("split", "", f"the validation split has no images of class(es) "
                            f"{', '.join(map(str, missing[:8]))}: accuracy ignores them")]
        if few:
            return [Finding("split", "", f"the validation split has fewer than {MIN_CLASS_SAMPLES} images of "
                            f"class(es) {', '.join(map(str, few[:8]))} (smallest: {min(counts)}): per-class "
                            "results move in big steps")]
        return []
    return []


def _parity_findings(results: list[dict]) -> list[Finding]:
    """Initial-weight parity measured on logits too small to differ (e.g. MobileNetV3 at initialisation)."""
    out: dict[str, Finding] = {}
    for r in results:
        for slot, p in (r.get("init_parity") or {}).items():
            scale = p.get("ref_scale")
            if scale is None and p.get("max_rel"):
                scale = p["max_abs"] / p["max_rel"]
            if scale is not None and scale < DEGENERATE_LOGITS:
                out.setdefault(slot, Finding("parity", slot, f"initial-weight parity of `{slot}` compared logits "
                               f"of magnitude {scale:.1e}: a check that cannot fail, so the same start is not shown"))
    return list(out.values())


def _seed_findings(results: list[dict]) -> list[Finding]:
    seeds = sorted({r["seed"] for r in results if r.get("status") == "ok"})
    if len(seeds) >= MIN_SEEDS:
        return []
    return [Finding("seeds", "", f"{len(seeds)} seed(s): a verdict needs at least {MIN_SEEDS} (run with --seeds "
                    "0,1,2 or `run-recipe --resume RUN --seeds 0,1,2`)")]


def _machine_findings(results: list[dict]) -> list[Finding]:
    """Timings are compared only when one machine took them all: results from several hosts (or CPU models), as a
    Ray executor can produce, withhold every timing verdict of the run."""
    from common.stages.registry import finished_stages
    where = {((r.get("environment") or {}).get("host"), ((r.get("environment") or {}).get("cpu") or {}).get("model"))
             for r in results if r.get("status") == "ok"}
    if len(where) < 2:
        return []
    groups = sorted({group for _, st, kind in finished_stages(results) for group, *_ in kind.timings(st)})
    names = ", ".join(f"{h or '?'} ({c or '?'})" for h, c in sorted(where, key=str))
    return [Finding("machines", "", f"the runs were timed on {len(where)} machines ({names}): timings taken on "
                    "different machines are not compared", groups=tuple(groups))]


def _load_findings(results: list[dict]) -> list[Finding]:
    """Timings taken while other processes used the CPU (common/load.py): latency of a model, a stage's training."""
    out: dict[tuple[str, str, str], Finding] = {}

    def flag(group: str, subject: str, what: str, load: dict | None, r: dict) -> None:
        if load and load.get("contended"):
            out.setdefault((group, subject, r["backend"]), Finding(
                "contended", subject, f"{what} on {title(r['backend'])} was timed while other processes used "
                f"{load['background_cores']:.2f} cores (seed {r['seed']}; above {load['threshold_cores']} core)",
                r["backend"], groups=(group,)))

    from common.stages.registry import finished_stages
    unmeasured: dict[str, int] = {}
    for r, st, kind in finished_stages(results):
        for group, subject, what, load in kind.timings(st):
            if not load or load.get("background_cores") is None:
                unmeasured[group] = unmeasured.get(group, 0) + 1
            flag(group, subject, what, load, r)
    found = list(out.values())
    if unmeasured:  # a quiet machine that cannot be shown is not a quiet machine
        n = sum(unmeasured.values())
        found.append(Finding("load_unknown", "", f"background load was not recorded for {n} timing(s) (results "
                             "from before slimbench measured it, or no /proc/stat): a quiet machine is not shown",
                             groups=tuple(sorted(unmeasured)), short="background load not recorded"))
    return found


def _conversion_findings(results: list[dict]) -> list[Finding]:
    """A file converted to another runtime (ONNX) whose validation top-1 is far from its own artifact's: the
    converter changed the model, or the artifact's own runtime computes it less exactly (oneDNN int8), so its rows
    on that runtime compare another computation, not a framework."""
    from common.stages.registry import finished_stages
    worst: dict[tuple[str, str, str], tuple[float, dict, float, float]] = {}
    for r, st, kind in finished_stages(results):
        for slot, runtime, own, converted in kind.conversions(st):
            gap = abs(own - converted)
            key = (slot, runtime, r["backend"])
            if gap > CONVERSION_TOP1 and gap > worst.get(key, (0.0,))[0]:
                worst[key] = (gap, r, own, converted)
    def rows(runtime: str) -> str:  # "ONNX Runtime 1.32.0 (...)" -> "on ONNX Runtime", as the decision rows say
        return onnx_runtime.ON if runtime.startswith("ONNX Runtime") else "on " + runtime.split(" (")[0]
    def cause(own: float, converted: float) -> str:  # which side lost accuracy; either way not the same model
        return ("the converter changed the model" if converted < own else
                "the artifact's own runtime loses accuracy the converted file does not")
    return [Finding("conversion", slot, f"`{slot}` converted for {runtime.split(' (')[0]} on {title(b)} scores "
                    f"{converted * 100:.1f}% top-1 against its artifact's {own * 100:.1f}% (seed {r['seed']}): "
                    f"{cause(own, converted)}, so its rows {rows(runtime)} compare another computation, not the "
                    "frameworks", b, rows=rows(runtime))
            for (slot, runtime, b), (_, r, own, converted) in worst.items()]


def check_run(run_dir: Path, results: list[dict]) -> list[Finding]:
    """Every failed validity check of a run, in the order the report lists them."""
    k = num_classes(run_dir, results)
    return (_seed_findings(results) + _split_findings(run_dir, results, k) + _parity_findings(results)
            + _model_findings(run_dir, results, k) + _convergence_findings(results) + _conversion_findings(results)
            + _load_findings(results)
            + _machine_findings(results))


def lineage(meta: dict) -> dict[str, set[str]]:
    """slot -> every slot it was made from (itself included), from the recipe recorded in run.json: each stage's
    config says which output it derives from which input (`derived_from`)."""
    from common.errors import RecipeError
    from common.schema import parse
    from common.stages.registry import stage_types
    parents: dict[str, set[str]] = {}
    types = stage_types()
    for i, item in enumerate((meta.get("recipe") or {}).get("stages", [])):
        if not isinstance(item, dict) or len(item) != 1:
            continue
        (stype, body), = item.items()
        if stype not in types:
            continue
        try:
            cfg = parse(types[stype].config, body, "run.json", f"recipe.stages[{i}].{stype}")
        except RecipeError:  # a stage recorded by another slimbench version: no lineage from it
            continue
        for out, src in cfg.derived_from().items():
            parents.setdefault(out, set()).add(src)
    def ancestors(slot: str, seen: frozenset = frozenset()) -> set[str]:
        if slot in seen:
            return {slot}
        found = {slot}
        for p in parents.get(slot, ()):
            found |= ancestors(p, seen | {slot})
        return found
    slots = set(parents) | {p for ps in parents.values() for p in ps}
    return {s: ancestors(s) for s in slots}


def blocking_reason(findings: list[Finding], group: str, subject: str | None,
                    family: dict[str, set[str]], what: str = "") -> str | None:
    """Why a decision row (metric group, its model slot or stage) gets no verdict, or None if it may have one.

    Run-wide findings (seeds) block every row; a split finding blocks accuracy rows; a model's findings block
    every row of that model and of the models made from it; training-time rows are timing only."""
    related = family.get(subject or "", {subject} if subject else set())
    for f in findings:
        if f.rows and f.rows not in what:
            continue
        if f.groups:  # scoped to its own rows (timings of one model or stage; every timing where subject is "")
            if group in f.groups and f.subject in ("", subject):
                return f.short
            continue
        if f.check == "seeds":
            return f.short
        if f.check == "split" and group == "accuracy":
            return f.short
        if group != "training time" and f.subject and f.subject in related:
            return f.short
    return None


def blocker(findings: list[Finding], family: dict[str, set[str]]):
    """The decision summary's Blocker for these findings and slot lineage: metric -> why it gets no verdict."""
    from common.report.decision import subject
    return lambda m: blocking_reason(findings, m.group, subject(m), family, m.what)


def validity_section(findings: list[Finding]) -> str:
    """The report's first section: what stops a verdict, one line per failed check."""
    if not findings:
        return ("## Validity checks\n\nAll passed: every evaluated model is above chance with predictions spread over "
                "the classes, every training stage ended on a plateau, the validation split covers every class, "
                f"initial-weight parity compared non-degenerate outputs, and there are at least {MIN_SEEDS} seeds.\n\n")
    return ("## Validity checks\n\nRows these findings concern get **no verdict** in the decision summary (and are "
            "not counted in its headline):\n\n" + "".join(f"- {f.message}\n" for f in findings) + "\n")
