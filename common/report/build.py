"""Comparison report built from result files only, so it can be regenerated later from the same runs.

Writes report.md plus results.csv / results.json (one row per backend, seed, stage, model, metric).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.backend_names import title
from common.report.decision import collect_metrics, summary_records
from common.report.markdown_table import table
from common.report.html import render_html
from common.report.plots import Figure, report_figures
from common.report.summary import decision_section, reproducibility_section
from common.errors import RunFilesError
from common.report.index import ReportIndex, fmt_values
from common.report.paired import load_report_results, timing_note
from common.results import atomic_write_bytes, atomic_write_text, read_json, timing_round_files
from common.stages.export import deployment_runtimes
from common.stages.registry import in_section_order, stage_type, stage_types
from common.report.validity import blocker, validity_section
from common.sysinfo import cpu_description

PLOTS_DIR = "plots"


def flat_rows(results: list[dict]) -> list[dict[str, Any]]:
    """One row per (backend, seed, stage, model, metric): the CSV/JSON form of a run."""
    rows = []

    def add(r: dict, stage: str, model: str, metric: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"backend": r["backend"], "seed": r["seed"], "stage": stage, "model": model,
                         "metric": metric, "value": value})

    for r in results:
        for slot, p in (r.get("init_parity") or {}).items():
            add(r, "init", slot, "parity_max_abs", p["max_abs"])
            add(r, "init", slot, "parity_max_rel", p["max_rel"])
        for st in r.get("stages", []):
            kind = stage_type(st["type"])
            if st.get("status") == "ok" and kind is not None:
                kind.csv_rows(add, r, st)
    return rows


def _figures_section(figures: list[Figure]) -> str:
    if not figures:
        return ""
    out = ["## Plots\n\n"]
    for f in figures:
        out.append(f"**{f.title}.** {f.caption}\n\n![{f.title}]({PLOTS_DIR}/{f.name}.png)\n\n")
    return "".join(out)


def build_markdown(run_dir: Path, results: list[dict], meta: dict, figures: list[Figure] = (),
                   ix: ReportIndex | None = None, timing: dict | None = None) -> str:
    """report.md: the header, the decision summary and plots, each stage type's section, then what a reader
    needs to trust the comparison (training, same start, same data, what differs, reproducibility)."""
    ix = ix or ReportIndex(results)
    findings, family = ix.validity(run_dir, meta)
    parts = [_header(run_dir, results, meta, ix), _failures(results), validity_section(findings),
             decision_section(results, ix.backends, blocker(findings, family)), timing_note(timing or {}),
             _figures_section(figures), *(kind.section(ix, run_dir, meta) for kind in in_section_order()),
             _parent_section(run_dir, ix), _training_section(ix), _parity_section(results, meta),
             _data_section(results),
             f"## What differs between the {'two ' if len(ix.backends) == 2 else ''}runs\n\n",
             _differences(ix, deployment_runtimes(ix)), _capabilities_section(ix),
             "\n" + reproducibility_section(results, meta), _environment_section(results)]
    return "".join(parts)


def _header(run_dir: Path, results: list[dict], meta: dict, ix: ReportIndex) -> str:
    seeds = sorted({r["seed"] for r in results})
    out = [f"# {meta.get('recipe_name', run_dir.parent.name)}: {' vs '.join(title(b) for b in ix.backends)}\n\n"]
    desc = meta.get("recipe", {}).get("description")
    if desc:
        out.append(f"> {desc.strip()}\n\n")
    run_id = results[0].get("run_id", run_dir.name) if results else run_dir.name
    out.append(f"Run `{run_id}`, profile `{meta.get('profile')}`, seeds {', '.join(map(str, seeds))} "
               f"(values are mean ± std over seeds where n > 1), {meta.get('threads')} CPU thread(s) per backend. "
               f"Generated {time.strftime('%Y-%m-%d %H:%M')} from the result files in `{run_dir.name}/`.\n\n")
    added = [str(x) for ext in meta.get("extended", []) for x in ext["seeds"]]
    out.append(f"Command: `{meta.get('command', '?')}`" + (f", then seed(s) {', '.join(added)} added with "
                                                          "`run-recipe --resume RUN_DIR --seeds ...`" if added else "")
               + "\n\n")
    if len(seeds) == 1:
        out.append("**One seed:** the differences below are single measurements, not tested for significance, so no "
                   "row names a framework ahead. "
                   "Run with `--seeds 0,1,2` (the recipe default) for mean ± std over seeds.\n\n")
    return "".join(out)


def _failures(results: list[dict]) -> str:
    failed = [r for r in results if r.get("status") != "ok"]
    if not failed:
        return ""
    lines = []
    for r in failed:
        e = r.get("error") or {}
        lines.append(f"- **{r['backend']} seed {r['seed']}** failed in `{e.get('stage')}`: {e.get('type')}: "
                     f"{e.get('message')}\n")
    return "## Failures\n\n" + "".join(lines) + "\n"


def _training_section(ix: ReportIndex) -> str:
    """Every training a stage did (as its type reports it), per backend, over seeds."""
    rows = []
    for b in ix.backends:
        by_stage: dict[str, list[dict]] = defaultdict(list)
        for stype, kind in stage_types().items():
            for _, st in ix.stage_records(b, stype):
                for name, run in kind.training_runs(st):
                    by_stage[name].append(run)
        for name, sts in by_stage.items():
            rows.append([f"`{name}`", title(b), f"`{sts[0]['model']}`", str(sts[0]["epochs"]),
                         str(sts[0]["steps"]), fmt_values([s["train_time_s"] for s in sts], digits=1),
                         fmt_values([s["time_per_step_s"] for s in sts], digits=3),
                         fmt_values([s["final"]["train_loss"] for s in sts], digits=4),
                         fmt_values([s["final"]["val_top1"] for s in sts], 100, unit="%")])
    return ("## Training\n\n"
            + table(["stage", "backend", "output", "epochs", "steps", "train time s", "s / step",
                     "last-epoch train loss", "val top-1 after training"], rows)
            + "\nTraining time excludes the per-epoch validation pass and batch-norm recalibration.\n\n")


def _parity_section(results: list[dict], meta: dict) -> str:
    rows = []
    named = any("compared" in p for r in results for p in (r.get("init_parity") or {}).values())
    for r in results:
        for slot, p in (r.get("init_parity") or {}).items():
            status = "ok" if p["max_rel"] <= p["rtol"] else "OVER TOLERANCE"
            rows.append([f"`{slot}`", title(r["backend"]), str(r["seed"]), f"{p['max_abs']:.2e}", f"{p['max_rel']:.2e}",
                         f"{p['rtol']:.0e}", status] + ([p.get("compared", "eval-mode logits")] if named else []))
    return ("## Same start: initial-weight parity\n\n"
            "Initial weights are created once per seed by the reference framework "
            f"({meta.get('recipe', {}).get('reference_framework', 'torch')}), stored as numpy, loaded by each "
            "backend and checked on fixed validation images."
            + (" Where eval-mode logits at initialisation are tiny (MobileNets: ~1e-10), the check compares logits "
               "with batch norm on the probe batch's own statistics, which are O(1)." if named else "") + "\n\n"
            + table(["model", "backend", "seed", "max abs logit diff", "max relative diff", "tolerance", "status"]
                    + (["compared"] if named else []), rows) + "\n" + _checkpoint_lines(results, meta))


def _checkpoint_lines(results: list[dict], meta: dict) -> str:
    """Slots that start from a checkpoint (models.<slot>.weights): which file, what was re-initialised, and
    whether the recipe's `pretrain` wrote it as a stand-in (common/recipe/pretrain.py)."""
    seen: dict[str, dict] = {}
    for r in results:
        for slot, w in (r.get("initial_weights") or {}).items():
            seen.setdefault(slot, w)
    lines = []
    for slot, w in seen.items():
        head = (f"; its classifier head was re-initialised from the run's seed, identically on every backend "
                f"({w.get('classes_in_file')} classes in the file, {w.get('classes_here')} here)"
                if w.get("head_reinitialised") else "")
        made = (meta.get("pretrained") or {}).get(slot)
        written = (f" The file was written before the run by the recipe's `pretrain`: `{slot}` trained from scratch "
                   f"by {title(made['framework'])} for {made['epochs']} epoch(s) (seed {made['seed']}, validation "
                   f"top-1 {made['val_top1'] * 100:.1f}%) and saved in that framework's own format, a stand-in for "
                   f"a user's checkpoint (set `models.{slot}.weights` to start from yours)."
                   if made and made.get("val_top1") is not None else "")
        lines.append(f"- `{slot}` starts from `{Path(w['path']).name}` (sha256 `{w['sha256'][:16]}`, read by "
                     f"{w['read_by']}, {w['tensors']} tensors){head}.{written}")
    return ("Checkpoints:\n\n" + "\n".join(lines) + "\n\n") if lines else ""


