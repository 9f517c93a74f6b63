"""ServiceX on NanoAOD: the skim comes from the processor's NanoAOD object definitions, and the
ServiceX pipeline gives the same histograms as reading the generated NanoAOD files directly."""

import dataclasses
import socket

import awkward as ak
import numpy as np
import pytest
import uproot

from utils.datasets.fileset import build_fileset
from utils.delivery.query import nanoaod_skim_definition, skim_definition, uproot_raw_cut
from utils.processing.nanoaod import TREE_NAME, select_nanoaod, selected_leptons
from utils.processing.run import ProcessingOptions, process_fileset

SAMPLES = ("ttbar__nominal", "single_top_tW__nominal", "wjets__nominal")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_nanoaod_skim_has_the_processors_full_lepton_definition(config):
    skim = skim_definition(config, input_format="nanoaod")
    assert skim == nanoaod_skim_definition(config)
    leptons, jets, btags = skim.requirements
    muon = next(c for c in leptons.counts if c.collection == "Muon")
    assert {(c.field, c.op, c.value) for c in muon.cuts} == {
        ("pt", ">", 30.0), ("eta", "<", 2.1), ("tightId", "==", 1), ("sip3d", "<", 4.0),
        ("pfRelIso04_all", "<", 0.15),
    }  # fmt: skip
    assert ((jets.op, jets.number), (btags.op, btags.number)) == ((">=", 4), (">=", 1))
    # jets: the loosest pT a +5 sigma resolution or the scale variation could lift over 30 GeV
    assert {(c.field, c.op, c.value) for c in jets.counts[0].cuts} == {
        ("pt", ">", 24.0), ("eta", "<", 2.4), ("jetId", "&", 4)}  # fmt: skip
    assert "(abs(Muon_eta) < 2.1) & (Muon_tightId == 1) & (Muon_sip3d < 4.0)" in uproot_raw_cut(skim)
    assert "((Jet_jetId & 4) != 0)" in uproot_raw_cut(skim)
    # the cuts follow the configuration, never a second copy of the numbers
    tighter = dataclasses.replace(config, nanoaod=dataclasses.replace(config.nanoaod, muon_sip3d_max=3.0))
    assert "(Muon_sip3d < 3.0)" in uproot_raw_cut(skim_definition(tighter, input_format="nanoaod"))


def test_skim_keeps_every_event_the_processor_selects(tiny_nanoaod, config):
    """On a generated file, with the local endpoint's uproot-raw evaluator: every event the
    processor selects under any jet variation is kept, and every kept event has exactly one
    lepton of the processor's definition."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from utils.delivery.local.uproot_raw import run_subqueries
    from utils.delivery.query import uproot_raw_selection

    path = next(iter(build_fileset(tiny_nanoaod, treename=TREE_NAME)["ttbar__nominal"]["files"]))
    skim = skim_definition(config, input_format="nanoaod")
    trees, _ = run_subqueries(path, uproot_raw_selection(skim, TREE_NAME))
    kept = set(trees[TREE_NAME].event.to_numpy().tolist())
    events = NanoEventsFactory.from_root({path: TREE_NAME}, schemaclass=NanoAODSchema, mode="eager").events()
    electrons, muons = selected_leptons(events, config.nanoaod)
    one_lepton = set(events.event[(ak.sum(electrons, axis=1) + ak.sum(muons, axis=1)) == 1].to_numpy().tolist())
    selected = {
        int(e) for v in config.jet_variations for e in events.event[select_nanoaod(events, config, v).index].to_numpy()
    }
    assert 0 < len(selected) <= len(kept) < len(events) / 5
    assert selected <= kept <= one_lepton


@pytest.mark.slow
def test_servicex_and_direct_histograms_identical_on_nanoaod(tiny_nanoaod, config, tmp_path, monkeypatch):
    from utils.delivery import deliver_fileset

    monkeypatch.setenv("AGC_SERVICEX_DIR", str(tmp_path / "servicex"))
    monkeypatch.setenv("AGC_SERVICEX_PORT", str(_free_port()))
    fileset = {k: v for k, v in build_fileset(tiny_nanoaod, treename=TREE_NAME).items() if k in SAMPLES}
    options = ProcessingOptions(executor="iterative", input_format="nanoaod")
    direct = process_fileset(fileset, options, config)
    delivery = deliver_fileset(fileset, query_language="uproot-raw", input_format="nanoaod")
    assert delivery.stats.n_files == sum(len(e["files"]) for e in fileset.values())
    assert delivery.stats.events < sum(e["metadata"]["nevts"] for e in fileset.values()) / 20  # a real skim
    delivered = next(iter(delivery.fileset["ttbar__nominal"]["files"]))
    with uproot.open(delivered) as f:
        assert {"nJet", "nMuon", "nElectron", "Jet_jetId", "Muon_sip3d", "event"} <= set(f[TREE_NAME].keys())
    skimmed = process_fileset(delivery.fileset, options, config)
    assert skimmed.selected == direct.selected
    assert skimmed.histograms.filled == direct.histograms.filled
    # every variation, pt_res_up included: its smearing is keyed by (run, lumi, event, jet index)
    np.testing.assert_array_equal(skimmed.histograms.hist.view(flow=True).value,
                                  direct.histograms.hist.view(flow=True).value)  # fmt: skip
    np.testing.assert_array_equal(skimmed.histograms.hist.view(flow=True).variance,
                                  direct.histograms.hist.view(flow=True).variance)  # fmt: skip
    assert direct.histograms.hist[{"variation": "pt_res_up"}].sum(flow=True).value > 0
    assert all(direct.selected[s].get("nominal/4j2b", 0) > 0 for s in SAMPLES)


@pytest.mark.slow
def test_func_adl_gives_the_same_events_as_uproot_raw_on_nanoaod(tiny_nanoaod, tmp_path, monkeypatch):
    from utils.delivery import deliver_fileset
    from utils.delivery.deliver import read_delivered

    monkeypatch.setenv("AGC_SERVICEX_DIR", str(tmp_path / "servicex"))
    monkeypatch.setenv("AGC_SERVICEX_PORT", str(_free_port()))
    fileset = {k: v for k, v in build_fileset(tiny_nanoaod, treename=TREE_NAME).items() if k == "ttbar__nominal"}

    def events(language: str) -> list[int]:
        result = deliver_fileset(fileset, query_language=language, input_format="nanoaod")
        return sorted(e for p in result.fileset["ttbar__nominal"]["files"] for e in read_delivered(p).event.tolist())

    raw = events("uproot-raw")
    assert len(raw) > 0 and events("func-adl") == raw
