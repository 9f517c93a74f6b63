"""Figures of the analysis histograms: functions that take data and an optional output path,
and return the figure.

The CMS style of mplhep applies per figure, through :func:`cms_style` (a context manager and a
decorator), never to the whole session: a notebook's or another module's own figures keep their
style.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import hist
import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget")) else None
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib._pylab_helpers import Gcf  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from utils.config import AnalysisConfig  # noqa: E402
from utils.errors import AGCError  # noqa: E402
from utils.histograms.accumulate import AnalysisHistograms, pseudodata  # noqa: E402
from utils.histograms.layout import NO_MINOR_TICKS, place_stacked  # noqa: E402
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
FIGSIZE = (9.0, 8.0)


def process_label(process: str) -> str:
    return PROCESS_LABELS.get(process, process)


class CMSStyledFigure(Figure):
    """A figure made in :func:`cms_style` and drawn in it too, wherever it is drawn.

    Matplotlib looks fonts up when a figure is drawn, not when its texts are made: a figure
    drawn after the style is gone (by the notebook's inline backend after the cell, or a later
    ``savefig``) would mix fonts, and its mathtext would look for matplotlib's default fonts
    (``mathtext.cal`` 'cursive', which the CMS style replaces), with a findfont warning in the
    notebook."""

    def draw(self, renderer):
        with plt.style.context(mplhep.style.CMS):
            return super().draw(renderer)


@contextmanager
def cms_style(figsize: tuple[float, float] = FIGSIZE) -> Iterator[None]:
    """The CMS style of mplhep for the figures made inside (``with cms_style(): ...`` or as a
    decorator); the previous style is back afterwards. The pyplot figures made inside keep the
    style when they are drawn later (:class:`CMSStyledFigure`)."""
    before = {id(m.canvas.figure) for m in Gcf.get_all_fig_managers()}
    try:
        with plt.style.context(mplhep.style.CMS), plt.rc_context({"figure.figsize": figsize}):
            yield
    finally:
        for manager in Gcf.get_all_fig_managers():
            fig = manager.canvas.figure
            if id(fig) not in before and type(fig) is Figure:
                fig.__class__ = CMSStyledFigure


def region_title(config: AnalysisConfig, region: str) -> str:
    r = config.region(region)
    tags = f"{r.min_btags}" if r.max_btags == r.min_btags else rf"$\geq$ {r.min_btags}"
    return rf"$\geq$ {config.min_jets} jets, {tags} b-tag ({region})"


def variation_label(config: AnalysisConfig, systematic: str) -> str:
    """A readable name of a systematic (its name without ``_up``/``_down``)."""
    if systematic == _base(config.pt_scale_name):
        return f"jet energy scale ({(config.pt_scale_factor - 1) * 100:+.0f}%)"
    if systematic == _base(config.pt_res_name):
        return f"jet energy resolution ({config.pt_res_sigma * 100:.0f}%)"
    prefix = f"{config.btag_name}_"
    if systematic.startswith(prefix) and systematic[len(prefix) :].isdigit():
        return f"b-tag weight, jet {int(systematic[len(prefix) :]) + 1}"
    for fw in config.flat_weights:
        if systematic == fw.name:
            return f"normalisation {fw.name.replace('_', ' ')} ({fw.magnitude * 100:.1f}%)"
    return systematic.replace("_", " ")


def _base(variation: str) -> str:
    for suffix in ("_up", "_down"):
        if variation.endswith(suffix):
            return variation[: -len(suffix)]
    return variation


def _cms_label(config: AnalysisConfig, ax: plt.Axes, data: bool) -> None:
    cms_header(ax, data=data, lumi_fb=round(config.luminosity / 1000.0, 2))


def cms_header(ax: plt.Axes, data: bool, lumi_fb: float | None = None, com: float = 13, fontsize: float = 18) -> None:
    """The CMS header above ``ax`` as plain texts: "CMS Open Data" (or "CMS Simulation") at the
    left, luminosity and energy at the right. The look of ``mplhep.cms.label(loc=0)``, without
    its drawing passes to place the texts (seconds per figure under load)."""
    cms = ax.text(0.0, 1.005, "CMS", transform=ax.transAxes, ha="left", va="bottom", fontsize=fontsize * 1.3,
                  fontweight="bold")  # fmt: skip
    ax.annotate("Open Data" if data else "Simulation", xy=(1.0, 0.0), xycoords=cms, xytext=(fontsize / 3, 0),
                textcoords="offset points", ha="left", va="bottom", fontsize=fontsize, fontstyle="italic")  # fmt: skip
    energy = f"({com:g} TeV)"
    ax.text(1.0, 1.005, energy if lumi_fb is None else f"{lumi_fb:g} fb$^{{-1}}$ {energy}", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=fontsize)  # fmt: skip


def ratio_axes() -> tuple[plt.Figure, plt.Axes, plt.Axes]:
    """A distribution over its ratio panel (x shared), without minor ticks; place them with
    :func:`utils.histograms.layout.place_stacked` once everything is drawn."""
    with plt.rc_context(NO_MINOR_TICKS):
        fig, (ax, rax) = plt.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    return fig, ax, rax


def _save(fig: plt.Figure, ax: plt.Axes, rax: plt.Axes, path: str | Path | None) -> plt.Figure:
    place_stacked(fig, [ax, rax], hspace=0.06)
    return save_figure(fig, path, png_compression=1)


def headroom(ax: plt.Axes, top: float, fraction: float = 0.45) -> None:
    """Room above the distributions for the legend: they fill the lower ``1 - fraction``."""
    ax.set_ylim(0, top / (1.0 - fraction) if top > 0 else 1.0)


@cms_style()
def plot_stack(
    histograms: AnalysisHistograms, config: AnalysisConfig, region: str, path: str | Path | None = None,
    classification: int | None = None, observed: str = "pseudo-data",
) -> plt.Figure:  # fmt: skip
    """Stacked nominal distributions of every MC process in a region, the observed events
    overlaid, and their ratio to the prediction below with the prediction's statistical
    uncertainty. ``observed``: ``"pseudo-data"`` (what the fit of ``cabinetry_config.yml`` is
    given), or ``"data"`` (the data sample; an embedded dataset's is a small luminosity
    fraction, not comparable with the MC)."""
    h = histograms.hist
    cls = sum if classification is None else hist.loc(classification)
    processes = [p for p in h.axes["process"] if p != "data" and (p, "nominal") in histograms.filled]
    stack = [h[{"region": region, "process": p, "variation": "nominal", "classification": cls}] for p in processes]
    order = sorted(range(len(stack)), key=lambda i: stack[i].sum().value)
    fig, ax, rax = ratio_axes()
    mplhep.histplot([stack[i] for i in order], label=[process_label(processes[i]) for i in order], stack=True,
                    histtype="fill", edgecolor="grey", linewidth=1, ax=ax)  # fmt: skip
    edges = stack[0].axes[0].edges
    centres = stack[0].axes[0].centers
    total = np.sum([s.values() for s in stack], axis=0)
    total_var = np.sum([s.variances() for s in stack], axis=0)
    observed_hist, observed_label = _observed(histograms, config, region, classification, observed)
    top = float(total.max())
    if observed_hist is not None:
        values, errors = observed_hist.values(), np.sqrt(observed_hist.variances())
        ax.errorbar(centres, values, yerr=errors, fmt="o", color="black", markersize=5, label=observed_label,
                    zorder=5)  # fmt: skip
        top = max(top, float((values + errors).max()))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, values / total, np.nan)
            ratio_err = np.where(total > 0, errors / total, np.nan)
        rax.errorbar(centres, ratio, yerr=ratio_err, fmt="o", color="black", markersize=5, zorder=5)
    with np.errstate(divide="ignore", invalid="ignore"):
        band = np.where(total > 0, np.sqrt(total_var) / total, 0.0)
    rax.stairs(1 + band, edges, baseline=1 - band, fill=True, color="grey", alpha=0.4, label="MC stat. unc.")
    rax.axhline(1.0, color="black", linewidth=1)
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel(f"{'Data' if observed_label == 'data' else 'Pseudo-data'} / MC", fontsize=16)
    observable = config.region(region).observable
    rax.set_xlabel(OBSERVABLE_LABELS.get(observable, observable))
    ax.set_xlabel("")
    ax.set_ylabel("Events")
    ax.set_xlim(edges[0], edges[-1])
    headroom(ax, top)
    title = region_title(config, region) + ("" if classification is None else f", ML category {classification}")
    ax.legend(frameon=False, ncols=2, fontsize=15, title=title, title_fontsize=15, loc="upper right")
    _cms_label(config, ax, data=observed_label == "data")
    return _save(fig, ax, rax, path)


def _observed(
    histograms: AnalysisHistograms, config: AnalysisConfig, region: str, classification: int | None, which: str
) -> tuple[hist.Hist | None, str]:
    """The data or pseudo-data of a region (None, with a log line, where it cannot be made)."""
    if which not in ("pseudo-data", "data"):
        raise ValueError(f"observed={which!r}: 'pseudo-data' or 'data'")
    cls = sum if classification is None else classification
    if which == "data":
        if ("data", "nominal") not in histograms.filled:
            log.info("%s: no data sample was processed; the figure shows none", region)
            return None, "data"
        return histograms.hist[{"region": region, "process": "data", "variation": "nominal",
                                "classification": cls if cls is sum else hist.loc(cls)}], "data"  # fmt: skip
    try:
        return pseudodata(histograms, region, config, cls), "pseudo-data"
    except AGCError as err:
        log.info("%s: no pseudo-data in the figure (%s)", region, err)
        return None, "pseudo-data"


@cms_style()
def plot_variations(
    histograms: AnalysisHistograms, config: AnalysisConfig, region: str, process: str, systematics: Sequence[str],
    path: str | Path | None = None,
) -> plt.Figure:  # fmt: skip
    """A process's nominal distribution with the up and down variations of the given
    systematics (names with or without ``_up``/``_down``), and their ratio to the nominal
    below. A one-sided systematic is shown with its mirror image (2 x nominal - up) as the
    down variation, as the fit symmetrises it."""
    h = histograms.hist

    def get(variation: str) -> hist.Hist:
        return h[{"region": region, "process": process, "variation": variation, "classification": sum}]

    if (process, "nominal") not in histograms.filled:
        raise KeyError(f"the nominal {process!r} was not filled")
    nominal = get("nominal")
    edges = nominal.axes[0].edges
    fig, ax, rax = ratio_axes()
    mplhep.histplot(nominal, yerr=False, label="nominal", color="black", linewidth=2, ax=ax)
    top = float(nominal.values().max())
    for i, name in enumerate(dict.fromkeys(_base(s) for s in systematics)):
        up_name = f"{name}_up" if (process, f"{name}_up") in histograms.filled else name
        if (process, up_name) not in histograms.filled:
            raise KeyError(f"variation {name!r} of {process!r} was not filled (nor {name}_up)")
        up = get(up_name).values()
        mirrored = (process, f"{name}_down") not in histograms.filled
        down = 2 * nominal.values() - up if mirrored else get(f"{name}_down").values()
        color = f"C{i % 10}"
        label = variation_label(config, name)
        ax.stairs(up, edges, color=color, linewidth=2, label=f"{label}, up")
        ax.stairs(down, edges, color=color, linewidth=2, linestyle="--",
                  label=f"{label}, down" + (" (mirrored)" if mirrored else ""))  # fmt: skip
        top = max(top, float(up.max()), float(down.max()))
        with np.errstate(divide="ignore", invalid="ignore"):
            rax.stairs(np.where(nominal.values() > 0, up / nominal.values(), 1.0), edges, baseline=None, color=color,
                       linewidth=2)  # fmt: skip
            rax.stairs(np.where(nominal.values() > 0, down / nominal.values(), 1.0), edges, baseline=None,
                       color=color, linewidth=2, linestyle="--")  # fmt: skip
    rax.axhline(1.0, color="black", linewidth=1)
    rax.set_ylabel("Variation / nominal", fontsize=16)
    observable = config.region(region).observable
    rax.set_xlabel(OBSERVABLE_LABELS.get(observable, observable))
    ax.set_xlabel("")
    ax.set_ylabel("Events")
    ax.set_xlim(edges[0], edges[-1])
    headroom(ax, top, fraction=0.5)
    handles, labels = ax.get_legend_handles_labels()
    first = labels.index("nominal")
    order = [first, *(i for i in range(len(labels)) if i != first)]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], frameon=False, fontsize=13, title=f"{process_label(process)}, {region_title(config, region)}",
              title_fontsize=14, loc="upper right")  # fmt: skip
    _cms_label(config, ax, data=False)
    return _save(fig, ax, rax, path)