def _data_section(results: list[dict]) -> str:
    rows = []
    digests = defaultdict(set)
    for r in results:
        d = r.get("data") or {}
        if d:
            digests[r["seed"]].add((d.get("split"), d.get("first_batches")))
            rows.append([title(r["backend"]), str(r["seed"]), d.get("dataset", "?"),
                         f"{d.get('train_size')} / {d.get('val_size')}", f"`{d.get('split')}`",
                         f"`{d.get('first_batches')}`"])
    same = all(len(v) == 1 for v in digests.values())
    return ("## Same data\n\n"
            + table(["backend", "seed", "dataset", "train / val images", "split hash", "first batches hash"], rows)
            + "\n" + ("The split and the first training batches hash identically on every backend for each seed.\n\n"
                      if same else "**The data streams differ between backends: the comparison is not fair.**\n\n"))


def _environment_section(results: list[dict]) -> str:
    """Where and with what each (backend, seed) ran; the host column appears for results that record it (a Ray
    executor may run seeds on several machines)."""
    hosts = any((r.get("environment") or {}).get("host") for r in results)
    rows = []
    for r in results:
        env = r.get("environment") or {}
        cpu = env.get("cpu") or {}
        vers = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
        rows.append([title(r["backend"]), str(r["seed"])] + ([f"`{env.get('host', '?')}`"] if hosts else [])
                    + [vers, env.get("device", "?"), str(env.get("threads", "?")),
                       cpu_description(cpu), f"{r.get('peak_rss_mb', 0):.0f} MB",
                       f"{r.get('wall_time_s', 0):.0f} s"])
    return "## Environment per run\n\n" + table(["backend", "seed"] + (["host"] if hosts else [])
                                                 + ["versions", "device", "threads", "CPU", "peak RSS", "wall time"],
                                                 rows)


