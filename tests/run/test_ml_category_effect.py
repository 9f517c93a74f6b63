"""The classifier's effect on the fit, as the notebook shows it: the run's histograms fitted in
their ML-score categories beside the regions' fit (empty category bins dropped by the template
treatment, or not fitted without that rule); and its figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from handmade_histograms import handmade_histograms

from utils.histograms.accumulate import save_histograms
from utils.inference.results import run_inference
from utils.run.measurement import (
    ML_FIT_DIRNAME,
    ML_HISTOGRAMS_NAME,
    empty_category_bins,
    ml_category_effect,
    plot_category_comparison,
)

#: the classifier's separation: the share of each process in the predicted-signal category
SIGNAL_SHARE = {"ttbar": 0.8, "wjets": 0.1, "single_top_s_chan": 0.3, "single_top_t_chan": 0.3, "single_top_tW": 0.4}


def _shape(process, x):
    """ttbar peaks at 175 GeV on falling backgrounds; every fit bin (110-550 GeV) has events."""
    if process == "ttbar":
        return 300.0 * np.exp(-(((x - 175.0) / 70.0) ** 2)) + 5.0
    return (400.0 / (1 + len(process) % 3)) * np.exp(-x / 200.0) + 1.0


@pytest.fixture(scope="module")
def separated(config):
    return handmade_histograms(config, _shape, SIGNAL_SHARE.__getitem__)


@pytest.fixture(scope="module")
def effect(separated, config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml_effect")
    save_histograms(separated, folder / "histograms.root", config)
    regions = run_inference(folder / "histograms.root", folder, figures=False, keep_templates=False, analysis=config)
    return folder, regions, ml_category_effect(separated, config, folder, regions)


def test_categories_that_separate_ttbar_shrink_its_uncertainty(effect):
    folder, regions, result = effect
    assert result.not_fitted is None and result.comparison is not None
    c = result.comparison
    assert c.without_ml is regions  # the run's own fit, not refitted
    assert (folder / ML_HISTOGRAMS_NAME).is_file() and (folder / ML_FIT_DIRNAME / "fit_results.json").is_file()
    # the pseudo-data is the model's own nominal prediction (up to the variations' percent shifts)
    assert c.with_ml.bestfit == pytest.approx(regions.bestfit, abs=0.05)
    assert c.with_ml.uncertainty < regions.uncertainty and c.uncertainty_ratio < 1.0
    assert c.with_ml.n_parameters > regions.n_parameters  # one more staterror set per category
    assert "in their ML categories" in result.summary() and f"{c.uncertainty_ratio:.2f}" in result.summary()


def test_the_figure_shows_both_fits_side_by_side(effect, tmp_path):
    _, _, result = effect
    c = result.comparison
    fig = plot_category_comparison(c, tmp_path / "ml.png")
    (ax,) = fig.axes
    bars = [line for line in ax.lines if line.get_marker() == "o"]
    assert [tuple(b.get_xdata()) for b in bars] == [(c.without_ml.bestfit,), (c.with_ml.bestfit,)]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("regions") and labels[1].startswith("ML categories")
    notes = [t.get_text() for t in ax.texts]
    assert notes[0].startswith(f"{c.without_ml.bestfit:.3f}") and notes[1].startswith(f"{c.with_ml.bestfit:.3f}")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_tightbbox(renderer)
    assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1
    assert (tmp_path / "ml.png").stat().st_size > 5_000
    plt.close(fig)


def _sparse_histograms(config):
    def sparse(process, x):  # nothing above 470 GeV: the last two fit bins (470-550) are empty
        return np.where(x > 470.0, 0.0, _shape(process, x))

    return handmade_histograms(config, sparse, SIGNAL_SHARE.__getitem__)


def test_categories_with_empty_bins_are_fitted_without_those_bins(config, tmp_path):
    """The tiny dataset's case: categories with fit bins without simulated events. The template
    treatment's DropEmptyBins (on in cabinetry_config.yml) takes those bins out of the fit."""
    histograms = _sparse_histograms(config)
    assert empty_category_bins(histograms, config) == {f"{r}_ML{c}": 2 for r in config.region_names for c in (0, 1)}
    save_histograms(histograms, tmp_path / "regions.root", config)
    without_ml = run_inference(tmp_path / "regions.root", tmp_path / "regions", figures=False, analysis=config)
    result = ml_category_effect(histograms, config, tmp_path, without_ml=without_ml)
    assert result.comparison is not None, result.not_fitted
    with_ml = result.comparison.with_ml
    dropped = [r for r in with_ml.template_treatment if r.action == "bins dropped"]
    assert dropped and not with_ml.failures
    assert abs(with_ml.bestfit - 1.0) < 3 * with_ml.uncertainty


def test_categories_with_empty_bins_are_not_fitted_without_the_rule(config, tmp_path, monkeypatch):
    """Without DropEmptyBins the fit is ill-posed there: not fitted, nothing written."""
    import dataclasses

    import utils.inference.config as model_config

    load = model_config.load_model_config

    def without_rule(*args, **kwargs):
        model, rules = load(*args, **kwargs)
        return model, dataclasses.replace(rules, drop_empty_bins=False)

    monkeypatch.setattr(model_config, "load_model_config", without_rule)
    result = ml_category_effect(_sparse_histograms(config), config, tmp_path, without_ml=None)  # never fitted
    assert result.comparison is None and "4j1b_ML0 2" in result.not_fitted
    assert result.summary().startswith("ML categories not fitted: bins without simulated events")
    assert list(tmp_path.iterdir()) == []


def test_the_fit_started_in_a_worker_process_gives_the_same_result(effect, separated, config, tmp_path, caplog):
    """The notebook starts the categories' fit in a worker process after the processing: the
    same result as the fit in this process, its log lines shown here, its files where they belong."""
    import logging
    import os

    from utils.run.measurement import start_ml_category_fit

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the fit runs in this process")
    _, regions, here = effect
    with caplog.at_level(logging.INFO, logger="utils"):
        pending = start_ml_category_fit(separated, config, tmp_path, background=True)
        assert pending._future is not None  # a worker's (2 cores or more)
        there = pending.effect(regions)
    a, b = here.comparison.with_ml, there.comparison.with_ml
    assert b.bestfit == pytest.approx(a.bestfit, rel=1e-9) and b.uncertainty == pytest.approx(a.uncertainty, rel=1e-7)
    assert b.results_path == tmp_path / ML_FIT_DIRNAME / "fit_results.json" and b.results_path.is_file()
    logged = [r for r in caplog.records if r.name.startswith("utils.inference")]
    assert any("templates" in r.getMessage() for r in logged)  # the worker's lines, logged in this process
    assert "in their ML categories" in caplog.text
