"""Report figures (matplotlib, Agg): the Pareto views, training curves, sparsity schedules, int8 vs fp32.

Every figure is built from result records only and saved without timestamps or software metadata, so the
same result files give byte-identical PNGs.
"""
from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from common.backend_names import color, marker, title  # noqa: E402
from common.report.decision import Metric  # noqa: E402
from common.stages.registry import finished_stages, stage_types  # noqa: E402


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    caption: str
    png: bytes


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _slot(what: str) -> str | None:
    """The model slot named in a metric label (between backticks)."""
    parts = what.split("`")
    return parts[1] if len(parts) >= 3 else None


def pareto_metrics(metrics: list[Metric], x_group: str) -> tuple[dict[str, Metric], dict[str, Metric]]:
    """slot -> accuracy metric and slot -> latency (batch 1) or size metric: each model's own row only. Rows on
    another runtime (`... on ONNX Runtime`, `... on each framework's best runtime`) name the same slot and would
    otherwise replace it."""
    acc = {_slot(m.what): m for m in metrics if m.group == "accuracy" and m.what.endswith("`")}
    if x_group == "latency":
        xs = {_slot(m.what): m for m in metrics if m.group == "latency" and m.what.startswith("batch 1 ")
              and m.what.endswith("`")}
    else:
        xs = {_slot(m.what): m for m in metrics if m.group == "size"}
    return acc, xs


def pareto_figure(metrics: list[Metric], backends: list[str], x_group: str, name: str) -> Figure | None:
    """Accuracy against latency (batch 1) or file size, one point per model and backend, error bars = std."""
    acc, xs = pareto_metrics(metrics, x_group)
    xlabel = "batch-1 latency, p50 (ms, log scale)" if x_group == "latency" else "file on disk (MB, log scale)"
    slots = [s for s in acc if s in xs]
    if not slots:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for b in backends:
        pts = []
        for s in slots:
            sa, sx = acc[s].summary(b), xs[s].summary(b)
            if sa is None or sx is None:
                continue
            pts.append((s, sx, sa))
        if not pts:
            continue
        ax.errorbar([p[1].mean for p in pts], [p[2].mean * 100 for p in pts],
                    xerr=[p[1].std for p in pts], yerr=[p[2].std * 100 for p in pts], fmt=marker(b),
                    color=color(b), label=title(b), capsize=3, markersize=7, linestyle="none")
        for s, sx, sa in pts:
            ax.annotate(s, (sx.mean, sa.mean * 100), textcoords="offset points", xytext=(6, 4), fontsize=8,
                        color=color(b))
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    lo, hi = ax.get_xlim()
    if hi / lo < 12:  # within about a decade the minor ticks are the only labels; beyond, they crowd
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    else:
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 on the validation split (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    what = "latency" if x_group == "latency" else "size"
    ax.set_title(f"Accuracy vs {what}: up and to the left is better")
    return Figure(name, f"Accuracy vs {what}",
                  f"Each point is one model on one framework: mean over seeds, bars = std over seeds. "
                  f"{'Latency' if what == 'latency' else 'Size'} is measured on the exported (or int8) file"
                  + (", on each framework's reference runtime (the other runtimes are in the decision summary)."
                     if what == "latency" else "."),
                  png(fig))


def training_figure(results: list[dict], backends: list[str]) -> Figure | None:
    """Train loss and validation top-1 per epoch, both frameworks on one chart per stage (mean, min-max band)."""
    curves: dict[str, dict[str, list[list[dict]]]] = defaultdict(lambda: defaultdict(list))
    for r, st, kind in finished_stages(results):
        for hist in kind.histories(st):
            curves[st["name"]][r["backend"]].append(hist)
    stages = [s for s, by_b in curves.items() if any(len(h[0]) > 0 for h in by_b.values())]
    if not stages:
        return None
    fig, axes = plt.subplots(len(stages), 2, figsize=(9.5, 2.6 * len(stages)), squeeze=False)
    for row, stage in enumerate(stages):
        for col, (key, label, scale) in enumerate((("train_loss", "train loss", 1.0),
                                                    ("val_top1", "validation top-1 (%)", 100.0))):
            ax = axes[row][col]
            for b in backends:
                runs = curves[stage].get(b)
                if not runs:
                    continue
                n = min(len(h) for h in runs)
                vals = np.array([[h[i][key] * scale for i in range(n)] for h in runs])
                epochs = np.arange(1, n + 1)
                ax.plot(epochs, vals.mean(axis=0), marker=marker(b), color=color(b), label=title(b))
                if len(runs) > 1:
                    ax.fill_between(epochs, vals.min(axis=0), vals.max(axis=0), color=color(b), alpha=0.15)
            longest = max(len(h) for runs in curves[stage].values() for h in runs)
            ax.set_xticks(range(1, longest + 1))
            ax.set_xlim(0.7, longest + 0.3)
            ax.set_title(f"{stage}: {label}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure("training_curves", "Training curves",
                  "Per epoch, mean over seeds; the band spans the lowest and highest seed.", png(fig))


def report_figures(results: list[dict], backends: list[str], metrics: list[Metric]) -> list[Figure]:
    """Every figure that applies to these results; `metrics` is collect_metrics(results)."""
    figs = [pareto_figure(metrics, backends, "latency", "accuracy_vs_latency"),
            pareto_figure(metrics, backends, "size", "accuracy_vs_size"),
            training_figure(results, backends)]
    figs += [f for kind in stage_types().values() for f in kind.figures(results, backends)]
    return [f for f in figs if f is not None]
