"""The inference stage: configuration checks, templates, the known AGC answer, closure, figures."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import uproot
import yaml

from utils.errors import ConfigError, StatisticsError
from utils.inference import figures as plotting_stats
from utils.inference.config import (
    DEFAULT_CABINETRY_CONFIG,
    expand_categories,
    load_cabinetry_config,
    parse_cabinetry_config,
)
from utils.inference.results import run_inference
from utils.inference.templates import HistogramData, rebin, required_templates

matplotlib.use("Agg")

AGC_HISTOGRAMS = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata" / "agc-histograms" / "histograms.root"
)


@pytest.fixture(scope="module")
def agc_histograms() -> Path:
    if not AGC_HISTOGRAMS.is_file():
        pytest.skip(f"real AGC histograms not available at {AGC_HISTOGRAMS} (../shared/realdata is absent)")
    return AGC_HISTOGRAMS


@pytest.fixture(scope="module")
def agc_result(agc_histograms, tmp_path_factory):
    """One full run on the real AGC histograms, figures included."""
    return run_inference(agc_histograms, tmp_path_factory.mktemp("agc_fit"))


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return yaml.safe_load(DEFAULT_CABINETRY_CONFIG.read_text())


def copy_histograms(source: Path, target: Path, drop: set[str] = frozenset(), replace: dict | None = None) -> Path:
    """Copy a histograms file, leaving out ``drop`` and overriding ``replace`` (name -> hist.Hist)."""
    replace = replace or {}
    with uproot.open(source) as fin, uproot.recreate(target) as fout:
        for name in fin.keys(cycle=False):
            if name not in drop:
                fout[name] = replace.get(name, fin[name].to_hist())
    return target


# -- configuration ------------------------------------------------------------------------------


def test_repository_config_loads_with_the_agc_model():
    config = load_cabinetry_config()
    assert config["General"]["POI"] == "ttbar_norm"
    assert [r["Name"] for r in config["Regions"]] == ["4j1b CR", "4j2b SR"]
    assert {s["Name"] for s in config["Samples"] if not s.get("Data")} == {
        "ttbar",
        "W+jets",
        "single top, s-channel",
        "single top, t-channel",
        "tW",
    }
    refs = required_templates(config)
    names = {r.histogram for r in refs}
    assert {"4j2b_ttbar_btag_var_2_up", "4j1b_wjets_scale_var_down", "4j2b_ttbar_PS_var", "4j1b_pseudodata"} <= names
    # symmetrised one-sided variations need no down template
    assert not any(n.endswith(("pt_scale_down", "pt_res_down", "PS_var_down")) for n in names)


def test_typo_in_a_key_names_the_key_path(raw_config):
    bad = json.loads(json.dumps(raw_config))
    bad["Regions"][1]["Binnig"] = bad["Regions"][1].pop("Binning")
    with pytest.raises(ConfigError) as err:
        parse_cabinetry_config(bad, source="my_config.yml")
    message = str(err.value)
    assert "my_config.yml" in message
    assert "['Regions'][1]" in message
    assert "Binnig" in message


def test_typo_in_a_systematic_key_names_the_key_path(raw_config):
    bad = json.loads(json.dumps(raw_config))
    bad["Systematics"][0]["Up"]["VariatonPath"] = bad["Systematics"][0]["Up"].pop("VariationPath")
    with pytest.raises(ConfigError, match=r"\['Systematics'\]\[0\]\['Up'\].*VariatonPath"):
        parse_cabinetry_config(bad)


def test_unknown_variation_and_bad_binning_are_reported_together(raw_config):
    bad = json.loads(json.dumps(raw_config))
    bad["Systematics"][3]["Up"]["VariationPath"] = "_pt_scale_upp"
    bad["Regions"][0]["Binning"] = [110, 155, 550]
    with pytest.raises(ConfigError) as err:
        parse_cabinetry_config(bad, source="cfg.yml")
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "['Systematics'][3]['Up']['VariationPath']" in message and "_pt_scale_upp" in message
    assert "['Regions'][0]['Binning']" in message and "155" in message


def test_two_data_samples_is_a_config_error(raw_config):
    bad = json.loads(json.dumps(raw_config))
    bad["Samples"][1]["Data"] = True
    with pytest.raises(ConfigError, match="exactly one data sample"):
        parse_cabinetry_config(bad, source="cfg.yml")


def test_categories_split_a_region(raw_config):
    data = json.loads(json.dumps(raw_config))
    data["Regions"][1]["Categories"] = ["ML0", "ML1"]
    data["Systematics"][0]["Regions"] = ["4j2b SR"]
    config = parse_cabinetry_config(data)
    assert [r["Name"] for r in config["Regions"]] == ["4j1b CR", "4j2b SR ML0", "4j2b SR ML1"]
    assert config["Regions"][2]["RegionPath"] == "4j2b_ML1"
    assert config["Systematics"][0]["Regions"] == ["4j2b SR ML0", "4j2b SR ML1"]
    assert "Categories" not in config["Regions"][1]
    names = {r.histogram for r in required_templates(config)}
    assert "4j2b_ML1_ttbar_btag_var_2_up" in names and "4j1b_ttbar_btag_var_2_up" in names
    # the input is left unchanged
    assert expand_categories(data) is not data and "Categories" in data["Regions"][1]


def test_rebin_sums_contents_and_variances():
    h = HistogramData(np.array([50.0, 70, 90, 110, 130, 150]), np.arange(1.0, 6), np.arange(1.0, 6) / 10)
    out = rebin(h, [90, 130, 150])
    np.testing.assert_allclose(out.values, [3 + 4, 5])
    np.testing.assert_allclose(out.variances, [0.7, 0.5])
    np.testing.assert_allclose(out.edges, [90, 130, 150])
    inner = rebin(h, [70, 110, 130])  # a range inside the histogram: the rest is left out
    np.testing.assert_allclose(inner.values, [2 + 3, 4])
    np.testing.assert_allclose(inner.variances, [0.5, 0.4])
    for bad in ([90, 125, 150], [130, 90], [90, 160]):
        with pytest.raises(StatisticsError, match="every new edge must be an edge"):
            rebin(h, bad, name="h")


# -- the real AGC histograms ------------------------------------------------------------------------


def test_agc_histograms_give_the_published_answer(agc_result):
    assert agc_result.poi_name == "ttbar_norm"
    assert agc_result.bestfit == pytest.approx(0.960, abs=0.005)
    assert agc_result.uncertainty == pytest.approx(0.091, abs=0.005)
    assert agc_result.n_parameters == 34
    assert agc_result.parameter("ttbar_norm") == (agc_result.bestfit, agc_result.uncertainty)
    assert agc_result.correlations.shape == (34, 34)
    np.testing.assert_allclose(np.diag(agc_result.correlations), 1.0)


def test_outputs_are_written_and_consistent(agc_result):
    ws_bytes = agc_result.workspace_path.read_bytes()
    assert hashlib.sha256(ws_bytes).hexdigest() == agc_result.workspace_sha256
    ws = json.loads(ws_bytes)
    assert {c["name"] for c in ws["channels"]} == {"4j1b CR", "4j2b SR"}
    assert all(len(s["data"]) == 11 for c in ws["channels"] for s in c["samples"])
    results = json.loads(agc_result.results_path.read_text())
    assert results["poi"]["name"] == "ttbar_norm"
    assert results["poi"]["bestfit"] == pytest.approx(agc_result.bestfit)
    assert results["n_parameters"] == 34
    assert results["workspace"]["sha256"] == agc_result.workspace_sha256
    assert results["fit_quality"]["twice_nll"] > 0
    assert 0 <= results["fit_quality"]["goodness_of_fit_p_value"] <= 1
    assert {"templates", "workspace", "fit", "total"} <= set(results["timings_s"])
    assert len(results["correlations"]) == 34
    # templates kept, no temporary leftovers
    assert (agc_result.templates_path / "4j2b-SR_ttbar.npz").is_file()
    assert not list(agc_result.results_path.parent.glob(".tmp-*"))


def test_figures_are_written(agc_result):
    expected = {"pulls", "correlation_matrix", "data_mc_prefit_4j1b-CR", "data_mc_postfit_4j2b-SR"}
    assert expected <= set(agc_result.figures)
    for path in agc_result.figures.values():
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes().startswith(b"%PDF")


def test_fit_to_summed_nominal_prediction_closes(agc_histograms, tmp_path):
    config = load_cabinetry_config()
    mc = [s["SamplePath"] for s in config["Samples"] if not s.get("Data")]
    with uproot.open(agc_histograms) as f:
        replace = {
            f"{region}_pseudodata": sum(
                (f[f"{region}_{p}"].to_hist() for p in mc[1:]), f[f"{region}_{mc[0]}"].to_hist()
            )
            for region in ("4j1b", "4j2b")
        }
    asimov = copy_histograms(agc_histograms, tmp_path / "histograms.root", replace=replace)
    result = run_inference(asimov, tmp_path / "out", figures=False, keep_templates=False)
    assert result.bestfit == pytest.approx(1.0, abs=0.001)
    assert result.templates_path is None and not (tmp_path / "out" / "templates").exists()
    values = dict(zip(result.parameter_names, result.parameter_values, strict=True))
    for name, value in values.items():
        if name != "ttbar_norm":  # staterror (Gamma) parameters sit at 1, Gaussian NPs at 0
            assert value == pytest.approx(1.0 if name.startswith("staterror_") else 0.0, abs=0.01), name


def test_missing_template_is_an_error_naming_it_and_the_file(agc_histograms, tmp_path):
    broken = copy_histograms(
        agc_histograms, tmp_path / "histograms.root", drop={"4j2b_ttbar_btag_var_2_up", "4j1b_wjets"}
    )
    with pytest.raises(StatisticsError) as err:
        run_inference(broken, tmp_path / "out", figures=False)
    message = str(err.value)
    assert str(broken) in message
    assert "4j2b_ttbar_btag_var_2_up" in message and "4j1b_wjets" in message
    assert "2 histogram(s)" in message
    assert not (tmp_path / "out" / "workspace.json").exists()
    assert not (tmp_path / "out" / "templates").exists()


def test_missing_histograms_file_is_an_error(tmp_path):
    with pytest.raises(StatisticsError, match="histograms file not found"):
        run_inference(tmp_path / "nope.root", tmp_path / "out", figures=False)


# -- a small synthetic model with a weak signal: ranking, significance, limit, figures ----------------

WEAK_MODEL = """
General: {Measurement: weak, POI: ttbar_norm, HistogramFolder: unused,
          InputPath: "histograms.root:{RegionPath}_{SamplePath}{VariationPath}"}
