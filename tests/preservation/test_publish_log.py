"""``agc publish`` says what it wrote in a handful of log lines: no line per template with empty
bins (cabinetry's notices, one per template and again after postprocessing, were most of its 343
lines), and no notebook parameter resolved on the way."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner
from handmade_histograms import MC, handmade_histograms

from utils.cli import cli
from utils.histograms.accumulate import save_histograms
from utils.inference.config import load_model_config
from utils.inference.templates import required_templates

EMPTY_ABOVE_GEV = 300.0  # W+jets has no simulated event above this: its templates have empty bins


@pytest.fixture(scope="module")
def histograms_root(config, tmp_path_factory):
    """Hand-made histograms.root, W+jets empty above 300 GeV (in both regions' fit ranges,
    110-550 GeV)."""

    def shape(process, x):
        base = (200.0 / (MC.index(process) + 1)) * np.exp(-x / 150.0)
        return np.where(x > EMPTY_ABOVE_GEV, 0.0, base) if process == "wjets" else base

    path = tmp_path_factory.mktemp("publish_log") / "histograms.root"
    save_histograms(handmade_histograms(config, shape), path, config)
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
