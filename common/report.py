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
from typing import Any, Iterable

import numpy as np

from common.decision import BACKEND_TITLES, collect_metrics, summary_records
from common.markdown_table import table
from common.metrics import paired_predictions
from common.report_html import render_html
from common.report_plots import Figure, report_figures
from common.report_summary import decision_section, reproducibility_section
from common.errors import RunFilesError
from common.results import atomic_write_bytes, atomic_write_text, load_results, read_json
from common.stats import summarize

PLOTS_DIR = "plots"


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if not values:
        return "–"
    st = summarize([v * scale for v in values])
    return f"{st.mean:.{digits}f}{unit}" + (f" ± {st.std:.{digits}f}" if st.n > 1 else "")


def _batch_order(bs: str) -> tuple[int, str]:
    """Batch-size keys ("1", "32") in numeric order."""
    return (int(bs), bs) if str(bs).isdigit() else (1 << 30, str(bs))


def _count(n: float) -> str:
    """Human count: 23.53 M, 5.5 k."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


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
            if st.get("status") != "ok":
                continue
            if st["type"] in ("train", "distill"):
                for k in ("train_time_s", "time_per_step_s", "epochs", "steps"):
                    add(r, st["name"], st["model"], k, st.get(k))
                for k, v in (st.get("final") or {}).items():
                    add(r, st["name"], st["model"], f"final_{k}", v)
            elif st["type"] == "evaluate":
                for slot, m in st["models"].items():
                    for k in ("top1", "top5", "loss"):
                        add(r, st["name"], slot, k, m[k])
            elif st["type"] == "quantize":
                for kind in ("fp32", "int8"):
                    add(r, st["name"], st["model"], f"{kind}_size_bytes", st[kind]["size_bytes"])
                    add(r, st["name"], st["model"], f"{kind}_top1", st[kind]["top1"])
                    for bs, lat in st[kind]["latency"].items():
                        add(r, st["name"], st["model"], f"{kind}_latency_b{bs}_p50_ms", lat["p50_ms"])
                for k in ("size_ratio", "accuracy_drop", "quantize_time_s"):
                    add(r, st["name"], st["model"], k, st[k])
                add(r, st["name"], st["model"], "prediction_agreement", st["comparison"]["agreement"])
                for bs, v in st["speedup"].items():
                    add(r, st["name"], st["model"], f"speedup_b{bs}", v)
                if st.get("qat"):
                    for k in ("train_time_s", "time_per_step_s"):
                        add(r, st["name"], st["model"], k, st["qat"][k])
            elif st["type"] == "export":
                for slot, m in st["models"].items():
                    for k in ("size_bytes", "params", "macs", "flops", "artifact_top1"):
                        add(r, st["name"], slot, k, m[k])
                    for bs, lat in m["latency"].items():
                        for k in ("p50_ms", "p90_ms"):
                            add(r, st["name"], slot, f"latency_b{bs}_{k}", lat[k])
    return rows


class _Index:
    """Lookups over results: values per (stage type/name, model, backend) across seeds."""

    def __init__(self, results: list[dict]):
        self.results = results
        self.backends = sorted({r["backend"] for r in results}, key=lambda b: (b != "torch", b))

    def stage_records(self, backend: str, stage_type: str) -> list[tuple[int, dict]]:
        return [(r["seed"], st) for r in self.results if r["backend"] == backend
                for st in r.get("stages", []) if st["type"] == stage_type and st.get("status") == "ok"]

    def values(self, backend: str, stage_type: str, slot: str, key: str) -> list[float]:
        out = []
        for _, st in self.stage_records(backend, stage_type):
            m = st.get("models", {}).get(slot)
            if m is not None and key in m:
                out.append(m[key])
        return out


def _kd_pairs(run_meta: dict) -> list[tuple[str, str, str]]:
    """(distill stage, baseline slot, distilled slot): the baseline is the train stage on the same start."""
    stages = [next(iter(s.items())) for s in run_meta.get("recipe", {}).get("stages", [])]
    pairs = []
    for stype, cfg in stages:
        if stype != "distill":
            continue
        for t2, c2 in stages:
            if t2 == "train" and c2.get("model") == cfg.get("student"):
                pairs.append((cfg["name"], c2.get("output") or c2["model"], cfg.get("output") or cfg["student"]))
    return pairs


def _figures_section(figures: list[Figure]) -> str:
    if not figures:
        return ""
    out = ["## Plots\n\n"]
    for f in figures:
        out.append(f"**{f.title}.** {f.caption}\n\n![{f.title}]({PLOTS_DIR}/{f.name}.png)\n\n")
    return "".join(out)


def build_markdown(run_dir: Path, results: list[dict], meta: dict, figures: list[Figure] = ()) -> str:
    ix = _Index(results)
    names = [BACKEND_TITLES.get(b, b) for b in ix.backends]
    seeds = sorted({r["seed"] for r in results})
    md = io.StringIO()
    w = md.write
    w(f"# {meta.get('recipe_name', run_dir.parent.name)}: {' vs '.join(names)}\n\n")
    desc = meta.get("recipe", {}).get("description")
    if desc:
        w(f"> {desc.strip()}\n\n")
    run_id = results[0].get("run_id", run_dir.name) if results else run_dir.name
    w(f"Run `{run_id}`, profile `{meta.get('profile')}`, seeds {', '.join(map(str, seeds))} "
      f"(values are mean ± std over seeds where n > 1), {meta.get('threads')} CPU thread(s) per backend. "
      f"Generated {time.strftime('%Y-%m-%d %H:%M')} from the result files in `{run_dir.name}/`.\n\n")
    added = [str(x) for ext in meta.get("extended", []) for x in ext["seeds"]]
    w(f"Command: `{meta.get('command', '?')}`" + (f", then seed(s) {', '.join(added)} added with "
                                                 "`run-recipe --resume RUN_DIR --seeds ...`" if added else "")
      + "\n\n")

    if len(seeds) == 1:
        w("**One seed:** the differences below are single measurements, not tested for significance. "
          "Run with `--seeds 0,1,2` (the recipe default) for mean ± std over seeds.\n\n")

    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        w("## Failures\n\n")
        for r in failed:
            e = r.get("error") or {}
            w(f"- **{r['backend']} seed {r['seed']}** failed in `{e.get('stage')}`: {e.get('type')}: "
              f"{e.get('message')}\n")
        w("\n")

    w(decision_section(results, ix.backends))
    w(_figures_section(figures))

    eval_slots = []
    for b in ix.backends:
        for _, st in ix.stage_records(b, "evaluate"):
            eval_slots += [s for s in st["models"] if s not in eval_slots]

    pairs = _kd_pairs(meta)
    if pairs:
        w("## Knowledge-distillation gain\n\n")
        rows = []
        for stage, base, kd in pairs:
            for b in ix.backends:
                bv, kv = ix.values(b, "evaluate", base, "top1"), ix.values(b, "evaluate", kd, "top1")
                n = min(len(bv), len(kv))
                gain = [k - v for k, v in zip(kv[:n], bv[:n])]
                rows.append([stage, BACKEND_TITLES.get(b, b), _fmt(bv, 100, unit="%"), _fmt(kv, 100, unit="%"),
                             _fmt(gain, 100, unit=" pts") if gain else "–"])
        w(table(["distill stage", "backend", f"baseline top-1", "distilled top-1", "KD gain"], rows))
        w("\nThe baseline is the student trained alone from the same initial weights, data stream and schedule.\n\n")

    w("## Accuracy on the validation split\n\n")
    rows = []
    for slot in eval_slots:
        per = {b: ix.values(b, "evaluate", slot, "top1") for b in ix.backends}
        row = [f"`{slot}`"] + [_fmt(per[b], 100, unit="%") for b in ix.backends]
        if len(ix.backends) == 2:
            a, c = per[ix.backends[0]], per[ix.backends[1]]
            n = min(len(a), len(c))
            row.append(_fmt([y - x for x, y in zip(a[:n], c[:n])], 100, unit=" pts") if n else "–")
        row += [_fmt(ix.values(b, "evaluate", slot, "top5"), 100, unit="%") for b in ix.backends]
        rows.append(row)
    header = ["model"] + [f"{n} top-1" for n in names]
    if len(ix.backends) == 2:
        header.append(f"Δ top-1 ({names[1]} − {names[0]})")
    header += [f"{n} top-5" for n in names]
    w(table(header, rows))
    w("\n")

    w(_agreement_section(run_dir, ix))

    w("## Exported artifacts (measured from the files on disk)\n\n")
    rows, runtimes = [], {}
    # Export stages may measure different batch sizes: one column per size any of them measured.
    batch_sizes = sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "export")
                          for m in st["models"].values() for bs in m["latency"]}, key=_batch_order)
    for b in ix.backends:
        slots = []
        for _, st in ix.stage_records(b, "export"):
            slots += [s for s in st["models"] if s not in slots]
        for slot in slots:
            recs = [st["models"][slot] for _, st in ix.stage_records(b, "export") if slot in st["models"]]
            runtimes[b] = (recs[0]["runtime"], recs[0]["format"])
            lat_cells = []
            for bs in batch_sizes:
                p50 = [r["latency"][bs]["p50_ms"] for r in recs if bs in r["latency"]]
                p90 = [r["latency"][bs]["p90_ms"] for r in recs if bs in r["latency"]]
                lat_cells.append(f"{_fmt(p50)} / {_fmt(p90)}" if p50 else "–")
            rows.append([f"`{slot}`", BACKEND_TITLES.get(b, b), _count(recs[0]["params"]), _count(recs[0]["macs"]), _fmt([r["size_mb"] for r in recs]),
                         _fmt([r["artifact_top1"] for r in recs], 100, unit="%")] + lat_cells)
    w(table(["model", "backend", "params", "MACs", "file MB", "artifact top-1"]
             + [f"batch {bs} latency p50 / p90 ms" for bs in batch_sizes], rows))
    if runtimes:
        w("\n" + "".join(f"- {BACKEND_TITLES.get(b, b)}: artifact {fmt}; latency on {rt}.\n"
                         for b, (rt, fmt) in runtimes.items()))
    w("\nParams and MACs are counted from the exported artifact (conv and matmul ops). Latency uses the same "
      "inputs, warm-up, repeats and thread count on both backends.\n\n")

    w(_pruning_section(ix))
    w(_quantization_section(ix))
    w(_parent_section(run_dir, ix))

    w("## Training\n\n")
    rows = []
    for b in ix.backends:
        by_stage: dict[str, list[dict]] = defaultdict(list)
        for stype in ("train", "distill", "quantize"):
            for _, st in ix.stage_records(b, stype):
                if stype != "quantize":
                    by_stage[st["name"]].append(st)
                elif st.get("qat"):  # QAT fine-tuning is training too
                    by_stage[f"{st['name']} (QAT)"].append({"model": st["model"], **st["qat"]})
        for name, sts in by_stage.items():
            rows.append([f"`{name}`", BACKEND_TITLES.get(b, b), f"`{sts[0]['model']}`", str(sts[0]["epochs"]),
                         str(sts[0]["steps"]), _fmt([s["train_time_s"] for s in sts], digits=1),
                         _fmt([s["time_per_step_s"] for s in sts], digits=3),
                         _fmt([s["final"]["train_loss"] for s in sts], digits=4),
                         _fmt([s["final"]["val_top1"] for s in sts], 100, unit="%")])
    w(table(["stage", "backend", "output", "epochs", "steps", "train time s", "s / step", "last-epoch train loss",
              "val top-1 after training"], rows))
    w("\nTraining time excludes the per-epoch validation pass.\n\n")

    w("## Same start: initial-weight parity\n\n")
    rows = []
    for r in results:
        for slot, p in (r.get("init_parity") or {}).items():
            status = "ok" if p["max_rel"] <= p["rtol"] else "OVER TOLERANCE"
            rows.append([f"`{slot}`", BACKEND_TITLES.get(r["backend"], r["backend"]), str(r["seed"]),
                         f"{p['max_abs']:.2e}", f"{p['max_rel']:.2e}", f"{p['rtol']:.0e}", status])
    w("Initial weights are created once per seed by the reference framework "
      f"({meta.get('recipe', {}).get('reference_framework', 'torch')}), stored as numpy, loaded by each backend and "
      "checked on fixed validation images.\n\n")
    w(table(["model", "backend", "seed", "max abs logit diff", "max relative diff", "tolerance", "status"], rows))
    w("\n")

    w("## Same data\n\n")
    rows = []
    digests = defaultdict(set)
    for r in results:
        d = r.get("data") or {}
        if d:
            digests[r["seed"]].add((d.get("split"), d.get("first_batches")))
            rows.append([BACKEND_TITLES.get(r["backend"], r["backend"]), str(r["seed"]), d.get("dataset", "?"),
                         f"{d.get('train_size')} / {d.get('val_size')}", f"`{d.get('split')}`",
                         f"`{d.get('first_batches')}`"])
    w(table(["backend", "seed", "dataset", "train / val images", "split hash", "first batches hash"], rows))
    same = all(len(v) == 1 for v in digests.values())
    w("\n" + ("The split and the first training batches hash identically on every backend for each seed.\n\n"
              if same else "**The data streams differ between backends: the comparison is not fair.**\n\n"))

    w("## What differs between the two runs\n\n")
    w(_differences(ix, runtimes))
    w("\n" + reproducibility_section(results, meta))
    w("## Environment per run\n\n")
    rows = []
    for r in results:
        env = r.get("environment") or {}
        cpu = env.get("cpu") or {}
        vers = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
        rows.append([BACKEND_TITLES.get(r["backend"], r["backend"]), str(r["seed"]), vers, env.get("device", "?"),
                     str(env.get("threads", "?")), f"{cpu.get('model', '?')} ({cpu.get('logical_cores', '?')} cores; "
                     f"{' '.join(cpu.get('flags', []))})", f"{r.get('peak_rss_mb', 0):.0f} MB",
                     f"{r.get('wall_time_s', 0):.0f} s"])
    w(table(["backend", "seed", "versions", "device", "threads", "CPU", "peak RSS", "wall time"], rows))
    return md.getvalue()


def _pruning_section(ix: _Index) -> str:
    rows, curves, lowerings = [], {}, {}
    for b in ix.backends:
        exports = {slot: rec for _, st in ix.stage_records(b, "export") for slot, rec in st["models"].items()}
        for seed, st in ix.stage_records(b, "prune"):
            ex = exports.get(st["model"], {})
            src = exports.get(st.get("source", ""), {})
            sp = ex.get("sparsity") or {}
            art = sp.get("pruned_layers")
            comp = ex.get("compressed_bytes")
            after = st.get("accuracy_after_prune") or st.get("final") or {}
            after_top1 = after.get("top1", after.get("val_top1"))
            structured = st["method"] == "filter"
            macs_cut = 1 - ex["macs"] / src["macs"] if ex and src and src.get("macs") else None
            rows.append([f"`{st['name']}`", BACKEND_TITLES.get(b, b), str(seed),
                         f"filter {st['criterion']}" if structured else f"{st['scope']} {st['schedule']}",
                         (f"ratio {st['ratio']}" if st.get("ratio") is not None else "per layer") if structured
                         else f"{st['target_sparsity'] * 100:.1f}%",
                         "–" if structured else f"{st['achieved_sparsity'] * 100:.2f}%",
                         f"{art * 100:.2f}%" if art is not None else "–",
                         f"{sp.get('overall', 0) * 100:.2f}%" if sp and not structured else "–",
                         f"-{macs_cut * 100:.1f}%" if macs_cut is not None else "–",
                         f"{st['accuracy_before']['top1'] * 100:.2f}%",
                         f"{after_top1 * 100:.2f}%" if after_top1 is not None else "–",
                         f"{ex['size_bytes'] / 1e6:.2f} / {comp / 1e6:.2f}" if ex and comp else
                         (f"{ex['size_bytes'] / 1e6:.2f}" if ex else "–")])
            if not structured:
                curves.setdefault(st["name"], {})[(b, seed)] = [round(c["target"], 6) for c in st["sparsity_curve"]]
            lowerings[f"{b} {st['method']}"] = st["lowering"]
    if not rows:
        return ""
    out = ["## Pruning\n",
           table(["stage", "backend", "seed", "scope / schedule", "target", "reached (in memory)",
                   "exported: pruned layers", "exported: all conv+linear", "exported MACs vs source", "top-1 before", "top-1 after (AGP: after fine-tuning)",
                   "file MB (/ zlib MB)"], rows) + "\n"]
    for name, by_run in curves.items():
        same = len({tuple(v) for v in by_run.values()}) == 1
        out.append(f"- `{name}`: the sparsity schedule ({len(next(iter(by_run.values())))} mask updates) is "
                   + ("identical on every backend and seed.\n" if same else "**different between runs**.\n"))
    out += [f"- {BACKEND_TITLES.get(k.split()[0], k.split()[0])} {k.split()[1]} pruning: {lw}.\n"
            for k, lw in lowerings.items()]
    starts = {f"{BACKEND_TITLES.get(b, b)}: {st.get('start_weights', 'own trained weights')}"
              for b in ix.backends for _, st in ix.stage_records(b, "prune")}
    out.append("- Pruning started from " + "; ".join(sorted(starts)) + ".\n")
    out.append(_filter_overlap(ix))
    if any(not k.endswith(" filter") for k in lowerings):
        out.append("- Unstructured sparsity is counted from the exported weights. Dense kernels run zeros like any "
                   "other value, so these models are not faster, and the file on disk is the same size; only a "
                   "compressed copy (zlib column) shrinks.\n")
    if any(k.endswith(" filter") for k in lowerings):
        out.append("- Filter pruning removes channels: MACs, params, file size and latency of the exported model "
                   "drop for real (see the artifacts table).\n")
    out.append("\n")
    return "\n".join(out[:1]) + "\n" + "".join(out[1:])


def _agreement_section(run_dir: Path, ix: _Index) -> str:
    """Per-sample comparison of the two frameworks on the validation split (same seed, same model slot)."""
    if len(ix.backends) != 2:
        return ""
    a, b = ix.backends
    rows, missing = [], 0
    for seed, st in ix.stage_records(a, "evaluate"):
        for slot in st["models"]:
            files = [_prediction_file(run_dir, ix, be, seed, slot) for be in (a, b)]
            if not all(files):
                missing += 1
                continue
            c = _paired(*files)
            rows.append([f"`{slot}`", str(seed), f"{c['agreement'] * 100:.1f}%", str(c["only_a_correct"]),
                         str(c["only_b_correct"]), f"{c['diff'] * 100 + 0.0:+.2f} [{c['diff_ci95'][0] * 100 + 0.0:+.2f}, "
                         f"{c['diff_ci95'][1] * 100 + 0.0:+.2f}]", f"{c['mcnemar_p']:.3g}"])
    if not rows:
        return ""
    na, nb = BACKEND_TITLES.get(a, a), BACKEND_TITLES.get(b, b)
    out = ["## Same samples, same answers? (per-sample comparison of the frameworks)\n\n",
           table(["model", "seed", "same prediction", f"only {na} right", f"only {nb} right",
                   f"Δ top-1 ({nb} − {na}), pts [95% CI]", "McNemar p"], rows),
           "\nMcNemar's exact test on the samples only one framework classifies correctly: a small p means the "
           "accuracy difference is unlikely to be chance on this validation split.\n"]
    if missing:
        out.append(f"\n({missing} model(s) without saved predictions on both backends are left out.)\n")
    return "".join(out) + "\n"


def _prediction_file(run_dir: Path, ix: _Index, backend: str, seed: int, slot: str) -> Path | None:
    """The saved validation predictions of a model slot (from the evaluate stage), if there are any on disk."""
    for s, st in ix.stage_records(backend, "evaluate"):
        rel = st["models"].get(slot, {}).get("predictions") if s == seed else None
        if rel and (run_dir / backend / f"seed-{seed}" / rel).is_file():
            return run_dir / backend / f"seed-{seed}" / rel
    return None


def _paired(file_a: Path, file_b: Path) -> dict[str, Any]:
    """paired_predictions of two saved prediction files, which must cover the same validation samples."""
    pa, pb = np.load(file_a), np.load(file_b)
    if not np.array_equal(pa["label"], pb["label"]):
        raise ValueError(f"{file_a} and {file_b} cover different validation samples")
    return paired_predictions(pa["pred"], pb["pred"], pa["label"])


def _parent_section(run_dir: Path, ix: _Index) -> str:
    """How many validation predictions compression changed: each compressed model against its parent, on the
    same framework and seed (pruned vs its source from the saved predictions; int8 vs fp32 from the stage)."""
    rows = []
    for b in ix.backends:
        for seed, st in ix.stage_records(b, "prune"):
            # A stage that started from the reference framework's weights has that framework's model as parent.
            parent_b = next((o for o in ix.backends if o != b and st.get("start_weights", "").startswith(f"{o}'s ")), b)
            files = [_prediction_file(run_dir, ix, parent_b, seed, st["source"]),
                     _prediction_file(run_dir, ix, b, seed, st["model"])]
            if not all(files):
                continue
            c = _paired(*files)
            parent = f"`{st['source']}`" + (f" ({BACKEND_TITLES.get(parent_b, parent_b)}'s)" if parent_b != b else "")
            rows.append([BACKEND_TITLES.get(b, b), str(seed), f"{parent} → `{st['model']}`",
                         f"{st['method']} prune" + (" + fine-tune" if st.get("epochs") else ""), c])
        for seed, st in ix.stage_records(b, "quantize"):
            rows.append([BACKEND_TITLES.get(b, b), str(seed), f"`{st['source']}` → `{st['model']}`",
                         f"int8 {st['mode']}", st["comparison"]])
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


def _quantization_section(ix: _Index) -> str:
    """int8 artifact next to the fp32 artifact of the same weights, per backend and seed."""
    rows, lowerings, starts, warned = [], {}, set(), {}
    batch_sizes = sorted({bs for b in ix.backends for _, st in ix.stage_records(b, "quantize")
                          for bs in st["fp32"]["latency"]}, key=_batch_order)
    for b in ix.backends:
        for seed, st in ix.stage_records(b, "quantize"):
            fp, q = st["fp32"], st["int8"]
            lo, hi = st["accuracy_drop_ci95"]
            cmp = st["comparison"]
            calib = (f"{st['calibration']}, {st['calibration_batches']} batches" if st["mode"] == "ptq_static"
                     else f"{st['qat']['epochs']} epoch(s)" if st.get("qat") else "–")
            lat = [f"{fp['latency'][bs]['p50_ms']:.2f} → {q['latency'][bs]['p50_ms']:.2f} "
                   f"(×{q['latency'][bs]['p50_ms'] / fp['latency'][bs]['p50_ms']:.2f})"
                   if bs in fp["latency"] and bs in q["latency"] else "–" for bs in batch_sizes]
            rows.append([f"`{st['name']}`", BACKEND_TITLES.get(b, b), str(seed), f"{st['mode']} ({calib})",
                         f"{fp['size_mb']:.2f} → {q['size_mb']:.2f} ({st['size_ratio'] * 100:.0f}%)",
                         f"{fp['top1'] * 100:.2f}% → {q['top1'] * 100:.2f}%",
                         f"{st['accuracy_drop'] * 100 + 0.0:+.2f} [{lo * 100 + 0.0:+.2f}, {hi * 100 + 0.0:+.2f}]",
                         f"{cmp['agreement'] * 100:.1f}%", f"{cmp['mcnemar_p']:.3g}"] + lat)
            lowerings[b] = st["lowering"]
            starts.add(f"{BACKEND_TITLES.get(b, b)}: {st['start_weights']}")
            warned.setdefault(b, set()).update(st.get("framework_warnings", []))
    if not rows:
        return ""
    out = ["## Quantization (int8 file vs the fp32 file of the same weights)\n\n",
           table(["stage", "backend", "seed", "mode", "file MB fp32 → int8", "top-1 fp32 → int8",
                   "drop, pts [95% CI]", "same prediction", "McNemar p"]
                  + [f"batch {bs} p50 ms fp32 → int8 (ratio)" for bs in batch_sizes], rows), "\n"]
    for b, lw in lowerings.items():
        out.append(f"- {BACKEND_TITLES.get(b, b)}: {lw['tool']}; weights {lw['weights']}; activations "
                   f"{lw['activations']}; calibration {lw['calibration']}; int8 runtime {lw['runtime']}.\n")
    out.append("- Quantization started from " + "; ".join(sorted(starts)) + ".\n")
    out.append("- Both files are measured with the same inputs, warm-up, repeats and threads, timed in alternation "
               "(fp32, int8, fp32, ...); the drop is fp32 top-1 minus int8 top-1 on the validation split with a "
               "95% interval over the paired per-sample differences; McNemar's exact test asks whether the samples "
               "only one of the two gets right are lopsided.\n")
    if len({lw["activations"] for lw in lowerings.values()}) > 1:
        out.append("- The activation schemes differ between the frameworks (see above): each uses its own int8 "
                   "kernels' native scheme.\n")
    for b, msgs in warned.items():
        if msgs:
            out.append(f"- {BACKEND_TITLES.get(b, b)} warned: " + "; ".join(f"\"{m}\"" for m in sorted(msgs)) + "\n")
    out.append("\n")
    return "".join(out)


def _filter_overlap(ix: _Index) -> str:
    """How many of the removed filters the two backends chose alike (same seed, same stage)."""
    if len(ix.backends) != 2:
        return ""
    a, b = ix.backends
    lines = []
    recs_b = {(seed, st["name"]): st for seed, st in ix.stage_records(b, "prune") if st["method"] == "filter"}
    for seed, st in ix.stage_records(a, "prune"):
        other = recs_b.get((seed, st["name"]))
        if st["method"] != "filter" or other is None:
            continue
        ra, rb = st["removed_channels"], other["removed_channels"]
        common_layers = sorted(set(ra) & set(rb))
        inter = sum(len(set(ra[k]) & set(rb[k])) for k in common_layers)
        union = sum(len(set(ra[k]) | set(rb[k])) for k in common_layers)
        same_start = "trained weights of" in (st.get("start_weights", "") + other.get("start_weights", ""))
        why = ("Both pruned the same (reference) weights, so the difference is how the tools treat coupled layers: "
               if same_start else "Trained weights drift apart between frameworks, and ")
        lines.append(f"- `{st['name']}` seed {seed}: {len(common_layers)} convs pruned on both "
                     f"({len(ra)} by {BACKEND_TITLES.get(a, a)}, {len(rb)} by {BACKEND_TITLES.get(b, b)}); removed "
                     f"filters overlap {inter / max(union, 1) * 100:.1f}% (intersection over union). " + why +
                     "in residual-coupled groups the tools rank channels by different member convs (torch-pruning: the group's root, e.g. the downsample conv; PaddleSlim: "
                     "the conv it was asked to prune first). On identical weights, convs without coupling lose "
                     "the same filters in both (tests/integration/test_pruning_backends.py).\n")
    return "".join(lines)


def _differences(ix: _Index, runtimes: dict) -> str:
    lines = ["- Kernels and floating-point summation order are each framework's own, so trained weights drift "
             "apart from an identical start; that drift is part of the result.",
             "- Random number streams inside the frameworks (dropout masks) differ; data order and augmentation "
             "do not (they come from common/data)."]
    for b, (rt, fmt) in runtimes.items():
        lines.append(f"- {BACKEND_TITLES.get(b, b)} deploys as {fmt} on {rt}.")
    devices = {r["backend"]: (r.get("environment") or {}).get("device") for r in ix.results}
    if len(set(devices.values())) > 1:
        lines.append("- Devices differ: " + ", ".join(f"{b} on {d}" for b, d in devices.items()) + ".")
    options = {r["backend"]: (r.get("environment") or {}).get("training_options") for r in ix.results
               if (r.get("environment") or {}).get("training_options") is not None}  # older results lack it
    if len({json.dumps(o, sort_keys=True) for o in options.values()}) > 1:
        lines.append("- Training options differ: " + "; ".join(
            f"{BACKEND_TITLES.get(b, b)} {json.dumps(o, sort_keys=True)}" for b, o in options.items())
            + " (amp, channels_last and compile are applied by the torch backend only; cpu_tuning by both, each "
              "in its own way, see below).")
    for key, what in (("tuning_notes", "CPU training (runtime.cpu_tuning)"), ("optimizer_notes", "optimizer")):
        notes = {(r["backend"], n) for r in ix.results for n in (r.get("environment") or {}).get(key, [])}
        for b, n in sorted(notes):
            lines.append(f"- {BACKEND_TITLES.get(b, b)} {what}: {n}.")
    threads = {r["backend"]: (r.get("environment") or {}).get("threads") for r in ix.results}
    if len(set(threads.values())) > 1:
        lines.append("- Thread counts differ: " + ", ".join(f"{b} {t}" for b, t in threads.items()) + ".")
    return "\n".join(lines) + "\n"


def _copy_run(run_dir: Path, out_dir: Path) -> None:
    """Put the run's own files (run.json, result files, saved predictions) beside a report written elsewhere,
    so the report directory can be regenerated and compared without the run directory."""
    shutil.copy2(run_dir / "run.json", out_dir / "run.json")
    for result in sorted(run_dir.glob("*/seed-*/result.json")):
        rel = result.parent.relative_to(run_dir)
        dest = out_dir / rel
        (dest / "predictions").mkdir(parents=True, exist_ok=True)
        shutil.copy2(result, dest / "result.json")
        for npz in sorted((result.parent / "predictions").glob("*.npz")):
            shutil.copy2(npz, dest / "predictions" / npz.name)


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write report.md, report.html (plots embedded), plots/*.png, results.csv (one row per backend, seed,
    stage, model, metric) and results.json (those rows plus the decision summary's statistics) for a run
    directory; return the Markdown report's path. With `out_dir`, the run's result files are copied there too."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    results = load_results(run_dir)
    if not results:
        raise RunFilesError(f"no result files under {run_dir}/<backend>/seed-<n>/result.json")
    meta = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    try:
        return _write_report(run_dir, out_dir, results, meta)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # load_results checked the structure every section relies on; this is a field deeper down
        raise RunFilesError(f"cannot build the report of {run_dir}: a result file lacks a value the report needs "
                            f"({type(e).__name__}: {str(e)[:120]}); the files are damaged or come from another "
                            "slimbench version (SLIMBENCH_DEBUG=1 shows where)") from e


def _write_report(run_dir: Path, out_dir: Path, results: list[dict], meta: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != run_dir.resolve() and (run_dir / "run.json").is_file():
        _copy_run(run_dir, out_dir)
    backends, metrics = _Index(results).backends, collect_metrics(results)
    figures = report_figures(results, backends, metrics)
    plots = out_dir / PLOTS_DIR
    if plots.is_dir():
        for old in plots.glob("*.png"):  # a figure that no longer applies must not linger
            old.unlink()
    plots.mkdir(exist_ok=True)
    for f in figures:
        atomic_write_bytes(plots / f"{f.name}.png", f.png)
    md = build_markdown(run_dir, results, meta, figures)
    rows = flat_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["backend", "seed", "stage", "model", "metric", "value"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    run_id = results[0].get("run_id", run_dir.name)
    summary = summary_records(metrics, backends)
    atomic_write_text(out_dir / "results.json", json.dumps({"run": run_id, "summary": summary, "rows": rows},
                                                          indent=1) + "\n")
    path = out_dir / "report.md"
    atomic_write_text(path, md)
    title = f"slimbench: {meta.get('recipe_name', run_dir.parent.name)}"
    atomic_write_text(out_dir / "report.html", render_html(md, title, out_dir))
    return path
