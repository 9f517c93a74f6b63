"""FIT_DATA: the fit to the dataset's generated data sample recovers the true signal strength;
a bad value, or data the histograms lack, is a clear error."""

from __future__ import annotations

import json

import pytest
import uproot

from utils.errors import ConfigError, StatisticsError
from utils.inference.config import load_cabinetry_config, with_observed
from utils.inference.results import run_inference
from utils.run.parameters import RunParameters


@pytest.fixture(scope="module")
def tiny_data_histograms(tiny_dataset, config, tmp_path_factory):
    """histograms.root of the tiny dataset processed for FIT_DATA='data' (MC at the data's luminosity)."""
    from utils.histograms.accumulate import save_histograms
    from utils.run import pipeline

    folder = tmp_path_factory.mktemp("tiny_data")
    params = RunParameters(dataset=str(tiny_dataset), use_ml=False, num_cores=2, output_dir=str(folder),
                           fit_data="data")  # fmt: skip
    _, fileset = pipeline.fileset_for(params)
    delivered = pipeline.deliver(params, fileset, config)
    result = pipeline.process(params, delivered.fileset, config)
    save_histograms(result.histograms, folder / "histograms.root", config)
    return folder / "histograms.root"


def test_the_fit_to_data_recovers_the_true_strength(tiny_data_histograms, tiny_dataset, tmp_path):
    truth = json.loads(tiny_dataset.read_text())["data"]["nominal"]["mu"]
    result = run_inference(tiny_data_histograms, tmp_path, figures=False, fit_data="data")
    assert result.fit_data == "data"
    # tiny's 6000 ttbar MC events select ~2 sigma more often than the generator's average (its
    # own statistics, which the fit's staterror carries): 0.79 +/- 0.17 here
    assert abs(result.bestfit - truth) < 2 * result.uncertainty, (result.bestfit, result.uncertainty)
    saved = json.loads(result.results_path.read_text())
    assert saved["settings"]["fit_data"] == "data"
    ws = json.loads(result.workspace_path.read_text())
    with uproot.open(tiny_data_histograms) as f:
        edges, observed = f["4j2b_data"].axis().edges(), f["4j2b_data"].values()
    # the workspace observes the data events of the fit range (from 110 GeV on)
    in_fit = observed[edges[:-1] >= 110.0].sum()
    assert in_fit > 1000
    assert sum(sum(o["data"]) for o in ws["observations"] if "4j2b" in o["name"]) == pytest.approx(in_fit)
    # the pseudo-data fit of the same histograms is the default, and says so
    pseudo = run_inference(tiny_data_histograms, tmp_path / "pseudo", figures=False)
    assert pseudo.fit_data == "pseudodata" and pseudo.bestfit != result.bestfit


def test_a_bad_fit_data_value_is_a_clear_error(tiny_data_histograms, tmp_path):
    with pytest.raises(ConfigError, match=r"FIT_DATA='observed': allowed \['pseudodata', 'data'\]"):
        RunParameters(dataset="embedded:tiny", fit_data="observed")
    with pytest.raises(ConfigError, match="FIT_DATA='Data'"):
        run_inference(tiny_data_histograms, tmp_path, fit_data="Data")
    with pytest.raises(ConfigError, match="FIT_DATA"):
        with_observed(load_cabinetry_config(), "asimov")


def test_fit_data_needs_the_data_histograms(tiny_data_histograms, tmp_path):
    without = tmp_path / "histograms.root"
    with uproot.open(tiny_data_histograms) as fin, uproot.recreate(without) as fout:
        for name in fin.keys(cycle=False):
            if not name.endswith("_data"):
                fout[name] = fin[name].to_hist()
    with pytest.raises(StatisticsError, match=r"FIT_DATA='data' needs the data sample's histograms.*4j1b_data"):
        run_inference(without, tmp_path / "fit", figures=False, fit_data="data")


def test_the_observed_sample_is_switched_in_the_model():
    config = load_cabinetry_config()
    data = with_observed(config, "data")
    observed = [s for s in data["Samples"] if s.get("Data")]
    assert [(s["Name"], s["SamplePath"]) for s in observed] == [("Data", "data")]
    assert with_observed(config, "pseudodata") == config
