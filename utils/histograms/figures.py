"""Figures of the analysis histograms: functions that take data and an optional output path,
and return the figure. The CMS style is set once, by :func:`set_style`."""

from __future__ import annotations

import logging
from pathlib import Path

import hist
import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget")) else None
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402

from utils.config import AnalysisConfig  # noqa: E402
from utils.histograms.accumulate import AnalysisHistograms  # noqa: E402
from utils.io import save_figure  # noqa: E402

log = logging.getLogger(__name__)

OBSERVABLE_LABELS = {"ht": r"$H_T$ [GeV]", "m_bjj": r"$m_{bjj}$ [GeV]"}
PROCESS_LABELS = {
    "ttbar": r"$t\bar{t}$",
    "wjets": "W+jets",
    "single_top_s_chan": "single top, s-channel",
    "single_top_t_chan": "single top, t-channel",
    "single_top_tW": "tW",
    "data": "data",
}


def process_label(process: str) -> str:
    return PROCESS_LABELS.get(process, process)


def set_style() -> None:
    """The CMS style of mplhep, once for every figure."""
    plt.style.use(mplhep.style.CMS)
    plt.rcParams["figure.figsize"] = (9, 7)


def region_title(config: AnalysisConfig, region: str) -> str:
    r = config.region(region)
    tags = f"{r.min_btags}" if r.max_btags == r.min_btags else f">= {r.min_btags}"
    return f">= {config.min_jets} jets, {tags} b-tag(s) ({region})"


def plot_stack(
    histograms: AnalysisHistograms, config: AnalysisConfig, region: str, path: str | Path | None = None,
    classification: int | None = None,
) -> plt.Figure:  # fmt: skip
    """Stacked nominal distributions of every MC process in a region (data overlaid if present)."""
    h = histograms.hist
    cls = sum if classification is None else hist.loc(classification)
    processes = [p for p in h.axes["process"] if p != "data" and (p, "nominal") in histograms.filled]
    fig, ax = plt.subplots()
    stack = [h[{"region": region, "process": p, "variation": "nominal", "classification": cls}] for p in processes]
    order = sorted(range(len(stack)), key=lambda i: stack[i].sum().value)
    mplhep.histplot([stack[i] for i in order], label=[process_label(processes[i]) for i in order], stack=True,
                    histtype="fill",
                    edgecolor="grey", linewidth=1, ax=ax)  # fmt: skip
    if ("data", "nominal") in histograms.filled:
        data = h[{"region": region, "process": "data", "variation": "nominal", "classification": cls}]
        mplhep.histplot(data, histtype="errorbar", color="black", label="data", ax=ax)
    observable = config.region(region).observable
    ax.set_xlabel(OBSERVABLE_LABELS.get(observable, observable))
    ax.set_ylabel("Events")
    ax.legend(frameon=False, title=region_title(config, region), title_fontsize=14)
    mplhep.cms.label("Open Data", data=True, lumi=round(config.luminosity / 1000.0, 2), com=13, ax=ax, loc=0)
    return save_figure(fig, path)


def plot_variations(
    histograms: AnalysisHistograms, config: AnalysisConfig, region: str, process: str, variations: list[str],
    path: str | Path | None = None,
) -> plt.Figure:  # fmt: skip
    """A process's nominal distribution with the given systematic variations overlaid."""
    h = histograms.hist
    fig, ax = plt.subplots()
    for variation in ["nominal", *variations]:
        if (process, variation) not in histograms.filled:
            raise KeyError(f"variation {variation!r} of {process!r} was not filled")
        mplhep.histplot(h[{"region": region, "process": process, "variation": variation, "classification": sum}],
                        label=variation, linewidth=2, ax=ax)  # fmt: skip
    observable = config.region(region).observable
    ax.set_xlabel(OBSERVABLE_LABELS.get(observable, observable))
    ax.set_ylabel("Events")
    ax.legend(frameon=False, title=f"{process_label(process)}, {region_title(config, region)}", title_fontsize=14)
    return save_figure(fig, path)