Regions: [{Name: SR, RegionPath: 4j2b, Variable: "m_bjj [GeV]", Binning: [110, 150, 190, 230, 270, 350, 550]}]
Samples:
  - {Name: Pseudodata, SamplePath: pseudodata, Data: true}
  - {Name: ttbar, SamplePath: ttbar}
  - {Name: W+jets, SamplePath: wjets}
NormFactors: [{Name: ttbar_norm, Samples: ttbar, Nominal: 1.0, Bounds: [0, 10]}]
Systematics:
  - {Name: JES, Type: NormPlusShape, Up: {VariationPath: _pt_scale_up}, Down: {Symmetrize: true}}
  - {Name: Luminosity, Type: Normalization, Up: {Normalization: 0.03}, Down: {Normalization: -0.03}}
"""


def weighted_hist(edges: np.ndarray, values: np.ndarray, weight: float):
    import hist

    h = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
    h.view(flow=False)["value"] = values
    h.view(flow=False)["variance"] = values * weight
    return h


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory) -> tuple[Path, Path]:
    """A histograms file with a small ttbar peak on a falling W+jets background, data = sum."""
    folder = tmp_path_factory.mktemp("weak")
    edges = np.linspace(50, 550, 26)
    x = 0.5 * (edges[1:] + edges[:-1])
    wjets, ttbar = 400 * np.exp(-x / 200), 20 * np.exp(-(((x - 175) / 60) ** 2))
    with uproot.recreate(folder / "histograms.root") as f:
        f["4j2b_wjets"] = weighted_hist(edges, wjets, 0.5)
        f["4j2b_ttbar"] = weighted_hist(edges, ttbar, 0.1)
        f["4j2b_wjets_pt_scale_up"] = weighted_hist(edges, wjets * 1.02, 0.5)
        f["4j2b_ttbar_pt_scale_up"] = weighted_hist(edges, ttbar * 1.03, 0.1)
        f["4j2b_pseudodata"] = weighted_hist(edges, wjets + ttbar, 1.0)
    (folder / "weak.yml").write_text(WEAK_MODEL)
    return folder / "histograms.root", folder / "weak.yml"


def test_weak_signal_ranking_significance_limit_figures(weak_model, tmp_path, caplog):
    histograms, config = weak_model
    with caplog.at_level(logging.INFO, logger="utils.inference"):
        result = run_inference(histograms, tmp_path / "out", config, ranking=True, significance=True, limit=True)
    assert result.bestfit == pytest.approx(1.0, abs=0.001)  # data = nominal prediction
    assert result.n_parameters == 9  # POI, JES, lumi, 6 staterror
    assert any("ttbar_norm =" in r.getMessage() for r in caplog.records)
    assert {i.parameter for i in result.ranking} == set(result.parameter_names) - {"ttbar_norm"}
    jes = next(i for i in result.ranking if i.parameter == "JES")
    assert jes.prefit_up * jes.prefit_down < 0 and jes.postfit_up * jes.postfit_down < 0
    assert 1 < result.significance.expected_significance < 4
    assert result.significance.observed_significance == pytest.approx(
        result.significance.expected_significance, rel=1e-3
    )
    lim = result.limit
    assert lim.confidence_level == 0.95 and len(lim.expected_limit) == 5
    assert list(lim.expected_limit) == sorted(lim.expected_limit)
    assert 1 < lim.observed_limit < 10
    assert {
        "pulls",
        "correlation_matrix",
        "data_mc_prefit_SR",
        "data_mc_postfit_SR",
        "ranking",
        "likelihood_scan",
    } == set(result.figures)
    assert all(p.is_file() for p in result.figures.values())
    results = json.loads(result.results_path.read_text())
    assert len(results["ranking"]) == 8 and results["significance"]["observed_significance"] > 1
    scan = results["likelihood_scan"]
    assert scan["parameter"] == "ttbar_norm" and scan["bestfit"] == pytest.approx(result.bestfit)
    low, high = scan["interval_68"]
    assert low < result.bestfit < high
    assert results["limit"]["observed_limit"] == pytest.approx(lim.observed_limit)
    # one limit per workspace: the preservation steps give exactly this one
    from utils.preservation.evaluation import evaluate

    assert evaluate(json.loads(result.workspace_path.read_text()), "weak").limit == lim


def test_ranking_retries_a_failed_refit_with_strategy_2(weak_model, tmp_path, monkeypatch, caplog):
    from utils.inference import fit as statistics
    from utils.inference.ranking import rank_parameters
    from utils.inference.results import prepare_workspace

    histograms, config = weak_model
    _, ws, _ = prepare_workspace(histograms, tmp_path, config, keep_templates=False)
    model, data, fit_results = statistics.fit_workspace(ws)
    real_fit, strategies = statistics.fit_model, []

    def flaky_fit(*args, strategy=None, **kwargs):
        strategies.append(strategy)
        if strategy is None:
            raise StatisticsError("the maximum-likelihood fit failed (test)")
        return real_fit(*args, strategy=strategy, **kwargs)

    monkeypatch.setattr(statistics, "fit_model", flaky_fit)
    with caplog.at_level(logging.WARNING, logger="utils.inference"):
        ranking = rank_parameters(model, data, fit_results, parameters=["JES"], fast=False)
    assert ranking.labels == ["JES"]
    assert strategies == [None, 2] * 4  # four refits, each retried once
    assert "retrying with MINUIT strategy 2" in caplog.text
    with pytest.raises(StatisticsError, match="no parameter"):
        rank_parameters(model, data, fit_results, parameters=["JSE"])


def test_missing_template_in_a_small_model(weak_model, tmp_path):
    histograms, config = weak_model
    broken = copy_histograms(histograms, tmp_path / "histograms.root", drop={"4j2b_ttbar_pt_scale_up"})
    with pytest.raises(StatisticsError, match=r"1 histogram\(s\).*4j2b_ttbar_pt_scale_up"):
        run_inference(broken, tmp_path / "out", config, figures=False)


def test_figure_functions_return_figures(agc_histograms, tmp_path):
    import cabinetry
    from cabinetry.fit.results_containers import RankingResults

    labels = ["a", "b", "c"]
    fit_results = cabinetry.fit.FitResults(
        np.array([1.0, 0.2, -0.1]), np.array([0.1, 0.9, 1.0]), ["mu", *labels[:2]], np.eye(3), 12.0
    )
    fig = plotting_stats.pulls(fit_results, tmp_path / "pulls.png", exclude=["mu"])
    assert fig.axes and fig.axes[0].collections  # the error bars
    assert (tmp_path / "pulls.png").read_bytes().startswith(b"\x89PNG")
    fig = plotting_stats.correlation_matrix(fit_results)
    assert fig.axes and fig.axes[0].images
    ranking = RankingResults(
        np.zeros(3), np.ones(3), labels, np.array([0.1, -0.2, 0.05]), -np.array([0.1, -0.2, 0.05]),
        np.array([0.08, -0.1, 0.04]), -np.array([0.08, -0.1, 0.04]),
    )  # fmt: skip
    fig = plotting_stats.ranking(ranking, tmp_path / "ranking.pdf")
    assert fig.axes and any(ax.patches for ax in fig.axes)
    assert (tmp_path / "ranking.pdf").is_file()


def test_fit_command_prints_the_poi(weak_model, tmp_path):
    from click.testing import CliRunner

    from utils.cli.inference import fit

    histograms, config = weak_model
    out = tmp_path / "out"
    result = CliRunner().invoke(fit, [str(histograms), "--output", str(out), "--config", str(config), "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "ttbar_norm = 1.000 +/- 0.54" in result.output
    assert (out / "workspace.json").is_file() and (out / "fit_results.json").is_file()
    assert not (out / "figures").exists()


def test_failed_limit_is_recorded_and_the_fit_kept(weak_model, tmp_path, monkeypatch):
    from utils.inference import results as statistics

    def no_limit(*args, **kwargs):
        raise StatisticsError("the upper-limit search failed: test")

    monkeypatch.setattr(statistics, "upper_limit_of", no_limit)
    histograms, config = weak_model
    result = run_inference(histograms, tmp_path / "out", config, limit=True, figures=False)
    assert result.limit is None and "upper-limit search failed" in result.failures["limit"]
    assert result.bestfit == pytest.approx(1.0, abs=0.001)
    assert json.loads(result.results_path.read_text())["failures"] == {"limit": result.failures["limit"]}
