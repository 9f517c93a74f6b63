"""Benchmark plots: scaling, processing against I/O-only, stage times."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from utils.benchmark.summary import PLOTS, PointSummary, _khz, _stage_names
from utils.io import save_figure

log = logging.getLogger(__name__)

__all__ = ["PLOTS", "plot_io_comparison", "plot_scaling", "plot_stage_times"]


# --- plots --------------------------------------------------------------------------------------------


def _cms_style(func):
    """Run a plot function in the CMS style (imported on use: matplotlib is loaded lazily)."""

    @functools.wraps(func)
    def styled(*args, **kwargs):
        from utils.histograms.figures import cms_style

        with cms_style():
            return func(*args, **kwargs)

    return styled


def _save(fig, path: str | Path | None):
    """PNG at a modest resolution: summaries are committed."""
    return save_figure(fig, path, dpi=72)


def _series(summaries: Sequence[PointSummary]) -> dict[str, list[PointSummary]]:
    out: dict[str, list[PointSummary]] = {}
    for s in summaries:
        label = " ".join(s.label.split(" ")[:1] + s.label.split(" ")[2:])  # without the worker count
        out.setdefault(label, []).append(s)
    return {k: sorted(v, key=lambda s: s.workers) for k, v in out.items()}


@_cms_style
def plot_scaling(summaries: Sequence[PointSummary], path: str | Path | None = None):
    """Aggregate wall-time rate and per-core rate versus workers, per series, with the ideal
    (linear from the fewest-worker point) as a dashed line."""
    import matplotlib.pyplot as plt

    fig, (ax_wall, ax_core) = plt.subplots(1, 2, figsize=(14, 7.5))
    for i, (label, pts) in enumerate(_series(summaries).items()):
        color = f"C{i % 10}"
        xs = [s.workers for s in pts]
        wall = [_khz(s.rate_wall_hz) for s in pts]
        ax_wall.plot(xs, wall, "o-", color=color, label=label)
        if wall[0] is not None:
            ax_wall.plot(xs, [wall[0] * x / xs[0] for x in xs], "--", color=color, alpha=0.6)
        ax_core.plot(xs, [_khz(s.rate_per_core_hz) for s in pts], "o-", color=color, label=label)
    ax_wall.plot([], [], "k--", alpha=0.6, label="ideal (linear)")
    workers = sorted({s.workers for s in summaries})
    for ax, ylabel in ((ax_wall, "entries / walltime [kHz]"), (ax_core, "entries / processtime [kHz per core]")):
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel, fontsize="small")
        ax.set_xticks(workers)
        ax.set_ylim(bottom=0)
    handles, labels = ax_wall.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 4), fontsize="x-small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
    return _save(fig, path)


@_cms_style
def plot_io_comparison(summaries: Sequence[PointSummary], path: str | Path | None = None):
    """Rates of each processing point beside its I/O-only reference on the same files (per core
    and in wall time), the ratio written on the processing bar."""
    import matplotlib.pyplot as plt
    import numpy as np

    by_name = {s.point.name: s for s in summaries}
    pairs = [(s, by_name[s.io_reference]) for s in summaries if s.io_reference]
    fig, axes = plt.subplots(1, 2, figsize=(max(12, 2.4 * len(pairs) + 6), 6.5))
    if not pairs:
        for ax in axes:
            ax.text(0.5, 0.5, "no I/O-only reference in this grid", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, path)
    x = np.arange(len(pairs))
    panels = (
        (axes[0], "rate_per_core_hz", "io_ratio_per_core", "entries / processtime [kHz per core]"),
        (axes[1], "rate_wall_hz", "io_ratio_wall", "entries / walltime [kHz]"),
    )
    for ax, rate, ratio, ylabel in panels:
        proc = [_khz(getattr(p, rate)) or 0.0 for p, _ in pairs]
        ref = [_khz(getattr(r, rate)) or 0.0 for _, r in pairs]
        ax.bar(x - 0.2, proc, 0.4, label="processing")
        ax.bar(x + 0.2, ref, 0.4, label="I/O-only, same files")
        for xi, (p, _), h in zip(x, pairs, proc, strict=True):
            if getattr(p, ratio) is not None:
                ax.annotate(f"{getattr(p, ratio):.2f}", (xi - 0.2, h), ha="center", va="bottom", fontsize="x-small")
        ax.set_xticks(
            x,
            [f"{p.executor} {p.workers}w\n{p.mode.replace(' + ', chr(10) + '+ ')}" for p, _ in pairs],
            fontsize="xx-small",
        )
        ax.set_ylabel(ylabel, fontsize="small")
        ax.legend(fontsize="xx-small")
    fig.tight_layout()
    return _save(fig, path)


def _bar_parts(s: PointSummary, stages: Sequence[str]) -> list[tuple[str, float]]:
    """The parts of a point's bar: its time-to-result split where the metrics have one, else the
    notebook stages and the rest of the notebook's wall time as 'other'."""
    if s.time_to_result_s:
        return [(k, v or 0.0) for k, v in s.time_to_result_s.items() if k != "total"]
    parts = [(st, s.stages_s.get(st) or 0.0) for st in stages]
    return [*parts, ("other", max((s.notebook_walltime_s or 0.0) - sum(v for _, v in parts), 0.0))]


@_cms_style
def plot_stage_times(summaries: Sequence[PointSummary], path: str | Path | None = None):
    """The time to result per point as a stacked bar (medians): kernel and imports, worker start,
    input checks, preprocessing, processing, merging, saving, fit, figures, other. Points whose
    metrics have no time-to-result split show their notebook stages instead."""
    import matplotlib.pyplot as plt

    stages = _stage_names(summaries)
    bars = [_bar_parts(s, stages) for s in summaries]
    names = list(dict.fromkeys(name for bar in bars for name, _ in bar))
    fig, ax = plt.subplots(figsize=(12, max(5, 0.6 * len(summaries) + 3)))
    y = list(range(len(summaries)))
    left = [0.0] * len(summaries)
    palette = plt.get_cmap("tab10")  # ten distinct colours: the style's cycle repeats sooner
    for i, name in enumerate(names):
        widths = [dict(bar).get(name, 0.0) for bar in bars]
        ax.barh(y, widths, left=left, label=name, color="lightgrey" if name == "other" else palette(i % 10))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(y, [s.label for s in summaries], fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("time to result [s] (median)")
    ax.legend(fontsize="x-small", ncols=min(len(names), 4), loc="lower left", bbox_to_anchor=(0.0, 1.01))
    fig.tight_layout()
    return _save(fig, path)
