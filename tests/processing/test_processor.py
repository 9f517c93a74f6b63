"""The processor end to end on real files and on the tiny embedded dataset."""

import numpy as np
import pytest

from utils.datasets.fileset import build_fileset
from utils.processing.run import ProcessingOptions, process_fileset


def _poet_fileset(path):
    meta = {"process": "ttbar", "variation": "nominal", "nevts": 1000, "xsec": 729.84}
    return {"ttbar__nominal": {"files": {str(path): "events"}, "metadata": meta}}


def test_real_poet_file_goes_through(poet_file, config):
    """A real 2015 POET ntuple (Drell-Yan, 232 branches incl. extra ones) is processed without error."""
    result = process_fileset(_poet_fileset(poet_file), ProcessingOptions(executor="iterative", chunksize=400), config)
    assert result.nevents == {"ttbar__nominal": 1000}
    assert result.metrics["entries"] == 1000 and result.metrics["chunks"] >= 2
    # minimal column access: only the analysis branches are read
    read = {c.rsplit("-", 1)[0] for c in result.metrics["columns"]}
    assert read == {"jet_pt", "jet_eta", "jet_phi", "jet_mass", "jet_btag", "electron_pt", "muon_pt"}
    h = result.histograms.hist
    assert ("ttbar", "pt_res_up") in result.histograms.filled
    assert h.sum(flow=True).value >= 0


def test_io_only_mode_reads_the_fixed_branch_set(poet_file, config):
    params = ProcessingOptions(executor="iterative", disable_processing=True, io_file_percent=15)
    result = process_fileset(_poet_fileset(poet_file), params, config)
    assert result.histograms is None
    read = {c.rsplit("-", 1)[0] for c in result.metrics["columns"]}
    assert {"jet_e", "jet_btag", "muon_pt", "electron_pt", "trigobj_e"} <= read
    assert "jet_mass" not in read


@pytest.mark.slow
def test_histograms_identical_for_chunk_sizes_and_executors(tiny_dataset, config):
    """Bit-identical histograms whatever the chunking or executor (pt_res_up included)."""
    fileset = build_fileset(tiny_dataset)
    runs = [
        process_fileset(fileset, ProcessingOptions(executor="iterative", chunksize=100_000), config),
        process_fileset(fileset, ProcessingOptions(executor="iterative", chunksize=777), config),
        process_fileset(fileset, ProcessingOptions(executor="futures", workers=2, chunksize=1500), config),
    ]
    ref = runs[0].histograms
    assert ref.hist.sum(flow=True).value > 0
    for other in runs[1:]:
        assert other.histograms.filled == ref.filled
        np.testing.assert_array_equal(other.histograms.hist.view(flow=True).value, ref.hist.view(flow=True).value)
        np.testing.assert_array_equal(other.histograms.hist.view(flow=True).variance, ref.hist.view(flow=True).variance)
    assert runs[1].metrics["chunks"] > runs[0].metrics["chunks"]