def _parent_section(run_dir: Path, ix: ReportIndex) -> str:
    """How many validation predictions compression changed: each compressed model against its parent, on the
    same framework and seed (every stage type that compresses contributes its rows)."""
    rows = [row for b in ix.backends for kind in stage_types().values() for row in kind.parent_rows(ix, run_dir, b)]
    if not rows:
        return ""
    out = []
    for who, seed, pair, how, c in rows:
        out.append([who, seed, pair, how, f"{c['agreement'] * 100:.1f}%",
                    str(c["changed_predictions"]),
                    str(c["only_a_correct"]), str(c["only_b_correct"]), f"{c['mcnemar_p']:.3g}"])
    return ("## What compression changed (each compressed model vs its parent)\n\n"
            + table(["backend", "seed", "parent → compressed", "how", "same prediction", "changed predictions",
                     "only parent right", "only compressed right", "McNemar p"], out)
            + "\nA pruned model is compared, as evaluated at the end of the run (after any fine-tuning), with the model "
              "it was pruned from (the reference framework's where the stage started from its weights); an int8 model with the fp32 weights it was quantized from. McNemar's exact test asks whether the samples only one of them gets right are lopsided.\n\n")


def _capabilities_section(ix: ReportIndex) -> str:
    """What each backend cannot run and which options it does not apply, as its results recorded them
    (backends/capabilities.py); results from before the table was recorded show nothing here."""
    recorded = {}
    for r in ix.results:
        if r.get("capabilities") is not None:
            recorded.setdefault(r["backend"], r["capabilities"])
    if not recorded:
        return ""
    rows = []
    for b in ix.backends:
        cap = recorded.get(b)
        if cap is None:
            continue
        for u in cap.get("unsupported", []):
            rows.append([title(b), f"`{u['stage']}.{u['setting']}: {u['value']}`", "cannot run", u["why"]])
        for option, why in cap.get("options_not_applied", {}).items():
            rows.append([title(b), f"`runtime.{option}`", "recorded as not applied", why])
    if not rows:
        return "\nEvery backend supports every stage setting and runtime option of this slimbench.\n"
    return ("\n**What each backend can run** (declared in backends/capabilities.py; a recipe asking for something "
            "a backend cannot run is refused before training starts):\n\n"
            + table(["backend", "setting", "", "why"], rows))


