"""The two ends of a report: the decision summary a team reads first, and the reproducibility block an
engineer needs to rerun or defend the figures."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from common.backend_names import title
from common.report.decision import Blocker, collect_metrics, decision_rows, headline
from common.stages.registry import stage_type
from common.report.markdown_table import table
from common.recipe.loader import recipe_digest
from common.sysinfo import NO_FLAGS_OF_INTEREST, cpu_label


def decision_section(results: list[dict], backends: list[str], blocked: Blocker = lambda m: None) -> str:
    """Per stage and metric: the reference framework and each other one (mean ± std over seeds), the paired
    difference with its 95% interval, and who is ahead; then what each backend did natively and what needed a
    workaround. With more than two backends, one comparison per other backend against the first."""
    metrics = collect_metrics(results)
    if len(backends) < 2 or not metrics:
        return ""
    seeds = sorted({r["seed"] for r in results})
    a = backends[0]
    out = ["## Decision summary\n\n"]
    for b in backends[1:]:
        if len(backends) > 2:
            out.append(f"### {title(b)} against {title(a)}\n\n")
        out += [f"Mean ± std over {len(seeds)} seed(s); difference = {title(b)} − {title(a)}, paired by seed, with "
                "its 95% Student-t interval; a framework is named ahead only where that interval excludes zero "
                "(*significant*), and a lead the seeds cannot tell from noise says so. Accuracy in % "
                "(difference in points), sizes from the files on disk. Latency rows without a runtime name are each "
                "framework's reference runtime for an fp32 file (for an int8 file, its engine's own int8 runtime, "
                "named under *How each framework did it*); where the two reference runtimes are different kinds "
                "(PyTorch eager against Paddle Inference) the difference is the runtime's, so those rows get no "
                "verdict; "
                "rows *on each framework's best runtime* compare the fastest correct deployment each framework's "
                "own stack offers (named in its section); rows *on ONNX Runtime* run both frameworks' converted "
                "files on one runtime, like with like.\n\n",
                *(f"- {line}\n" for line in headline(metrics, a, b, blocked)), "\n",
                table(["", "what", title(a), title(b), "difference [95% CI]", "ahead"],
                      decision_rows(metrics, a, b, blocked=blocked)), "\n"]
    notes = capability_notes(results, backends)
    settings = _settings_note(results)
    if notes or settings:
        out += ["**How each framework did it**\n\n", *(f"- {n}\n" for n in notes), f"- {settings}\n", "\n"]
    return "".join(out)


def _settings_note(results: list[dict]) -> str:
    """What the two runs share, and which recorded settings differ (details in 'What differs')."""
    envs = [r.get("environment") or {} for r in results]
    differ = [name for name, key in (("threads", "threads"), ("device", "device"),
                                     ("training options", "training_options"))
              if len({json.dumps(e[key], sort_keys=True) for e in envs if e.get(key) is not None}) > 1]
    same = ("Same on both: data stream, initial weights, learning-rate schedule, latency inputs, warm-up and "
            "repeats")
    if differ:
        return same + f"; **differing settings: {', '.join(differ)}** (see *What differs between the two runs*)."
    threads = {e.get("threads") for e in envs}
    return same + f", {threads.pop()} thread(s); kernels, artifact formats and runtimes are each framework's own."


def capability_notes(results: list[dict], backends: list[str]) -> list[str]:
    """Native tool or workaround per compression stage and backend, and stages a backend could not run."""
    notes: dict[str, str] = {}
    for r in results:
        who = title(r["backend"])
        for st in r.get("stages", []):
            kind = stage_type(st["type"])
            note = kind.how_note(who, st) if kind is not None and st.get("status") == "ok" else None
            if note:
                notes.setdefault(f"{who} {st['name']}", note)
        err = r.get("error") or {}
        if r.get("status") != "ok" and err.get("type") == "UnsupportedStage":
            notes.setdefault(f"{who} unsupported {err.get('stage')}",
                             f"{who} cannot run `{err.get('stage')}`: {err.get('message')}")
    return [notes[k] for k in sorted(notes, key=lambda k: (k.split()[0] != title(backends[0]), k))]


def _versions(results: list[dict]) -> dict[str, set[str]]:
    vers: dict[str, set[str]] = defaultdict(set)
    for r in results:
        env = r.get("environment") or {}
        for k, v in (env.get("versions") or {}).items():
            vers[k].add(str(v))
        if env.get("numpy"):
            vers["numpy"].add(env["numpy"])
    return vers


def _commits(results: list[dict]) -> list[str]:
    seen: dict[str, list[str]] = defaultdict(list)
    for r in results:
        c = (r.get("environment") or {}).get("slimbench")
        key = ("not recorded (result written before slimbench recorded its commit)" if c is None else
               f"`{c['commit'][:12]}`" + _local_changes(c))
        seen[key].append(f"{r['backend']} seed {r['seed']}")
    if len(seen) == 1:
        return [next(iter(seen))]
    return [f"{k}: {', '.join(v)}" for k, v in seen.items()]


def _local_changes(commit: dict) -> str:
    """Which run files differed from the commit; results before 2026-12-03 recorded only a flag, set by any
    tracked file (the README, or the reports `make reports` had just published) as well as by code."""
    if not commit.get("dirty"):
        return ""
    if "changed" not in commit:
        return " with local changes (any tracked file; not recorded which)"
    shown = commit["changed"][:5]
    more = len(commit["changed"]) - len(shown)
    return " with local changes to " + ", ".join(f"`{p}`" for p in shown) + (f" and {more} more" if more else "")


def reproducibility_section(results: list[dict], meta: dict[str, Any]) -> str:
    """Everything needed to rerun the comparison and check it is the same experiment."""
    lines = [f"- Command: `{meta.get('command', '?')}`"]
    for ext in meta.get("extended", []):
        lines.append(f"- Extended on {ext['at']} with seed(s) {', '.join(map(str, ext['seeds']))} "
                     f"(`run-recipe --resume RUN_DIR --seeds ...`)")
    recipe = meta.get("recipe") or {}
    if recipe:
        lines.append(f"- Recipe `{meta.get('recipe_name')}` (`{meta.get('recipe_source')}`), profile "
                     f"`{meta.get('profile')}`, digest `{recipe_digest(recipe)}` (resolved recipe without seeds)")
    seeds = sorted({r["seed"] for r in results})
    lines.append(f"- Seeds: {', '.join(map(str, seeds))}; {meta.get('threads', '?')} CPU thread(s) per backend; "
                 f"backends run one after another, never at the same time")
    data = {r["seed"]: r.get("data") or {} for r in results if r.get("data")}
    if data:
        d0 = next(iter(data.values()))
        splits = {d.get("split") for d in data.values()}
        lines.append(f"- Data: {d0.get('dataset')} at {d0.get('image_size')} px, {d0.get('train_size')} train / "
                     f"{d0.get('val_size')} validation images, batch {d0.get('batch_size')}; split hash "
                     + ", ".join(f"`{s}`" for s in sorted(map(str, splits))))
    parity = [(p["max_rel"], p["rtol"]) for r in results for p in (r.get("init_parity") or {}).values()]
    if parity:
        worst = max(parity)
        lines.append(f"- Initial weights: worst logit difference after conversion {worst[0]:.1e} (relative; "
                     f"tolerance {worst[1]:.0e}) over every model, backend and seed")
    cpus = {cpu_label(e.get("cpu") or {}): e.get("cpu") or {} for e in
            (r.get("environment") or {} for r in results)}
    for model, cpu in cpus.items():
        lines.append(f"- CPU: {model}, {cpu.get('logical_cores', '?')} logical cores, flags "
                     f"{' '.join(cpu.get('flags', [])) or NO_FLAGS_OF_INTEREST}")
    gpus = {(r.get("environment") or {}).get("gpu") for r in results} - {None}
    devices = {(r.get("environment") or {}).get("device") for r in results} - {None}
    lines.append(f"- Device: {', '.join(sorted(devices)) or '?'}" + (f"; GPU {', '.join(sorted(gpus))}" if gpus
                                                                     else "; no GPU used"))
    vers = _versions(results)
    order = ["python", "numpy", "torch", "torchvision", "cuda", "paddlepaddle", "paddleslim"]
    lines.append("- Versions: " + ", ".join(f"{k} {'/'.join(sorted(vers[k]))}" for k in
                                            order + sorted(set(vers) - set(order)) if k in vers))
    oss = {(r.get("environment") or {}).get("os") for r in results} - {None}
    if oss:
        lines.append(f"- OS: {', '.join(sorted(oss))}")
    lines.append("- slimbench commit: " + "; ".join(_commits(results)))
    return "## Reproducibility\n\n" + "\n".join(lines) + "\n\n"
