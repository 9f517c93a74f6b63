"""Closure and injection: an embedded "data" sample generated with a known ttbar signal strength
is fitted back within its uncertainty."""

import pytest
import yaml

from utils.datasets.fileset import build_fileset, data_luminosity
from utils.histograms.accumulate import save_histograms
from utils.processing.run import ProcessingOptions, process_fileset

TRUE_MU = 1.2


@pytest.mark.slow
def test_injected_ttbar_strength_is_recovered(tmp_path, config):
    from utils.datasets.embedded import build_dataset
    from utils.datasets.embedded.presets import DEFAULT_PRESETS
    from utils.inference.results import run_inference

    # the tiny MC with its data (5 % of the luminosity, preselected), ttbar scaled by TRUE_MU
    presets = yaml.safe_load(DEFAULT_PRESETS.read_text())
    presets_path = tmp_path / "presets.yml"
    presets_path.write_text(yaml.safe_dump(presets))
    path = build_dataset("tiny", tmp_path / "embedded", with_data=True, mu=TRUE_MU, workers=2,
                         presets_path=presets_path).fileset_path  # fmt: skip
    fileset = build_fileset(path)
    lumi = data_luminosity(fileset)
    assert lumi is not None and lumi < config.luminosity
    result = process_fileset(fileset, ProcessingOptions(executor="futures", workers=2), config, luminosity=lumi)
    histograms = tmp_path / "histograms.root"
    names = save_histograms(result.histograms, histograms, config)
    assert "4j2b_data" in names and "4j1b_data" in names

    # fit the generated data instead of the pseudo-data
    fit = run_inference(histograms, tmp_path / "fit", figures=False, fit_data="data")
    assert fit.poi_name == "ttbar_norm"
    assert abs(fit.bestfit - TRUE_MU) < 2 * fit.uncertainty, (fit.bestfit, fit.uncertainty)
    assert fit.uncertainty < 0.3
