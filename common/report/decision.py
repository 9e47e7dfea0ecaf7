"""The numbers a team decides on: per stage, which framework is ahead on accuracy, size, latency and training
time, by how much, and whether the difference survives the seed-to-seed spread.

Built from result records only (no framework imports), so reports and `slimbench compare` share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from common.backend_names import BACKEND_TITLES, title  # noqa: F401  (re-exported for older imports)
from common.stages.registry import finished_stages
from common.stats import PairedDifference, Summary, paired_difference, summarize


@dataclass
class Metric:
    """One comparable quantity, e.g. top-1 of `student_kd` or batch-1 latency of its exported file."""
    group: str  # accuracy | size | latency | training time
    what: str
    unit: str
    higher_is_better: bool
    scale: float = 1.0  # display scale (100 for fractions shown as %)
    digits: int = 2
    # "reference" for a latency timed on each framework's reference runtime, which need not be the same kind of
    # runtime on both sides (PyTorch eager against Paddle Inference): see unlike_runtimes
    runtime_kind: str | None = None
    by_backend: dict[str, dict[int, float]] = field(default_factory=dict)
    runtimes: dict[str, set[str]] = field(default_factory=dict)  # backend -> the runtimes its values ran on
    # backend -> deployment candidates its "best" search left out (with why): its best figure is then an upper bound
    untried: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, backend: str, seed: int, value: float | None, runtime: str | None = None,
            untried: dict[str, str] | None = None) -> None:
        if value is not None:
            self.by_backend.setdefault(backend, {})[seed] = float(value)
            if runtime:
                self.runtimes.setdefault(backend, set()).add(runtime)
            if untried:
                self.untried.setdefault(backend, {}).update(untried)

    def summary(self, backend: str) -> Summary | None:
        vals = list(self.by_backend.get(backend, {}).values())
        return summarize(vals) if vals else None

    def difference(self, a: str, b: str) -> PairedDifference | None:
        """b - a, paired by seed."""
        return paired_difference(self.by_backend.get(a, {}), self.by_backend.get(b, {}))

    def fmt(self, value: float) -> str:
        return f"{value * self.scale:.{self.digits}f}{self.unit}"

    def fmt_summary(self, s: Summary | None) -> str:
        if s is None:
            return "–"
        return self.fmt(s.mean) + (f" ± {s.std * self.scale:.{self.digits}f}" if s.n > 1 else "")


def collect_metrics(results: list[dict]) -> list[Metric]:
    """Every metric the summary compares, in report order (stages as the recipe ran them); each stage type
    contributes its own (common/stages/<type>.py `metrics`)."""
    metrics: dict[tuple[str, str], Metric] = {}

    def metric(group: str, what: str, unit: str, higher: bool, scale: float = 1.0, digits: int = 2,
               runtime_kind: str | None = None) -> Metric:
        return metrics.setdefault((group, what), Metric(group, what, unit, higher, scale, digits, runtime_kind))

    # a failed run's partial figures would bias the means; the report lists the failure
    for r, st, kind in finished_stages([r for r in results if r.get("status") == "ok"]):
        kind.metrics(metric, r["backend"], r["seed"], r, st)
    order = {"accuracy": 0, "size": 1, "latency": 2, "training time": 3}
    return sorted(metrics.values(), key=lambda m: order[m.group])


@dataclass(frozen=True)
class Verdict:
    ahead: str | None  # backend name, None for a tie, no comparison or a withheld verdict
    relative: float | None  # |difference| / the other backend's mean
    difference: PairedDifference | None
    text: str
    withheld: str | None = None  # why the numbers cannot carry a verdict
    # "validity" (common/report/validity.py), "runtimes" (unlike_runtimes), "untried" (untried_behind) or "noise"
    # (a difference whose interval over seeds spans zero)
    withheld_by: str | None = None


# metric -> why its row gets no verdict (None: it may have one)
Blocker = Callable[["Metric"], "str | None"]


def subject(m: Metric) -> str | None:
    """The model slot (or, for training time, the stage) a metric is about: the name in its backticks."""
    parts = m.what.split("`")
    return parts[1] if len(parts) >= 3 else None


def runtime_family(runtime: str) -> str:
    """'Paddle Inference (AnalysisPredictor, oneDNN, IR optim on) on CPU' -> 'Paddle Inference'."""
    return runtime.split(" (")[0].removesuffix(" on CPU").strip()


def unlike_runtimes(m: Metric, a: str, b: str) -> str | None:
    """Why a reference-runtime latency row cannot say which framework is faster: the two sides ran different
    kinds of runtime, so the difference is the runtime's (issue 14: like with like). None where it may judge."""
    if m.runtime_kind != "reference":
        return None
    fa, fb = ({runtime_family(r) for r in m.runtimes.get(x, ())} for x in (a, b))
    if not fa or not fb or fa == fb:
        return None
    return (f"unlike runtimes ({' / '.join(sorted(fa))} against {' / '.join(sorted(fb))}); "
            "the best-runtime and ONNX Runtime rows compare like with like")


