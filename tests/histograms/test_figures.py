"""Figures of the analysis histograms: what they draw, text inside the canvas, files, style scope."""

from __future__ import annotations

import io
import logging

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.font_manager import FontManager
from matplotlib.text import Text

from utils.histograms import figures
from utils.histograms.accumulate import AnalysisHistograms, empty_hist

MC = ("ttbar", "wjets", "single_top_s_chan", "single_top_t_chan", "single_top_tW")


@pytest.fixture(scope="module")
def histograms(config) -> AnalysisHistograms:
    """Hand-made histograms: every process nominal, the pseudo-data's ttbar variations, and the
    ttbar systematics (b-tag weights up and down, one-sided jet scale and resolution)."""
    rng = np.random.default_rng(7)
    btag = [f"{config.btag_name}_{i}_{d}" for i in range(config.btag_n_jets) for d in ("up", "down")]
    variations = ["nominal", config.pt_scale_name, config.pt_res_name, *btag, *config.alternative_variations]
    h = empty_hist(config, list(MC), variations)
    filled = set()
    centres = h.axes["observable"].centers
    for k, process in enumerate(MC):
        scale = 100.0 / (k + 1)
        for j, variation in enumerate(variations if process == "ttbar" else ["nominal"]):
            shift = 1.0 + 0.02 * (j % 5 - 2)
            for region in config.region_names:
                weights = (
                    scale * shift * np.exp(-(((centres - 200.0) / 80.0) ** 2)) * rng.uniform(0.9, 1.1, centres.size)
                )
                h.fill(observable=centres, region=region, process=process, variation=variation, classification=1,
                       weight=weights)  # fmt: skip
            filled.add((process, variation))
    return AnalysisHistograms(h, frozenset(filled))


def _texts_inside(fig: plt.Figure) -> list[str]:
    """Texts drawn outside the canvas: every axes' rendered box (its labels, tick labels,
    legend and texts) must lie inside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    outside = []
    for ax in fig.axes:
        box = ax.get_tightbbox(renderer)
        if box.x0 < canvas.x0 - 1 or box.y0 < canvas.y0 - 1 or box.x1 > canvas.x1 + 1 or box.y1 > canvas.y1 + 1:
            outside.append(f"{ax.get_ylabel()!r} axes: {box} beyond {canvas}")
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        if text.get_visible() and text.get_text() and not canvas.contains(box.x0, box.y0):
            outside.append(text.get_text())
    return outside


def test_stack_has_ratio_panel_and_visible_pseudodata(histograms, config, tmp_path):
    path = tmp_path / "stack_4j2b.png"
    fig = figures.plot_stack(histograms, config, "4j2b", path)
    assert path.is_file() and path.stat().st_size > 10_000
    ax, rax = fig.axes
    labels = ax.get_legend().get_texts()
    assert {t.get_text() for t in labels} >= {figures.process_label(p) for p in MC} | {"pseudo-data"}
    # the pseudo-data are drawn (markers with data), and their ratio to the prediction below
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert markers and np.nansum(markers[0].get_ydata()) > 0
    ratio = [line for line in rax.get_lines() if line.get_marker() == "o"]
    assert ratio and 0.5 < np.nanmedian(ratio[0].get_ydata()) < 1.5
    assert "MC" in rax.get_ylabel() and rax.get_xlabel() == figures.OBSERVABLE_LABELS["m_bjj"]
    assert ax.get_ylabel() == "Events"
    assert _texts_inside(fig) == []
    # the legend sits above the distributions: headroom for it
    top = max(p.get_path().vertices[:, 1].max() for p in ax.patches)
    assert ax.get_ylim()[1] > 1.5 * top
    plt.close(fig)


def test_variations_up_and_down_readable(histograms, config, tmp_path):
    path = tmp_path / "variations.png"
    systematics = [f"{config.btag_name}_0", config.pt_scale_name]
    fig = figures.plot_variations(histograms, config, "4j1b", "ttbar", systematics, path)
    assert path.is_file()
    ax, rax = fig.axes
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == [
        "nominal",
        "b-tag weight, jet 1, up",
        "b-tag weight, jet 1, down",
        "jet energy scale (+3%), up",
        "jet energy scale (+3%), down (mirrored)",
    ]
    assert not any("btag_var" in n for n in names)
    assert any("CMS" in t.get_text() for t in fig.findobj(Text))
    assert len(rax.patches) == 4  # up and down ratio per systematic
    assert _texts_inside(fig) == []
    plt.close(fig)


def test_variations_unknown_names_fail(histograms, config):
    with pytest.raises(KeyError, match="not filled"):
        figures.plot_variations(histograms, config, "4j1b", "wjets", ["nonexistent"])


def test_style_applies_per_figure_only(histograms, config):
    before = dict(plt.rcParams)
    plt.close(figures.plot_stack(histograms, config, "4j1b"))
    assert plt.rcParams["font.family"] == before["font.family"]
    assert plt.rcParams["figure.figsize"] == before["figure.figsize"]
    with figures.cms_style():
        assert list(plt.rcParams["figure.figsize"]) == list(figures.FIGSIZE)
    assert plt.rcParams["figure.figsize"] == before["figure.figsize"]


def _font_warnings(fig: plt.Figure, dpi: int, caplog) -> list[str]:
    """matplotlib's warnings while ``fig`` is drawn at a ``dpi`` no earlier draw used (mathtext
    is parsed anew), with findfont's once-per-process cache cleared."""
    FontManager._findfont_cached.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="matplotlib"):
        fig.savefig(io.BytesIO(), format="png", dpi=dpi)
    return [r.getMessage() for r in caplog.records if r.name.startswith("matplotlib")]


def test_figure_drawn_after_the_style_keeps_it(histograms, config, caplog):
    """The notebook's inline backend draws a figure after the cell, outside the style: its fonts
    are still the style's, and mathtext asks for no font the style replaced ('cursive')."""
    assert plt.rcParams["mathtext.cal"] == "cursive"  # matplotlib's default, outside the style
    fig = figures.plot_stack(histograms, config, "4j2b")  # mathtext in labels: $t\bar{t}$, $m_{bjj}$
    assert isinstance(fig, figures.CMSStyledFigure)
    assert _font_warnings(fig, 41, caplog) == []
    fig.__class__ = Figure  # the same figure, without the style at draw time: the warning it had
    assert any("cursive" in m for m in _font_warnings(fig, 43, caplog))
    plt.close(fig)
    with figures.cms_style():
        inside = plt.figure()
    outside = plt.figure()
    assert type(inside) is figures.CMSStyledFigure and type(outside) is Figure
    plt.close(inside)
    plt.close(outside)


def test_stack_shows_the_pseudodata_the_fit_uses_unless_data_is_asked_for(histograms, config):
    """An embedded data sample is a small luminosity fraction: the default overlays the
    pseudo-data, ``observed="data"`` the data sample."""
    h = histograms.hist.copy()
    centres = h.axes["observable"].centers
    h.fill(observable=centres, region="4j2b", process="data", variation="nominal", classification=1, weight=0.01)
    with_data = AnalysisHistograms(h, histograms.filled | {("data", "nominal")})
    for observed, label, peak in (("pseudo-data", "pseudo-data", 10.0), ("data", "data", 0.0)):
        fig = figures.plot_stack(with_data, config, "4j2b", observed=observed)
        ax = fig.axes[0]
        assert label in [t.get_text() for t in ax.get_legend().get_texts()]
        (points,) = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert (max(points.get_ydata()) > peak) if peak else (max(points.get_ydata()) <= 0.011)
        plt.close(fig)
