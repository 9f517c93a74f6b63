"""A Dask worker killed in the middle of a run: the run completes with identical histograms."""

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from coffea import processor

from utils.datasets.fileset import build_fileset, normalisation
from utils.histograms.accumulate import AnalysisHistograms
from utils.processing.executors import make_executor
from utils.processing.processor import TtbarAnalysis
from utils.processing.run import ProcessingOptions, process_fileset
from utils.processing.schema import AGCSchema


class DiesOnceProcessor(TtbarAnalysis):
    """Kills its worker process (hard exit, as an OOM kill would) the first time it sees the
    chosen chunk; the marker file makes the retry succeed."""

    def __init__(self, config, marker: str, victim: str):
        super().__init__(config)
        self.marker = marker
        self.victim = victim

    def process(self, events):
        meta = events.metadata
        if meta["filename"] == self.victim and meta["entrystart"] > 0 and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().process(events)


@pytest.mark.slow
def test_killed_dask_worker_does_not_change_the_result(tiny_dataset, config, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    fileset = build_fileset(tiny_dataset)
    reference = process_fileset(fileset, ProcessingOptions(executor="iterative"), config)
    victim = next(iter(fileset["wjets__nominal"]["files"]))
    marker = tmp_path / "killed"
    proc = DiesOnceProcessor(config, str(marker), victim)
    with make_executor("dask", 2) as ex:
        runner = processor.Runner(executor=ex.executor, schema=AGCSchema, savemetrics=True, chunksize=4000)
        output, metrics = runner(fileset, processor_instance=proc, treename="events")
    assert marker.exists(), "the worker was never killed: the test did not test anything"
    result = AnalysisHistograms.from_accumulators(output["hists"], normalisation(fileset, config), config)
    assert metrics["entries"] == sum(e["metadata"]["nevts"] for e in fileset.values())
    assert result.filled == reference.histograms.filled
    np.testing.assert_array_equal(result.hist.view(flow=True).value, reference.histograms.hist.view(flow=True).value)