def untried_behind(m: Metric, behind: str) -> str | None:
    """Why a best-runtime row cannot name the other framework ahead: the side behind left deployment candidates
    untried, so its best figure is only an upper bound (an untried path could only make it faster). Where the
    side that left them out is ahead anyway, the verdict stands."""
    left_out = m.untried.get(behind)
    if not left_out:
        return None
    who = title(behind)
    return "; ".join(f"{who}'s {runtime_family(name).removeprefix(who + ' ')} not tried ({why})" for name, why in
                     sorted(left_out.items())) + f", so {who}'s best may be faster"


def verdict(m: Metric, a: str, b: str, blocked: Blocker = lambda m: None) -> Verdict:
    """Who is ahead on `m`, by how much, and how sure we are; 'no verdict' with the reason where the numbers
    cannot carry one."""
    d = m.difference(a, b)
    sa, sb = m.summary(a), m.summary(b)
    for cause, reason in (("validity", blocked(m)), ("runtimes", unlike_runtimes(m, a, b))):
        if reason:
            return Verdict(None, None, d, f"no verdict: {reason}", withheld=reason, withheld_by=cause)
    if d is None or sa is None or sb is None:
        missing = [title(x) for x, s in ((a, sa), (b, sb)) if s is None]
        return Verdict(None, None, d, "no result from " + " and ".join(missing) if missing else "no common seed")
    if d.mean == 0:
        return Verdict(None, 0.0, d, "tie")
    b_better = (d.mean > 0) == m.higher_is_better
    ahead = b if b_better else a
    reason = untried_behind(m, a if b_better else b)
    if reason:
        return Verdict(None, None, d, f"no verdict: {reason}", withheld=reason, withheld_by="untried")
    base = sa.mean if b_better else sb.mean  # the framework behind
    rel = abs(d.mean) / abs(base) if base else None
    if m.unit == "%":
        by = f"+{abs(d.mean) * m.scale:.2f} pts"
    elif rel is not None:
        by = f"{_percent(rel)} {'higher' if m.higher_is_better else 'lower'}"
    else:
        by = "?"
    if not d.significant:  # a lead the seeds cannot tell from noise names no framework
        reason = (f"within seed noise ({title(ahead)} {by}; " +
                  ("1 seed, no interval)" if d.significant is None else f"the 95% interval spans zero, {d.n} seeds)"))
        return Verdict(None, rel, d, f"no verdict: {reason}", withheld=reason, withheld_by="noise")
    return Verdict(ahead, rel, d, f"**{title(ahead)}**, {by} (significant, {d.n} seeds)")


def _percent(rel: float) -> str:
    """A relative difference as the report prints it: whole percent, one decimal under 1% (a significant
    0.5% difference must not read "0% lower")."""
    return f"{rel * 100:.1f}%" if rel * 100 < 0.95 else f"{rel * 100:.0f}%"


