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
def tiny_histograms(tiny_dataset, config, tmp_path_factory) -> Path:
    """The folder of the tiny dataset's histograms.root and histograms_ml.root (the ML-score categories)."""
    from utils.histograms.accumulate import save_histograms
    from utils.run import pipeline
    from utils.run.parameters import RunParameters

    folder = tmp_path_factory.mktemp("tiny_hist")
    params = RunParameters(dataset=str(tiny_dataset), use_ml=True, num_cores=2, output_dir=str(folder))
    _, fileset = pipeline.fileset_for(params)
    delivered = pipeline.deliver(params, fileset, config)
    result = pipeline.process(params, delivered.fileset, config, pipeline.make_classifier(True))
    save_histograms(result.histograms, folder / "histograms.root", config)
    save_histograms(result.histograms, folder / "histograms_ml.root", config, ml_categories=True)
    return folder


@pytest.fixture(scope="session")
def tiny_nanoaod() -> Path:
    """The tiny embedded dataset in NanoAOD (generated once, cached under data/embedded/tiny-nanoaod)."""
    from utils.datasets.embedded import ensure_dataset

    return ensure_dataset("tiny", workers=2, input_format="nanoaod")


@pytest.fixture(scope="session")
def poet_file() -> Path:
    if not POET_FILE.is_file():
        pytest.skip(f"real POET file not available at {POET_FILE} (../shared/realdata is absent)")
    return POET_FILE


@pytest.fixture(scope="session")
def xrootd_server(tiny_dataset):
    """A real xrootd (Debian's xrootd-server) serving the tiny dataset's folder over root://, and
    over HTTP and HTTPS (XrdHttp, TLS with a certificate made for it; its CA is ``ca_file``) on
    free loopback ports; skips, saying why, when xrootd is not installed."""
    from utils.delivery.xrootd import XRootDServer, XRootDUnavailableError

    try:
        server = XRootDServer(tiny_dataset.parent, tls=True).start()
    except XRootDUnavailableError as err:
        pytest.skip(str(err))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def counting_workspace():
    """Make a two-bin counting workspace (pyhf's uncorrelated background, signal ``signal`` and
    ``signal / 2``, data near the background); its POI ``mu`` lies in [0, 50]."""

    def make(signal: float) -> dict:
        import pyhf

        model = pyhf.simplemodels.uncorrelated_background([signal, signal / 2], [50.0, 30.0], [5.0, 4.0])
        return {
            "channels": model.spec["channels"],
            "observations": [{"name": "singlechannel", "data": [52.0, 29.0]}],
            "measurements": [
                {"name": "m", "config": {"poi": "mu", "parameters": [{"name": "mu", "bounds": [[0, 50]]}]}}
            ],
            "version": "1.0.0",
        }

    return make
