"""``agc publish`` says what it wrote in a handful of log lines: no line per template with empty
bins (cabinetry's notices, one per template and again after postprocessing, were most of its 343
lines), and no notebook parameter resolved on the way."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner

from utils.cli import cli
from utils.histograms.accumulate import AnalysisHistograms, empty_hist, save_histograms
from utils.inference.config import load_model_config
from utils.inference.templates import required_templates
from utils.processing.processor import sample_variations

MC = ("ttbar", "wjets", "single_top_s_chan", "single_top_t_chan", "single_top_tW")
EMPTY_ABOVE_GEV = 300.0  # W+jets has no simulated event above this: its templates have empty bins


@pytest.fixture(scope="module")
def histograms_root(config, tmp_path_factory):
    """Hand-made histograms.root: every process and variation a run fills, smooth falling
    shapes, W+jets empty above 300 GeV (in both regions' fit ranges, 110-550 GeV)."""
    variations = sorted({v for p in MC for v in sample_variations(config, p, "nominal")} | set(
        config.alternative_variations))  # fmt: skip
    h = empty_hist(config, list(MC), ["nominal", *[v for v in variations if v != "nominal"]])
    filled = set()
    x = h.axes["observable"].centers
    for k, process in enumerate(MC):
        own = sample_variations(config, process, "nominal")
        if process == "ttbar":
            own = (*own, *config.alternative_variations)
        for j, variation in enumerate(own):
            shape = (200.0 / (k + 1)) * np.exp(-x / 150.0) * (1.0 + 0.01 * (j % 7 - 3))
            if process == "wjets":
                shape = np.where(x > EMPTY_ABOVE_GEV, 0.0, shape)
            for region in config.region_names:
                h.fill(observable=x, region=region, process=process, variation=variation, classification=1,
                       weight=shape)  # fmt: skip
            filled.add((process, variation))
    path = tmp_path_factory.mktemp("publish_log") / "histograms.root"
    save_histograms(AnalysisHistograms(h, frozenset(filled)), path, config)
    return path


def test_publish_logs_a_handful_of_lines(histograms_root, config, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # what `agc publish` shows: our INFO lines, the libraries' warnings
    result = CliRunner().invoke(cli, ["publish", "--histograms", str(histograms_root), "-o", str(tmp_path / "pub")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pub" / "BkgOnly.json").is_file()
    lines = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) <= 8, "\n".join(lines)
    assert not [line for line in lines if "has empty bins" in line], "\n".join(lines)
    assert not [line for line in lines if "DATASET" in line], "publish resolved a notebook dataset"
    raw, _ = load_model_config(analysis=config)
    wjets = [r for r in required_templates(raw) if r.sample["Name"] == "W+jets"]
    total = len(required_templates(raw))
    assert f"utils.inference.templates: {len(wjets)} of {total} templates have empty bins" in "\n".join(lines)
