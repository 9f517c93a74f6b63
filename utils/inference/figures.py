"""Figures of the inference stage: data/MC per region before and after the fit (with a ratio
panel and the model's uncertainty band), pulls, correlations, the impact ranking and the
likelihood scan of the POI.

Each function takes the data and an optional output path (the format follows the suffix), saves
atomically, and returns the matplotlib figure. The drawing is our own: cabinetry's figures are
made for its own style and break under the CMS one (legend over the distributions, labels
clipped, a 34 x 34 matrix of overlapping numbers). The CMS style of mplhep applies per figure,
through :func:`utils.histograms.figures.cms_style`, never to the session. Callers that make many
figures close them (``matplotlib.pyplot.close(fig)``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullLocator

from utils.histograms.figures import FIGSIZE, cms_header, cms_style, headroom
from utils.histograms.layout import NO_MINOR_TICKS, place, place_stacked, text_size, tick_strings, x_margin, y_margin
from utils.inference.scan import LikelihoodScan
from utils.io import save_figure

log = logging.getLogger(__name__)

#: pixels per inch of the saved raster figures
DPI = 100
#: parameters enter the correlation figure when |correlation| with another one exceeds this
CORRELATION_THRESHOLD = 0.3
#: correlation coefficients are written into the cells up to this many parameters
ANNOTATE_MAX = 16
SAMPLE_LABELS = {"ttbar": r"$t\bar{t}$"}
BAND_COLOR = "#4d4d4d"


@contextmanager
def _style(figsize: tuple[float, float]) -> Iterator[None]:
    with cms_style(figsize), plt.rc_context(NO_MINOR_TICKS):  # type: ignore[arg-type]
        yield


def _save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    save_figure(fig, path, dpi=DPI, png_compression=1)
    if path is not None:
        log.debug("saved figure %s", path)
    return fig


def _region_binning(config: Mapping[str, Any] | None, region: str, n_bins: int) -> tuple[np.ndarray, str]:
    """Bin edges and axis label of a region of the cabinetry configuration (bin numbers without)."""
    for r in (config or {}).get("Regions", []):
        if r.get("Name") == region and "Binning" in r and len(r["Binning"]) == n_bins + 1:
            return np.asarray(r["Binning"], dtype=float), str(r.get("Variable", "observable"))
    return np.arange(n_bins + 1, dtype=float), "bin"


def observed_label_of(config: Mapping[str, Any] | None) -> str:
    """The label of the observed counts: "data" where the data sample is the data, else "pseudo-data"."""
    for sample in (config or {}).get("Samples", []):
        if sample.get("Data"):
            return "data" if str(sample.get("SamplePath", "")).lower() == "data" else "pseudo-data"
    return "pseudo-data"


def observed_per_region(model: Any, data: Sequence[float]) -> dict[str, np.ndarray]:
    """The observed counts of each region (channel) of the model; auxiliary data left out."""
    main = np.asarray(data, dtype=float)[: model.config.nmaindata]
    return {ch: main[model.config.channel_slices[ch]] for ch in model.config.channels}


def data_mc(
    prediction: Any,
    data: Sequence[float],
    region: str,
    config: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
    *,
    observed_label: str = "pseudo-data",
    lumi_fb: float | None = None,
) -> plt.Figure:
    """The model's samples stacked against the observed counts of one region, and their ratio.

    ``prediction``: a ``cabinetry.model_utils.ModelPrediction`` (``prediction(model)`` before the
    fit, ``prediction(model, fit_results=...)`` after it: yields at the best fit and the post-fit
    uncertainty band from the full correlation matrix); ``data``: the model's data (auxiliary
    data may follow); ``config``: the cabinetry configuration (bin edges and axis label)."""
    model = prediction.model
    channels = list(model.config.channels)
    if region not in channels:
        raise ValueError(f"no region {region!r} in the model; regions: {channels}")
    ich = channels.index(region)
    yields = np.asarray(prediction.model_yields[ich], dtype=float)  # (sample, bin)
    total = yields.sum(axis=0)
    band = np.asarray(prediction.total_stdev_model_bins[ich][-1], dtype=float)
    observed = observed_per_region(model, data)[region]
    edges, xlabel = _region_binning(config, region, len(total))
    centres = 0.5 * (edges[1:] + edges[:-1])
    samples = list(model.config.samples)
    order = np.argsort(yields.sum(axis=1))  # the largest sample on top

    with _style(FIGSIZE):
        fig, (ax, rax) = plt.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
        below = np.zeros_like(total)
        for k, i in enumerate(order):
            above = below + yields[i]
            ax.stairs(
                above,
                edges,
                baseline=below,
                fill=True,
                color=f"C{k % 10}",
                label=SAMPLE_LABELS.get(samples[i], samples[i]),
            )
            below = above
        ax.stairs(total, edges, color="black", linewidth=1)
        ax.stairs(total + band, edges, baseline=total - band, fill=True, facecolor="none", edgecolor=BAND_COLOR,
                  hatch="////", linewidth=0, label=f"{prediction.label} unc.")  # fmt: skip
        errors = np.sqrt(np.clip(observed, 0, None))
        ax.errorbar(
            centres, observed, yerr=errors, fmt="o", color="black", markersize=5, label=observed_label, zorder=5
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(total > 0, observed / total, np.nan)
            ratio_err = np.where(total > 0, errors / total, np.nan)
            rel = np.where(total > 0, band / total, 0.0)
        rax.stairs(1 + rel, edges, baseline=1 - rel, fill=True, facecolor="none", edgecolor=BAND_COLOR, hatch="////",
                   linewidth=0)  # fmt: skip
        rax.errorbar(centres, ratio, yerr=ratio_err, fmt="o", color="black", markersize=5, zorder=5)
        rax.axhline(1.0, color="black", linewidth=1)
        spread = np.nanmax(np.abs(np.concatenate([ratio + ratio_err, ratio - ratio_err, 1 + rel, 1 - rel]) - 1))
        half = 0.5 if not np.isfinite(spread) else min(1.0, max(0.1, float(np.ceil(spread * 12) / 10)))
        rax.set_ylim(1 - half, 1 + half)
        rax.set_ylabel(f"{observed_label[0].upper()}{observed_label[1:]} / model", fontsize=16)
        rax.set_xlabel(xlabel)
        ax.set_ylabel("Events")
        ax.set_xlim(edges[0], edges[-1])
        top = float(max((total + band).max(), (observed + errors).max()))
        rows = int(np.ceil((len(samples) + 2) / 2)) + 1  # two columns and the title
        headroom(ax, top, fraction=min(0.6, 0.1 + 0.075 * rows))
        ax.legend(frameon=False, ncols=2, fontsize=13, title=f"{region}, {prediction.label}", title_fontsize=15,
                  loc="upper right")  # fmt: skip
        cms_header(ax, data=observed_label == "data", lumi_fb=lumi_fb)
        place_stacked(fig, [ax, rax])
        _save(fig, path)  # inside the style: its fonts are the ones measured
    return fig


def _selected(fit_results: Any, exclude: Sequence[str]) -> list[int]:
    """Indices of the parameters shown as pulls: not excluded, not staterror, not fixed."""
    return [
        i
        for i, name in enumerate(fit_results.labels)
        if name not in exclude and not name.startswith("staterror_") and fit_results.uncertainty[i] > 0
    ]


def _pull_axes(ax: plt.Axes, values: np.ndarray, errors: np.ndarray) -> None:
    y = np.arange(len(values))
    ax.axvspan(-2, 2, color="#ffe066", zorder=0)
    ax.axvspan(-1, 1, color="#7fcf7f", zorder=0)
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    ax.errorbar(values, y, xerr=errors, fmt="o", color="black", markersize=5, capsize=0, zorder=5)
    reach = float(np.max(np.abs(values) + errors)) if len(values) else 0.0
    ax.set_xlim(-max(3.0, reach * 1.1), max(3.0, reach * 1.1))
    ax.set_ylim(-0.6, len(values) - 0.4)
    ax.set_xlabel(r"$(\hat{\theta} - \theta_0) / \Delta\theta$")


def pulls(fit_results: Any, path: str | Path | None = None, exclude: Sequence[str] | None = None) -> plt.Figure:
    """The best-fit values and post-fit uncertainties of the Gaussian-constrained nuisance
    parameters in units of their pre-fit ones (the ``exclude``d ones, staterror and fixed
    parameters left out), on the one- and two-sigma bands."""
    chosen = _selected(fit_results, list(exclude or []))[::-1]  # the first parameter on top
    labels = [fit_results.labels[i] for i in chosen]
    with _style((8.0, 1.6 + 0.38 * max(len(chosen), 1))):
        fig, ax = plt.subplots()
        _pull_axes(ax, np.asarray(fit_results.bestfit)[chosen], np.asarray(fit_results.uncertainty)[chosen])
        ax.set_yticks(np.arange(len(chosen)), labels, fontsize=14)
        ax.yaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelsize=14)
        ax.xaxis.label.set_fontsize(16)
        if not chosen:
            ax.text(0.5, 0.5, "no constrained nuisance parameter", transform=ax.transAxes, ha="center")
        left = text_size(fig, labels, 14)[0] + plt.rcParams["ytick.major.pad"] / 72 + 0.15
        place(fig, left, 0.3, x_margin(fig, ax), 0.2)
        _save(fig, path)  # inside the style: its fonts are the ones measured
    return fig


def correlation_matrix(
    fit_results: Any,
    path: str | Path | None = None,
    threshold: float = CORRELATION_THRESHOLD,
    annotate_max: int = ANNOTATE_MAX,
) -> plt.Figure:
    """Correlations of the parameters that have ``|correlation| > threshold`` with some other
    one (fixed parameters left out); the coefficients are written into the cells when at most
    ``annotate_max`` parameters are shown."""
    corr = np.asarray(fit_results.corr_mat, dtype=float)
    off = np.abs(corr - np.diag(np.diag(corr)))
    free = np.asarray(fit_results.uncertainty) > 0
    chosen = [i for i in range(len(corr)) if free[i] and np.any(off[i, free] > threshold)]
    labels = [fit_results.labels[i] for i in chosen]
    n = len(chosen)
    longest = max((len(t) for t in labels), default=1)
    side = 1.4 + 0.42 * max(n, 2) + 0.11 * longest  # cells of 0.42 in and room for the labels
    with _style((side + 1.9, side + 0.6)):
        fig = plt.figure()
        labels_in = text_size(fig, labels or ["x"], 13)
        # rotated by 60 degrees: the labels below reach width * sin 60 + height * cos 60 down
        below = labels_in[0] * 0.87 + labels_in[1] * 0.5 + 0.5
        left = labels_in[0] + 0.5
        width, height = fig.get_size_inches()
        cell = min((width - left - 1.9) / max(n, 1), (height - below - 0.6) / max(n, 1))
        ax = fig.add_axes((left / width, below / height, cell * max(n, 1) / width, cell * max(n, 1) / height))
        cax = fig.add_axes(((left + cell * max(n, 1) + 0.15) / width, below / height, 0.25 / width,
                            cell * max(n, 1) / height))  # fmt: skip
        sub = corr[np.ix_(chosen, chosen)] if n else np.zeros((0, 0))
        image = ax.imshow(sub if n else np.zeros((1, 1)), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        fig.colorbar(image, cax=cax).set_label("correlation", fontsize=16)
        cax.tick_params(labelsize=14)
        cax.yaxis.set_minor_locator(NullLocator())
        ax.set_xticks(np.arange(n), labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=13)
        ax.set_yticks(np.arange(n), labels, fontsize=13)
        ax.tick_params(which="major", top=False, right=False)
        if n and n <= annotate_max:
            size = max(8.0, min(14.0, 160.0 / n))
            for a in range(n):
                for b in range(n):
                    ax.text(b, a, f"{sub[a, b]:.2f}", ha="center", va="center", fontsize=size,
                            color="white" if abs(sub[a, b]) > 0.6 else "black")  # fmt: skip
        ax.set_title(rf"parameters with $|\rho| > {threshold:g}$ to another", fontsize=15)
        if not n:
            ax.text(0, 0, f"no correlation above {threshold:g}", ha="center", va="center", fontsize=14)
        _save(fig, path)  # inside the style: its fonts are the ones measured
    return fig


def ranking(
    ranking_results: Any,
    path: str | Path | None = None,
    max_pars: int | None = 20,
    prefit: Mapping[str, tuple[float, float]] | None = None,
) -> plt.Figure:
    """The impact ranking: for the ``max_pars`` parameters with the largest post-fit impact on
    the POI, their pulls (left) and the POI's shift with the parameter held at its best fit
    +/- its pre-fit (open) and post-fit (filled) uncertainty (right). A refit without a valid
    minimum (a NaN impact, see :mod:`utils.inference.ranking`) has no bar; its parameter is
    shown with a red cross at zero (``refit failed`` in the legend). ``prefit``: name ->
    (nominal value, pre-fit uncertainty), to show pulls of parameters not centred at 0 with unit
    width (staterror's gammas); without, best fit and uncertainty are shown as they are."""
    r = ranking_results
    impacts = np.vstack([np.asarray(r.prefit_up, dtype=float), np.asarray(r.prefit_down, dtype=float),
                         np.asarray(r.postfit_up, dtype=float), np.asarray(r.postfit_down, dtype=float)])  # fmt: skip
    failed = ~np.isfinite(impacts)  # refits without a valid minimum
    order = _ranking_order(impacts, failed, max_pars)
    y = np.arange(len(order))
    with _style((13.0, 2.2 + 0.42 * max(len(order), 1))):
        fig, (pax, iax) = plt.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": (1, 1.4)})
        centre_width = [(prefit or {}).get(r.labels[i], (0.0, 1.0)) for i in order]
        centre, width = (np.asarray([c[k] for c in centre_width], dtype=float) for k in (0, 1))
        width = np.where(width > 0, width, 1.0)
        _pull_axes(pax, (np.asarray(r.bestfit)[order] - centre) / width, np.asarray(r.uncertainty)[order] / width)
        pax.set_yticks(y, [r.labels[i] for i in order], fontsize=14)
        for values, style in zip(impacts, (
            {"facecolor": "none", "edgecolor": "C0", "label": r"pre-fit $+\Delta\theta$"},
            {"facecolor": "none", "edgecolor": "C1", "label": r"pre-fit $-\Delta\theta$"},
            {"color": "C0", "label": r"post-fit $+\Delta\hat{\theta}$"},
            {"color": "C1", "label": r"post-fit $-\Delta\hat{\theta}$"},
        ), strict=True):  # fmt: skip
            iax.barh(y, np.nan_to_num(values[order]), height=0.7, linewidth=1.5, **style)
        rows = np.flatnonzero(failed[:, order].any(axis=0))
        if len(rows):  # one cross per parameter with a failed refit, at zero
            iax.plot(np.zeros(len(rows)), rows, "x", color="red", markersize=12, markeredgewidth=2.5,
                     label="refit failed (no valid minimum)", linestyle="none")  # fmt: skip
        iax.axvline(0, color="black", linewidth=1)
        finite = np.abs(impacts[~failed])
        reach = float(finite.max()) if len(order) and finite.size and finite.max() > 0 else 1.0
        iax.set_xlim(-1.15 * reach, 1.15 * reach)
        iax.set_xlabel(r"$\Delta\hat{\mu}$ (impact on the POI)")
        iax.legend(frameon=False, fontsize=13, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        for ax in (pax, iax):
            ax.yaxis.set_minor_locator(NullLocator())
            ax.tick_params(axis="x", labelsize=14)
            ax.xaxis.label.set_fontsize(16)
        left = text_size(fig, [r.labels[i] for i in order] or ["x"], 14)[0] + plt.rcParams["ytick.major.pad"] / 72
        legend_rows = 3 if len(rows) else 2
        legend_height = legend_rows * 1.6 * text_size(fig, ["Ag"], 13)[1] + 0.45
        place(fig, left + 0.15, 0.35, max(x_margin(fig, pax), x_margin(fig, iax)), legend_height, wspace=0.06)
        _save(fig, path)  # inside the style: its fonts are the ones measured
    return fig


def _ranking_order(impacts: np.ndarray, failed: np.ndarray, max_pars: int | None) -> list[int]:
    """Rows of the ranking figure, bottom to top: the ``max_pars`` parameters with the largest
    post-fit impact (where both post-fit refits failed: the largest pre-fit one), the largest on
    top; a parameter with a failed refit is always shown."""
    sizes = np.where(failed, 0.0, np.abs(impacts))
    post_failed = failed[2:].all(axis=0)
    key = np.where(post_failed, sizes[:2].max(axis=0), sizes[2:].max(axis=0))
    ranked = list(np.argsort(-key, kind="stable"))
    chosen = ranked[: max_pars or len(ranked)]
    chosen += [i for i in ranked if failed[:, i].any() and i not in chosen]
    return sorted(chosen, key=ranked.index)[::-1]


def likelihood_scan(scan: LikelihoodScan, path: str | Path | None = None) -> plt.Figure:
    """The profile-likelihood scan of a parameter (its points, and between them a curve
    interpolated in the signed square root), its best fit and its 68 % CL interval (the
    crossings of 1)."""
    values, delta = np.asarray(scan.values), np.asarray(scan.delta_twice_nll)
    low, high = scan.interval
    with _style((9.0, 7.0)):
        fig, ax = plt.subplots()
        # between the points: linear in the signed square root, exact for a parabola
        dense = np.linspace(values.min(), values.max(), 200)
        root = np.sign(values - scan.bestfit) * np.sqrt(np.clip(delta, 0, None))
        ax.plot(dense, np.interp(dense, values, root) ** 2, "-", color="black", linewidth=1.5)
        ax.plot(values, delta, "o", color="black", markersize=6, label="profile likelihood")
        for level in (1.0, 4.0):
            ax.axhline(level, color="grey", linestyle="--", linewidth=1)
        ax.axvline(scan.bestfit, color="C0", linewidth=1.5, label=f"best fit {scan.bestfit:.3f}")
        if low is not None and high is not None:
            ax.axvspan(low, high, color="C0", alpha=0.15,
                       label=f"68% CL [{low:.3f}, {high:.3f}]\n({low - scan.bestfit:+.3f} / {high - scan.bestfit:+.3f})")  # fmt: skip
        ax.set_xlim(values.min(), values.max())
        headroom(ax, float(delta.max()), fraction=0.4)
        ax.set_xlabel(scan.parameter)
        ax.set_ylabel(r"$-2\,\Delta\ln L$")
        ax.legend(frameon=False, fontsize=15, loc="upper center")
        for _ in range(2):  # the number of ticks follows the size of the axes: place, then again
            right = 0.5 * text_size(fig, tick_strings(ax, "x")[-1:], plt.rcParams["xtick.labelsize"])[0] + 0.2
            place(fig, y_margin(fig, [ax]), right, x_margin(fig, ax), 0.2)
        _save(fig, path)  # inside the style: its fonts are the ones measured
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def pull_exclusions(model: Any) -> list[str]:
    """Parameters that are no Gaussian-constrained nuisance parameters (the POI, free
    normalisations, Poisson-constrained ones): left out of the pulls."""
    return [
        name
        for name in model.config.parameters
        if type(model.config.param_set(name)).__name__ != "constrained_by_normal" or name == model.config.poi_name
    ]


def inference_figures(
    folder: str | Path,
    model: Any,
    data: Sequence[float],
    fit_results: Any,
    config: Mapping[str, Any] | None = None,
    ranking_results: Any | None = None,
    suffix: str = ".pdf",
    *,
    scan: LikelihoodScan | None = None,
    observed_label: str | None = None,
    lumi_fb: float | None = None,
    correlation_threshold: float = CORRELATION_THRESHOLD,
) -> dict[str, Path]:
    """Draw and save the standard figures of a fit into ``folder``; return {key: path}.

    Keys: ``pulls``, ``correlation_matrix``, ``data_mc_prefit_<region>``,
    ``data_mc_postfit_<region>`` and, given their results, ``ranking`` and ``likelihood_scan``.
    Figures are closed. The pre- and post-fit predictions are computed once each.
    ``observed_label``: what the data are (default: from the configuration's data sample).
    """
    import cabinetry

    folder = Path(folder)
    out: dict[str, Path] = {}
    observed_label = observed_label or observed_label_of(config)

    def keep(key: str, draw: Any, *args: Any, **kwargs: Any) -> None:
        out[key] = folder / f"{key}{suffix}"
        plt.close(draw(*args, path=out[key], **kwargs))

    keep("pulls", pulls, fit_results, exclude=pull_exclusions(model))
    keep("correlation_matrix", correlation_matrix, fit_results, threshold=correlation_threshold)
    predictions = {
        "prefit": cabinetry.model_utils.prediction(model),
        "postfit": cabinetry.model_utils.prediction(model, fit_results=fit_results),
    }
    for stage, prediction in predictions.items():
        for region in model.config.channels:
            keep(f"data_mc_{stage}_{_slug(region)}", data_mc, prediction, data, region, config,
                 observed_label=observed_label, lumi_fb=lumi_fb)  # fmt: skip
    if ranking_results is not None:
        widths = cabinetry.model_utils.prefit_uncertainties(model)
        prefit = {n: (float(v), float(w)) for n, v, w in zip(model.config.par_names, model.config.suggested_init(),
                                                                   widths, strict=True)}  # fmt: skip
        keep("ranking", ranking, ranking_results, prefit=prefit)
    if scan is not None:
        keep("likelihood_scan", likelihood_scan, scan)
    return out
