"""Shared fixtures: the analysis configuration, the tiny embedded dataset, real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.config import REPO_ROOT, load_analysis_config

REALDATA = REPO_ROOT.parent / "shared" / "realdata"
POET_FILE = REALDATA / "poet2015" / "poet2015_1000evts_merged_events.root"
AGC_HISTOGRAMS = REALDATA / "agc-histograms" / "histograms.root"


@pytest.fixture(scope="session")
def config():
    return load_analysis_config()


@pytest.fixture(scope="session")
def tiny_dataset() -> Path:
    """The tiny embedded dataset (generated once, cached under data/embedded/tiny)."""
    from utils.datasets.embedded import ensure_dataset

    return ensure_dataset("tiny", workers=2)


@pytest.fixture(scope="session")
def poet_file() -> Path:
    if not POET_FILE.is_file():
        pytest.skip(f"real POET file not available at {POET_FILE} (../shared/realdata is absent)")
    return POET_FILE
