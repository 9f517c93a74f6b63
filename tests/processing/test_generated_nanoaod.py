"""The generated tiny NanoAOD dataset through the NanoAOD processor: both regions filled by every
nominal sample, ttbar the largest contribution to 4j2b, selection efficiencies in the range of
the AGC main line (ttbar: 2.1 % in 4j2b, 1.0 % in 4j1b on the real files)."""

import pytest

from utils.datasets.fileset import build_fileset
from utils.processing.nanoaod import TREE_NAME
from utils.processing.run import ProcessingOptions, process_fileset

NOMINAL = ("ttbar__nominal", "single_top_s_chan__nominal", "single_top_t_chan__nominal", "single_top_tW__nominal",
           "wjets__nominal")  # fmt: skip


@pytest.mark.slow
def test_generated_nanoaod_fills_both_regions_and_ttbar_dominates_4j2b(tiny_nanoaod, config):
    fileset = {k: v for k, v in build_fileset(tiny_nanoaod, treename=TREE_NAME).items() if k in NOMINAL}
    assert set(fileset) == set(NOMINAL)
    result = process_fileset(fileset, ProcessingOptions(executor="iterative", input_format="nanoaod"), config)
    assert result.metrics["entries"] == sum(e["metadata"]["nevts"] for e in fileset.values())
    yields = {}
    for sample, entry in fileset.items():
        meta = entry["metadata"]
        weight = meta["xsec"] * config.luminosity / meta["nevts"]
        counts = result.selected[sample]
        assert counts.get("nominal/4j1b", 0) > 0 and counts.get("nominal/4j2b", 0) > 0, sample
        yields[sample] = {r: counts[f"nominal/{r}"] * weight for r in ("4j1b", "4j2b")}
    ttbar = result.selected["ttbar__nominal"]
    n_ttbar = fileset["ttbar__nominal"]["metadata"]["nevts"]
    assert 0.005 < ttbar["nominal/4j2b"] / n_ttbar < 0.1
    assert 0.005 < ttbar["nominal/4j1b"] / n_ttbar < 0.1
    others = sum(y["4j2b"] for s, y in yields.items() if s != "ttbar__nominal")
    assert yields["ttbar__nominal"]["4j2b"] > others
    # the histograms hold the same events: sum of weights / weight = selected counts
    hist = result.histograms.hist
    nominal = hist[{"process": "ttbar", "variation": "nominal", "region": "4j2b"}]
    weight = fileset["ttbar__nominal"]["metadata"]["xsec"] * config.luminosity / n_ttbar
    assert round(nominal.sum(flow=True).value / weight) == ttbar["nominal/4j2b"]


def test_io_only_on_nanoaod_reads_its_branch_set_and_counts_every_entry(tiny_nanoaod, config):
    """DISABLE_PROCESSING on NanoAOD: the NanoAOD I/O branch set is read and every entry is
    counted (the entry check of the run compares them with the description's nevts)."""
    from utils.processing.nanoaod import IO_BRANCHES as NANOAOD_IO_BRANCHES

    fileset = {k: v for k, v in build_fileset(tiny_nanoaod, treename=TREE_NAME).items() if k == "ttbar__nominal"}
    options = ProcessingOptions(executor="iterative", input_format="nanoaod", disable_processing=True)
    result = process_fileset(fileset, options, config)
    assert result.histograms is None
    assert result.metrics["entries"] == fileset["ttbar__nominal"]["metadata"]["nevts"] > 0
    read = {c.rsplit("-", 1)[0] for c in result.metrics["columns"]}
    assert set(NANOAOD_IO_BRANCHES) <= read, read