def headline(metrics: list[Metric], a: str, b: str, blocked: Blocker = lambda m: None) -> list[str]:
    """One line per group: how many comparisons each framework leads (a lead is always significant over the
    seeds); rows without a verdict are counted apart, by cause."""
    lines = []
    for group in dict.fromkeys(m.group for m in metrics):
        every = [verdict(m, a, b, blocked) for m in metrics if m.group == group]
        verdicts = [v for v in every if v.withheld is None]
        parts = []
        for who in (a, b):
            won = [v for v in verdicts if v.ahead == who]
            if not won:
                continue
            parts.append(f"{title(who)} ahead on {len(won)} (significant)")
        ties = sum(1 for v in verdicts if v.ahead is None)
        if ties:
            parts.append(f"{ties} tie(s) or not comparable")
        for by, why in (("validity", "see the validity checks"), ("runtimes", "unlike runtimes"),
                        ("untried", "a best-runtime search left candidates out"), ("noise", "within seed noise")):
            withheld = sum(1 for v in every if v.withheld_by == by)
            if withheld:
                parts.append(f"{withheld} without verdict ({why})")
        n = len(every)
        lines.append(f"**{group}** ({n} comparison{'s' if n != 1 else ''}): " + "; ".join(parts))
    return lines


def fmt_difference(m: Metric, d: PairedDifference | None) -> str:
    if d is None:
        return "–"
    s = f"{d.mean * m.scale + 0.0:+.{m.digits}f}"
    if d.ci95 is not None:
        lo, hi = (v * m.scale + 0.0 for v in d.ci95)
        s += f" [{lo:+.{m.digits}f}, {hi:+.{m.digits}f}]"
    return s


def decision_rows(metrics: list[Metric], a: str, b: str, keep: Callable[[Metric], bool] = lambda m: True,
                  blocked: Blocker = lambda m: None) -> list[list[str]]:
    rows = []
    for m in metrics:
        if not keep(m):
            continue
        v = verdict(m, a, b, blocked)
        unit = "pts" if m.unit == "%" else m.unit.strip()
        rows.append([m.group, m.what, m.fmt_summary(m.summary(a)), m.fmt_summary(m.summary(b)),
                     fmt_difference(m, v.difference) + (f" {unit}" if v.difference else ""), v.text])
    return rows


def summary_records(metrics: list[Metric], backends: list[str], blocked: Blocker = lambda m: None) -> list[dict]:
    """Machine-readable decision summary: per metric, each backend's seed statistics and the paired difference
    of each other backend against the first with its 95% interval. Values in the metric's own units
    (accuracy as a fraction, sizes in MB, latency in ms, times in s)."""
    out = []
    for m in metrics:
        rec: dict = {"group": m.group, "what": m.what.replace("`", ""),
                     "unit": "fraction" if m.unit == "%" else m.unit.strip() or None,
                     "higher_is_better": m.higher_is_better, "backends": {}}
        for b in backends:
            s = m.summary(b)
            if s is not None:
                rec["backends"][b] = {"n": s.n, "mean": s.mean, "std": s.std, "min": s.min, "max": s.max,
                                      "by_seed": {str(k): v for k, v in sorted(m.by_backend[b].items())}}
        # Each other backend against the first (the reference): `difference` with two backends, as before;
        # `differences` keyed by backend with more.
        diffs = {}
        for other in backends[1:]:
            d = m.difference(backends[0], other)
            v = verdict(m, backends[0], other, blocked)
            diffs[other] = None if d is None else {
                "of": f"{other} - {backends[0]}", "n": d.n, "mean": d.mean, "std": d.std,
                "ci95": list(d.ci95) if d.ci95 else None, "significant": d.significant, "ahead": v.ahead,
                "no_verdict": v.withheld}
        if len(backends) == 2:
            rec["difference"] = diffs[backends[1]]
        elif len(backends) > 2:
            rec["differences"] = diffs
        out.append(rec)
    return out
