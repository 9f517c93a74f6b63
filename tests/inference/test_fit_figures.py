"""The inference figures on a small hand-made model: artists, every text inside the canvas, the
legend clear of the data, files written; the profile-likelihood scan against MINOS."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from utils.histograms.figures import cms_style
from utils.inference import figures
from utils.inference.diagnostics import fit_with_diagnostics
from utils.inference.fit import numpy_backend
from utils.inference.scan import crossings, profile_scan

matplotlib.use("Agg")

EDGES = [110.0, 150.0, 190.0, 230.0, 270.0, 350.0, 550.0]
CONFIG = {
    "Regions": [
        {"Name": "4j1b CR", "Variable": "$H_T$ [GeV]", "Binning": EDGES},
        {"Name": "4j2b SR", "Variable": "$m_{bjj}$ [GeV]", "Binning": EDGES},
    ],
    "Samples": [{"Name": "Pseudodata", "SamplePath": "pseudodata", "Data": True}],
}


def _sample(name: str, values, modifiers):
    return {"name": name, "data": list(values), "modifiers": modifiers}


@pytest.fixture(scope="module")
def small_fit():
    """Two regions, ttbar on W+jets, a normalisation and a shape systematic, staterrors;
    data 5 % above the nominal prediction. Returns (model, data, fit results, diagnostics)."""
    import cabinetry

    x = 0.5 * (np.asarray(EDGES[1:]) + np.asarray(EDGES[:-1]))
    channels, observations = [], []
    for name, peak in (("4j1b CR", 200.0), ("4j2b SR", 175.0)):
        ttbar = 400 * np.exp(-(((x - peak) / 70) ** 2)) + 20
        wjets = 300 * np.exp(-x / 150)
        jes = [{"name": "Jet energy scale", "type": "histosys",
                "data": {"hi_data": list(ttbar * 1.04), "lo_data": list(ttbar * 0.96)}}]  # fmt: skip
        lumi = [{"name": "Luminosity", "type": "normsys", "data": {"hi": 1.03, "lo": 0.97}}]
        stat = [{"name": f"staterror_{name.replace(' ', '-')}", "type": "staterror", "data": list(0.03 * ttbar)}]
        norm = [{"name": "ttbar_norm", "type": "normfactor", "data": None}]
        channels.append({"name": name, "samples": [
            _sample("ttbar", ttbar, norm + jes + lumi + stat),
            _sample("W+jets", wjets, [*lumi, {"name": "W+jets scale variation", "type": "normsys", "data": {"hi": 1.2, "lo": 0.8}}]),
        ]})  # fmt: skip
        observations.append({"name": name, "data": list(np.round(ttbar * 1.05 + wjets))})
    ws = {
        "channels": channels,
        "observations": observations,
        "measurements": [{"name": "m", "config": {"poi": "ttbar_norm", "parameters": []}}],
        "version": "1.0.0",
    }
    with numpy_backend():
        model, data = cabinetry.model_utils.model_and_data(ws)
        fit, diagnostics = fit_with_diagnostics(model, data)
    return model, data, fit, diagnostics


def _drawn(fig):
    """Draw as the files are written: under the CMS style (fonts are looked up at drawing)."""
    with cms_style():
        fig.canvas.draw()
    return fig.canvas.get_renderer()


def _assert_texts_inside(fig) -> None:
    """Every axes with its tick labels, axis labels, title and legend, and every other visible
    text, lies inside the canvas."""
    renderer = _drawn(fig)
    canvas = fig.bbox.padded(1.0)  # one pixel of rounding
    for ax in fig.axes:
        box = ax.get_tightbbox(renderer)
        assert canvas.containsx(box.x0) and canvas.containsx(box.x1), (ax, box, canvas)
        assert canvas.containsy(box.y0) and canvas.containsy(box.y1), (ax, box, canvas)
    ticks = {t for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text() and t not in ticks]
    assert texts
    for text in texts:
        box = text.get_window_extent(renderer)
        assert canvas.contains(box.x0, box.y0) and canvas.contains(box.x1, box.y1), (text.get_text(), box)


def _artist_boxes(ax, renderer) -> list[Bbox]:
    """Window extents of the drawn data: the stacked bars and band, the points with their bars."""
    boxes = [p.get_window_extent(renderer) for p in ax.patches]
    for container in ax.containers:  # errorbars: every point and every bar end
        line, _, bars = container.lines
        x, y = line.get_data()
        for xi, yi in zip(x, y, strict=True):
            px = ax.transData.transform((xi, yi))
            boxes.append(Bbox.from_extents(px[0] - 3, px[1] - 3, px[0] + 3, px[1] + 3))
        boxes += [b.get_window_extent(renderer) for b in bars]
    boxes += [line.get_window_extent(renderer) for line in ax.lines]
    return [b for b in boxes if np.all(np.isfinite(b.extents))]  # markers-only lines have none


def _assert_legend_clear(ax) -> None:
    renderer = _drawn(ax.figure)
    legend = ax.get_legend()
    assert legend is not None
    box = legend.get_window_extent(renderer)
    inside_axes = ax.get_window_extent(renderer)
    assert inside_axes.x0 <= box.x0 and box.x1 <= inside_axes.x1 + 1 and box.y1 <= inside_axes.y1 + 1
    for artist in _artist_boxes(ax, renderer):
        assert not box.overlaps(artist), (box, artist)


@pytest.mark.parametrize("stage", ["prefit", "postfit"])
def test_data_mc_figure_is_readable(small_fit, stage, tmp_path):
    import cabinetry

    model, data, fit, _ = small_fit
    prediction = cabinetry.model_utils.prediction(model, fit_results=fit if stage == "postfit" else None)
    fig = figures.data_mc(prediction, data, "4j2b SR", CONFIG, tmp_path / f"{stage}.png", lumi_fb=3.38)
    ax, rax = fig.axes
    assert len(ax.patches) == 3 + 1  # two stacked samples, the total's outline, the band
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["W+jets", r"$t\bar{t}$", f"{prediction.label} unc.", "pseudo-data"]
    assert ax.get_legend().get_title().get_text() == f"4j2b SR, {prediction.label}"
    assert rax.get_xlabel() == "$m_{bjj}$ [GeV]" and rax.get_xlim() == (110.0, 550.0)
    assert len(ax.containers) == 1 and len(rax.containers) == 1  # data points and their ratio
    heights = ax.containers[0].lines[0].get_ydata()
    assert list(heights) == list(figures.observed_per_region(model, data)["4j2b SR"])
    top = ax.patches[1].get_data().values  # the stack's top: the model's total per bin
    assert top == pytest.approx(np.sum(prediction.model_yields[1], axis=0))
    _assert_texts_inside(fig)
    _assert_legend_clear(ax)
    assert (tmp_path / f"{stage}.png").read_bytes().startswith(b"\x89PNG")
    plt.close(fig)


def test_post_fit_band_is_narrower_than_pre_fit(small_fit):
    import cabinetry

    model, data, fit, _ = small_fit
    pre, post = (cabinetry.model_utils.prediction(model, fit_results=f) for f in (None, fit))
    widths = []
    for prediction in (pre, post):
        fig = figures.data_mc(prediction, data, "4j1b CR", CONFIG)
        band = fig.axes[0].patches[-1].get_data()
        widths.append(np.asarray(band.values) - np.asarray(band.baseline))
        plt.close(fig)
    assert np.all(widths[1] < widths[0])  # the fit constrains the normalisations
    assert widths[1] == pytest.approx(2 * np.asarray(post.total_stdev_model_bins[0][-1]))


def test_pulls_show_the_gaussian_nuisance_parameters(small_fit, tmp_path):
    model, _, fit, _ = small_fit
    fig = figures.pulls(fit, tmp_path / "pulls.pdf", exclude=figures.pull_exclusions(model))
    (ax,) = fig.axes
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert set(names) == {"Jet energy scale", "Luminosity", "W+jets scale variation"}  # no POI, no staterror
    values = ax.containers[0].lines[0].get_xdata()
    expected = {n: fit.bestfit[fit.labels.index(n)] for n in names}
    assert list(values) == pytest.approx([expected[n] for n in names])
    _assert_texts_inside(fig)
    assert (tmp_path / "pulls.pdf").read_bytes().startswith(b"%PDF")
    plt.close(fig)


def _fit_results(n: int, corr: np.ndarray):
    from cabinetry.fit.results_containers import FitResults

    labels = [f"a rather long parameter name {i}" for i in range(n)]
    return FitResults(np.zeros(n), np.ones(n), labels, corr, 10.0)


def test_correlations_keep_only_correlated_parameters():
    corr = np.eye(6)
    corr[0, 3] = corr[3, 0] = 0.45
    corr[1, 4] = corr[4, 1] = -0.25  # below the threshold of 0.3
    fig = figures.correlation_matrix(_fit_results(6, corr))
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["a rather long parameter name 0", "a rather long parameter name 3"]
    assert ax.images[0].get_array().shape == (2, 2)
    numbers = sorted(t.get_text() for t in ax.texts)
    assert numbers == ["0.45", "0.45", "1.00", "1.00"]
    _assert_texts_inside(fig)
    plt.close(fig)


def test_many_correlated_parameters_have_no_numbers():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 30))
    cov = a @ a.T
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    fig = figures.correlation_matrix(_fit_results(30, corr), threshold=0.3)
    ax = fig.axes[0]
    n = ax.images[0].get_array().shape[0]
    assert n > figures.ANNOTATE_MAX and not ax.texts
    _assert_texts_inside(fig)
    plt.close(fig)


def test_ranking_puts_the_largest_impact_on_top(tmp_path):
    from cabinetry.fit.results_containers import RankingResults

    impacts = np.array([0.01, 0.08, 0.03])
    ranking = RankingResults(np.array([0.1, -0.5, 0.0]), np.array([0.9, 0.7, 1.0]), ["small", "large", "medium"],
                             2 * impacts, -2 * impacts, impacts, -impacts)  # fmt: skip
    fig = figures.ranking(ranking, tmp_path / "ranking.png", max_pars=2, prefit={"medium": (1.0, 0.5)})
    pax, iax = fig.axes
    assert [t.get_text() for t in pax.get_yticklabels()] == ["medium", "large"]  # bottom to top
    pulls = pax.containers[0].lines[0].get_xdata()
    assert list(pulls) == pytest.approx([(0.0 - 1.0) / 0.5, -0.5])  # a gamma at 1 +/- 0.5; a Gaussian NP
    assert len(iax.patches) == 4 * 2
    assert {t.get_text() for t in iax.get_legend().get_texts()} >= {r"pre-fit $+\Delta\theta$"}
    _assert_texts_inside(fig)
    assert (tmp_path / "ranking.png").is_file()
    plt.close(fig)


def test_crossings_of_a_parabola_are_exact():
    values = np.linspace(-2.0, 2.0, 9) + 1.0  # best fit 1, sigma 1
    low, high = crossings(values, (values - 1.0) ** 2, 1.0)
    assert low == pytest.approx(0.0) and high == pytest.approx(2.0)
    assert crossings(values, 0.1 * (values - 1.0) ** 2, 1.0) == (None, None)  # the scan stays below 1


def test_scan_crossings_agree_with_minos(small_fit, tmp_path):
    model, data, fit, diagnostics = small_fit
    scan = profile_scan(model, data, fit, n_steps=9, n_sigmas=2.0)
    poi = fit.labels.index("ttbar_norm")
    assert scan.parameter == "ttbar_norm" and len(scan.values) == 9
    assert scan.delta_twice_nll[4] == 0.0 and scan.values[4] == fit.bestfit[poi]
    assert min(scan.delta_twice_nll) > -1e-3
    low, high = scan.interval
    minos_low, minos_high = diagnostics.poi_minos
    assert low - fit.bestfit[poi] == pytest.approx(minos_low, rel=0.03)
    assert high - fit.bestfit[poi] == pytest.approx(minos_high, rel=0.03)
    fig = figures.likelihood_scan(scan, tmp_path / "scan.png")
    (ax,) = fig.axes
    assert list(ax.lines[1].get_xdata()) == list(scan.values)  # the points, above the curve
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1] == f"best fit {fit.bestfit[poi]:.3f}" and labels[2].startswith(f"68% CL [{low:.3f}, {high:.3f}]")
    _assert_texts_inside(fig)
    # the legend is clear of the curve: of its points and of the segments between them
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    curve = ax.transData.transform(np.column_stack(ax.lines[0].get_data()))
    assert len(curve) > 100 and not legend.count_contains(curve)
    assert (tmp_path / "scan.png").is_file()
    plt.close(fig)


def test_scan_figure_fits_its_tick_labels(tmp_path):
    """An asymmetric profile whose axis gets decimal tick labels (0.0, 2.5, ... 20.0): the
    margins follow the ticks of the final axes size."""
    from utils.inference.scan import LikelihoodScan

    values = (0.42, 0.72, 1.015, 1.31, 1.61)
    scan = LikelihoodScan("ttbar_norm", 1.015, 0.236, values, (13.4, 2.2, 0.0, 1.3, 4.3), 0)
    fig = figures.likelihood_scan(scan, tmp_path / "scan.pdf")
    _assert_texts_inside(fig)
    low, high = scan.interval
    assert 0.72 < low < 1.015 < high < 1.31
    plt.close(fig)


def test_scan_with_the_minos_points_needs_two_refits(small_fit):
    model, data, fit, diagnostics = small_fit
    full = profile_scan(model, data, fit, n_steps=9, n_sigmas=2.0)
    short = profile_scan(model, data, fit, n_steps=3, n_sigmas=2.0, minos=diagnostics.poi_minos)
    assert len(short.values) == 5 and short.delta_twice_nll[1] == short.delta_twice_nll[3] == 1.0
    poi = fit.labels.index("ttbar_norm")
    assert short.interval == pytest.approx(tuple(fit.bestfit[poi] + np.asarray(diagnostics.poi_minos)))
    assert (short.values[0], short.values[-1]) == pytest.approx((full.values[0], full.values[-1]))
    assert (short.delta_twice_nll[0], short.delta_twice_nll[-1]) == pytest.approx(
        (full.delta_twice_nll[0], full.delta_twice_nll[-1]), abs=0.02
    )  # the same refits
    assert short.n_calls < 0.4 * full.n_calls


def test_inference_figures_writes_every_figure(small_fit, tmp_path):
    model, data, fit, _ = small_fit
    scan = profile_scan(model, data, fit, n_steps=3)
    open_before = set(plt.get_fignums())
    out = figures.inference_figures(tmp_path, model, data, fit, CONFIG, suffix=".png", scan=scan)
    assert set(out) == {
        "pulls", "correlation_matrix", "likelihood_scan", "data_mc_prefit_4j1b-CR", "data_mc_prefit_4j2b-SR",
        "data_mc_postfit_4j1b-CR", "data_mc_postfit_4j2b-SR",
    }  # fmt: skip
    for path in out.values():
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
    assert set(plt.get_fignums()) == open_before  # all closed