def _differences(ix: ReportIndex, runtimes: dict) -> str:
    lines = ["- Kernels and floating-point summation order are each framework's own, so trained weights drift "
             "apart from an identical start; that drift is part of the result.",
             "- Random number streams inside the frameworks (dropout masks) differ; data order and augmentation "
             "do not (they come from common/data)."]
    for b, (rt, fmt) in runtimes.items():
        lines.append(f"- {title(b)} deploys as {fmt} on {rt}.")
    devices = {r["backend"]: (r.get("environment") or {}).get("device") for r in ix.results}
    if len(set(devices.values())) > 1:
        lines.append("- Devices differ: " + ", ".join(f"{b} on {d}" for b, d in devices.items()) + ".")
    options = {r["backend"]: (r.get("environment") or {}).get("training_options") for r in ix.results
               if (r.get("environment") or {}).get("training_options") is not None}  # older results lack it
    if len({json.dumps(o, sort_keys=True) for o in options.values()}) > 1:
        lines.append("- Training options differ: " + "; ".join(
            f"{title(b)} {json.dumps(o, sort_keys=True)}" for b, o in options.items())
            + " (amp, channels_last and compile are applied by the torch backend only; cpu_tuning by both, each "
              "in its own way, see below).")
    for key, what in (("tuning_notes", "CPU training (runtime.cpu_tuning)"), ("optimizer_notes", "optimizer")):
        notes = {(r["backend"], n) for r in ix.results for n in (r.get("environment") or {}).get(key, [])}
        for b, n in sorted(notes):
            lines.append(f"- {title(b)} {what}: {n}.")
    threads = {r["backend"]: (r.get("environment") or {}).get("threads") for r in ix.results}
    if len(set(threads.values())) > 1:
        lines.append("- Thread counts differ: " + ", ".join(f"{b} {t}" for b, t in threads.items()) + ".")
    return "\n".join(lines) + "\n"


def _copy_run(run_dir: Path, out_dir: Path) -> None:
    """Put the run's own files (run.json, result files, saved predictions, paired timings) beside a report written
    elsewhere,
    so the report directory can be regenerated and compared without the run directory."""
    shutil.copy2(run_dir / "run.json", out_dir / "run.json")
    for result in sorted(run_dir.glob("*/seed-*/result.json")):
        rel = result.parent.relative_to(run_dir)
        dest = out_dir / rel
        (dest / "predictions").mkdir(parents=True, exist_ok=True)
        shutil.copy2(result, dest / "result.json")
        for npz in sorted((result.parent / "predictions").glob("*.npz")):
            shutil.copy2(npz, dest / "predictions" / npz.name)
    for timing in timing_round_files(run_dir):  # the paired timing phase's rounds (not its logs)
        dest = out_dir / timing.relative_to(run_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(timing, dest)


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write report.md, report.html (plots embedded), plots/*.png, results.csv (one row per backend, seed,
    stage, model, metric) and results.json (those rows plus the decision summary's statistics) for a run
    directory; return the Markdown report's path. With `out_dir`, the run's result files are copied there too."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    results, timing = load_report_results(run_dir)
    if not results:
        raise RunFilesError(f"no result files under {run_dir}/<backend>/seed-<n>/result.json")
    meta = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    try:
        return _write_report(run_dir, out_dir, results, meta, timing)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # load_results checked the structure every section relies on; this is a field deeper down
        raise RunFilesError(f"cannot build the report of {run_dir}: a result file lacks a value the report needs "
                            f"({type(e).__name__}: {str(e)[:120]}); the files are damaged or come from another "
                            "slimbench version (SLIMBENCH_DEBUG=1 shows where)") from e


def _write_report(run_dir: Path, out_dir: Path, results: list[dict], meta: dict, timing: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != run_dir.resolve() and (run_dir / "run.json").is_file():
        _copy_run(run_dir, out_dir)
    ix = ReportIndex(results)
    backends, metrics = ix.backends, collect_metrics(results)
    figures = report_figures(results, backends, metrics)
    plots = out_dir / PLOTS_DIR
    if plots.is_dir():
        for old in plots.glob("*.png"):  # a figure that no longer applies must not linger
            old.unlink()
    plots.mkdir(exist_ok=True)
    for f in figures:
        atomic_write_bytes(plots / f"{f.name}.png", f.png)
    md = build_markdown(run_dir, results, meta, figures, ix, timing)
    rows = flat_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["backend", "seed", "stage", "model", "metric", "value"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    run_id = results[0].get("run_id", run_dir.name)
    findings, family = ix.validity(run_dir, meta)
    summary = summary_records(metrics, backends, blocker(findings, family))
    atomic_write_text(out_dir / "results.json", json.dumps({"run": run_id, "validity": [f.as_dict() for f in findings],
                                                           "summary": summary, "rows": rows}, indent=1) + "\n")
    path = out_dir / "report.md"
    atomic_write_text(path, md)
    title = f"slimbench: {meta.get('recipe_name', run_dir.parent.name)}"
    atomic_write_text(out_dir / "report.html", render_html(md, title, out_dir))
    return path
