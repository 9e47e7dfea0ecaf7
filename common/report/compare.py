"""`slimbench compare RUN_A RUN_B`: the same recipe run twice (two machines, two library versions, two
commits) side by side, metric by metric and framework by framework, with what changed between the runs."""
from __future__ import annotations

from pathlib import Path

from common.backend_names import ordered, title
from common.report.decision import collect_metrics, fmt_difference
from common.errors import SlimbenchError
from common.report.markdown_table import table
from common.recipe.loader import recipe_digest
from common.report.paired import load_report_results
from common.results import read_json
from common.stats import paired_difference
from common.sysinfo import cpu_description


def _env_facts(results: list[dict]) -> dict[str, str]:
    """Facts that can explain a difference between two runs, one string each."""
    facts: dict[str, set[str]] = {}

    def add(key: str, value: object) -> None:
        facts.setdefault(key, set()).add(str(value))

    for r in results:
        env = r.get("environment") or {}
        for k, v in (env.get("versions") or {}).items():
            add(k, v)
        if env.get("numpy"):
            add("numpy", env["numpy"])
        cpu = env.get("cpu") or {}
        add("CPU", cpu_description(cpu))
        add("device", env.get("gpu") or env.get("device", "?"))
        add("threads", env.get("threads", "?"))
        c = env.get("slimbench")
        add("slimbench commit", c["commit"][:12] + (" +changes" if c.get("dirty") else "") if c else "not recorded")
    return {k: ", ".join(sorted(v)) for k, v in facts.items()}


def compare_runs(run_a: Path, run_b: Path) -> str:
    """Markdown: run facts that differ, then every metric of both runs per framework with B − A."""
    (ra, _), (rb, _) = load_report_results(run_a), load_report_results(run_b)
    for d, r in ((run_a, ra), (run_b, rb)):
        if not r:
            raise SlimbenchError(f"{d}: no result files (<backend>/seed-<n>/result.json): pass a run directory")
    meta_a, meta_b = (read_json(d / "run.json") if (d / "run.json").is_file() else {} for d in (run_a, run_b))
    out = [f"# Run comparison: {meta_a.get('recipe_name', '?')}\n\n",
           f"A = `{run_a}`\n\nB = `{run_b}`\n\n"]
    da, db = (recipe_digest(m["recipe"]) if m.get("recipe") else None for m in (meta_a, meta_b))
    if da != db:
        out.append(f"**The recipes differ** (digest A `{da}`, B `{db}`): differences below may come from the recipe "
                   "itself, not from the machine or the libraries.\n\n")
    fa, fb = _env_facts(ra), _env_facts(rb)
    rows = [[k, fa.get(k, "–"), fb.get(k, "–")] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    out += ["## What differs between the runs\n\n",
            table(["", "A", "B"], rows) if rows else "Nothing recorded differs (versions, CPU, device, threads, "
                                                       "commit).\n", "\n"]
    ma = {(m.group, m.what): m for m in collect_metrics(ra)}
    mb = {(m.group, m.what): m for m in collect_metrics(rb)}
    backends = ordered(r["backend"] for r in ra + rb)
    rows = []
    for key in list(ma) + [k for k in mb if k not in ma]:
        m_a, m_b = ma.get(key), mb.get(key)
        ref = m_a or m_b
        for b in backends:
            sa = m_a.summary(b) if m_a else None
            sb = m_b.summary(b) if m_b else None
            if sa is None and sb is None:
                continue
            d = paired_difference(m_a.by_backend.get(b, {}), m_b.by_backend.get(b, {})) if m_a and m_b else None
            rel = f"{d.mean / sa.mean * 100 + 0.0:+.1f}%" if d and sa and sa.mean else "–"
            verdict = ("–" if d is None or d.significant is None else
                       "significant" if d.significant else "within seed noise")
            rows.append([ref.group, ref.what, title(b), ref.fmt_summary(sa), ref.fmt_summary(sb),
                         fmt_difference(ref, d), rel, verdict])
    out += ["## Metrics (mean ± std over seeds; B − A paired by seed, 95% interval)\n\n",
            table(["", "what", "framework", "A", "B", "B − A", "relative", "verdict"], rows), "\n"]
    return "".join(out)
