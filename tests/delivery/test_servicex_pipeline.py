"""The ServiceX pipeline gives the same histograms as reading the files directly."""

import socket

import numpy as np
import pytest

from utils.datasets.fileset import build_fileset
from utils.processing.run import ProcessingOptions, process_fileset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_servicex_and_direct_histograms_identical(tiny_dataset, config, tmp_path, monkeypatch):
    from utils.delivery import deliver_fileset

    monkeypatch.setenv("AGC_SERVICEX_DIR", str(tmp_path / "servicex"))
    monkeypatch.setenv("AGC_SERVICEX_PORT", str(_free_port()))
    fileset = build_fileset(tiny_dataset)
    direct = process_fileset(fileset, ProcessingOptions(executor="iterative"), config)
    delivery = deliver_fileset(fileset, query_language="uproot-raw")
    assert delivery.stats.n_files == sum(len(e["files"]) for e in fileset.values())
    assert delivery.stats.events < sum(e["metadata"]["nevts"] for e in fileset.values())  # a real skim
    skimmed = process_fileset(delivery.fileset, ProcessingOptions(executor="iterative"), config)
    assert skimmed.histograms.filled == direct.histograms.filled
    # every variation, pt_res_up included: the smearing does not depend on entry numbers
    np.testing.assert_array_equal(skimmed.histograms.hist.view(flow=True).value,
                                  direct.histograms.hist.view(flow=True).value)  # fmt: skip
    np.testing.assert_array_equal(skimmed.histograms.hist.view(flow=True).variance,
                                  direct.histograms.hist.view(flow=True).variance)  # fmt: skip
    assert direct.histograms.hist[{"variation": "pt_res_up"}].sum(flow=True).value > 0
