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

from common.decision import Metric, title  # noqa: E402

COLORS = {"torch": "#d6604d", "paddle": "#2166ac"}
MARKERS = {"torch": "o", "paddle": "s"}


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    caption: str
    png: bytes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _color(backend: str) -> str:
    return COLORS.get(backend, "#555555")


def _slot(what: str) -> str | None:
    """The model slot named in a metric label (between backticks)."""
    parts = what.split("`")
    return parts[1] if len(parts) >= 3 else None


def pareto_figure(metrics: list[Metric], backends: list[str], x_group: str, name: str) -> Figure | None:
    """Accuracy against latency (batch 1) or file size, one point per model and backend, error bars = std."""
    acc = {_slot(m.what): m for m in metrics if m.group == "accuracy"}
    if x_group == "latency":
        xs = {_slot(m.what): m for m in metrics if m.group == "latency" and m.what.startswith("batch 1 ")}
        xlabel = "batch-1 latency, p50 (ms, log scale)"
    else:
        xs = {_slot(m.what): m for m in metrics if m.group == "size"}
        xlabel = "file on disk (MB, log scale)"
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
                    xerr=[p[1].std for p in pts], yerr=[p[2].std * 100 for p in pts], fmt=MARKERS.get(b, "o"),
                    color=_color(b), label=title(b), capsize=3, markersize=7, linestyle="none")
        for s, sx, sa in pts:
            ax.annotate(s, (sx.mean, sa.mean * 100), textcoords="offset points", xytext=(6, 4), fontsize=8,
                        color=_color(b))
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
                  f"{'Latency' if what == 'latency' else 'Size'} is measured on the exported (or int8) file.",
                  _png(fig))


def training_figure(results: list[dict], backends: list[str]) -> Figure | None:
    """Train loss and validation top-1 per epoch, both frameworks on one chart per stage (mean, min-max band)."""
    curves: dict[str, dict[str, list[list[dict]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        for st in r.get("stages", []):
            if st.get("status") != "ok":
                continue
            hist = st.get("history") or (st.get("qat") or {}).get("history")
            if st["type"] in ("train", "distill", "prune", "quantize") and hist:
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
                ax.plot(epochs, vals.mean(axis=0), marker=MARKERS.get(b, "o"), color=_color(b), label=title(b))
                if len(runs) > 1:
                    ax.fill_between(epochs, vals.min(axis=0), vals.max(axis=0), color=_color(b), alpha=0.15)
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
                  "Per epoch, mean over seeds; the band spans the lowest and highest seed.", _png(fig))


def sparsity_figure(results: list[dict], backends: list[str]) -> Figure | None:
    """Target and reached sparsity at each mask update of gradual pruning, per framework."""
    series: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for r in results:
        for st in r.get("stages", []):
            if st.get("status") == "ok" and st["type"] == "prune" and st.get("sparsity_curve"):
                series[st["name"]].setdefault(r["backend"], st["sparsity_curve"])  # one seed: schedules are equal
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 3.6), squeeze=False)
    for ax, (stage, by_b) in zip(axes[0], series.items()):
        first = next(iter(by_b.values()))
        ax.plot([c["step"] for c in first], [c["target"] * 100 for c in first], color="#333333", linestyle="--",
                label="target (common/schedule)")
        for b in backends:
            if b in by_b:
                ax.plot([c["step"] for c in by_b[b]], [c["achieved"] * 100 for c in by_b[b]],
                        marker=MARKERS.get(b, "o"), markersize=3, color=_color(b), linestyle="none",
                        label=f"reached, {title(b)}")
        ax.set_title(f"{stage}: sparsity schedule", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("sparsity of pruned layers (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure("sparsity_schedule", "Sparsity schedule",
                  "Reached sparsity at every mask update (first seed) against the shared target curve.", _png(fig))


def quantization_figure(results: list[dict], backends: list[str]) -> Figure | None:
    """int8 against fp32 per framework: file size, top-1, batch-1 latency (mean over seeds, error bar = std)."""
    vals: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in results:
        for st in r.get("stages", []):
            if st.get("status") == "ok" and st["type"] == "quantize":
                for kind in ("fp32", "int8"):
                    rec = st[kind]
                    bs = next(iter(rec["latency"]))
                    vals[(r["backend"], kind, "size")].append(rec["size_mb"])
                    vals[(r["backend"], kind, "top1")].append(rec["top1"] * 100)
                    vals[(r["backend"], kind, "lat")].append(rec["latency"][bs]["p50_ms"])
    if not vals:
        return None
    present = [b for b in backends if (b, "fp32", "size") in vals]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    width = 0.38
    for ax, (key, label) in zip(axes, (("size", "file MB"), ("top1", "top-1 (%)"), ("lat", "batch-1 p50 ms"))):
        x = np.arange(len(present))
        for k, (kind, hatch) in enumerate((("fp32", ""), ("int8", "//"))):
            means = [np.mean(vals[(b, kind, key)]) for b in present]
            stds = [np.std(vals[(b, kind, key)], ddof=1) if len(vals[(b, kind, key)]) > 1 else 0 for b in present]
            bars = ax.bar(x + (k - 0.5) * width, means, width, yerr=stds, capsize=3, label=kind, hatch=hatch,
                          color=[_color(b) for b in present], alpha=0.55 if kind == "fp32" else 0.95,
                          edgecolor="black", linewidth=0.6)
            ax.bar_label(bars, fmt="%.1f" if key != "lat" else "%.2f", fontsize=7, padding=2)
        ax.set_xticks(x, [title(b) for b in present])
        ax.set_title(label, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return Figure("int8_vs_fp32", "int8 vs fp32",
                  "The int8 file against the fp32 file of the same weights, on each framework's deployment runtime.",
                  _png(fig))


def report_figures(results: list[dict], backends: list[str], metrics: list[Metric]) -> list[Figure]:
    """Every figure that applies to these results; `metrics` is collect_metrics(results)."""
    figs = [pareto_figure(metrics, backends, "latency", "accuracy_vs_latency"),
            pareto_figure(metrics, backends, "size", "accuracy_vs_size"),
            training_figure(results, backends), sparsity_figure(results, backends),
            quantization_figure(results, backends)]
    return [f for f in figs if f is not None]
