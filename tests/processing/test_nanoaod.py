"""The NanoAOD selection (the AGC main line) on hand-made events with hand-computed answers, and
on a real 947-branch NanoAOD file."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from utils.errors import ConfigError
from utils.processing.nanoaod import TREE_NAME, jet_normals, select_nanoaod, select_nanoaod_variations, selected_jets
from utils.processing.run import ProcessingOptions, process_fileset

# hand-made files hold only the branches the selection reads, not every cross-reference index
pytestmark = pytest.mark.filterwarnings("ignore:Missing cross-reference index")

REAL_NANOAOD = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata" / "nanoaod2015"
REAL_FILE = REAL_NANOAOD / "nanoAOD_2015_CMS_Open_Data_ttbar.root"

GOOD_MUON = {"pt": 40.0, "eta": 0.0, "tightId": True, "sip3d": 1.0, "pfRelIso04_all": 0.05}
JETS_1B = [(100.0, 0.0, 0.9, 6), (80.0, math.pi, 0.1, 6), (60.0, math.pi / 2, 0.1, 6), (40.0, -math.pi / 2, 0.1, 6)]
JETS_2B = [(100.0, 0.0, 0.9, 6), (80.0, math.pi, 0.9, 6), (60.0, math.pi / 2, 0.1, 6), (40.0, -math.pi / 2, 0.1, 6)]

# (name, muons, electrons, jets (pt, phi, btag, jetId) at eta 0): one event per cut it fails
EVENTS = [
    ("4j1b", [GOOD_MUON], [], JETS_1B),
    ("fails only sip3d", [{**GOOD_MUON, "sip3d": 5.0}], [], JETS_1B),
    ("fails only isolation", [{**GOOD_MUON, "pfRelIso04_all": 0.2}], [], JETS_1B),
    ("fails only tightId", [{**GOOD_MUON, "tightId": False}], [], JETS_1B),
    ("fails only muon eta", [{**GOOD_MUON, "eta": 2.2}], [], JETS_1B),
    ("fails only jetId", [GOOD_MUON], [], [*JETS_1B[:3], (40.0, -math.pi / 2, 0.1, 2)]),
    ("fails only jet pt", [GOOD_MUON], [], [*JETS_1B[:3], (29.0, -math.pi / 2, 0.1, 6)]),
    ("fails only electron cutBased", [], [{"pt": 40.0, "eta": 0.0, "cutBased": 3, "sip3d": 1.0}], JETS_1B),
    ("4j1b with an electron", [], [{"pt": 40.0, "eta": 0.0, "cutBased": 4, "sip3d": 1.0}], JETS_1B),
    ("fails only the lepton count", [GOOD_MUON], [{"pt": 40.0, "eta": 0.0, "cutBased": 4, "sip3d": 1.0}], JETS_1B),
    ("fails only the b-tag", [GOOD_MUON], [], [(p, f, 0.1, i) for p, f, _, i in JETS_1B]),
    ("4j2b", [GOOD_MUON], [], JETS_2B),
]


def _collection(rows: list[dict], fields: dict[str, type]) -> ak.Array:
    return ak.zip({f: ak.Array([[r.get(f, 0) for r in event] for event in rows], with_name=None)
                   for f in fields}, depth_limit=2)  # fmt: skip


def write_nanoaod(path: Path, events=EVENTS) -> Path:
    muons = [[{"phi": 0.5, "mass": 0.105, "charge": -1, **m} for m in e[1]] for e in events]
    electrons = [[{"phi": -0.5, "mass": 0.0005, "charge": 1, **el} for el in e[2]] for e in events]
    jets = [[{"pt": pt, "eta": 0.0, "phi": phi, "mass": 0.0, "btagCSVV2": b, "jetId": i, "qgl": 0.5}
             for pt, phi, b, i in e[3]] for e in events]  # fmt: skip

    def typed(rows, dtypes):
        return ak.zip(
            {f: ak.values_astype(ak.Array([[r[f] for r in ev] for ev in rows]), t) for f, t in dtypes.items()}
        )

    f32 = np.float32
    data = {
        "run": np.full(len(events), 1, np.uint32),
        "luminosityBlock": np.arange(len(events), dtype=np.uint32) + 7,
        "event": np.arange(len(events), dtype=np.uint64) + 1000,
        "Muon": typed(muons, {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "tightId": bool, "sip3d": f32,
                              "pfRelIso04_all": f32, "charge": np.int32}),
        "Electron": typed(electrons, {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "cutBased": np.int32,
                                      "sip3d": f32, "charge": np.int32}),
        "Jet": typed(jets, {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "btagCSVV2": f32, "jetId": np.int32,
                            "qgl": f32}),
    }  # fmt: skip
    with uproot.recreate(path) as f:
        f.mktree(TREE_NAME, data)
    return path


def compiled(events, config, variation="nominal"):
    """The processor's selection (one compiled pass per variation) of one variation."""
    return select_nanoaod_variations(events, config, (variation,))[variation]


#: the awkward selection (the specification) and the processor's compiled one answer every test
SELECTIONS = pytest.mark.parametrize("select", [select_nanoaod, compiled], ids=["awkward", "compiled"])

FIELDS = ("index", "region", "ht", "m_bjj", "weight_jet_pt", "jet_selected", "jet_factor")


def assert_identical(a, b) -> None:
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field, strict=True)


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> Path:
    return write_nanoaod(tmp_path_factory.mktemp("nano") / "handmade.root")


def events_of(path: Path):
    return NanoEventsFactory.from_root({str(path): TREE_NAME}, schemaclass=NanoAODSchema, mode="eager").events()


@SELECTIONS
def test_each_cut_of_the_facts_sheet(handmade, config, select):
    sel = select(events_of(handmade), config)
    names = [EVENTS[i][0] for i in sel.index]
    assert names == ["4j1b", "4j1b with an electron", "4j2b"]
    assert [config.region_names[r] for r in sel.region] == ["4j1b", "4j1b", "4j2b"]


@SELECTIONS
def test_ht_and_m_bjj_by_hand(handmade, config, select):
    sel = select(events_of(handmade), config)
    assert sel.ht.tolist() == pytest.approx([280.0, 280.0, 280.0])
    # trijets of the 4j2b event (all at eta 0, massless): vector pT^2 of (0,1,2) 4000, (0,1,3) 2000,
    # (0,2,3) 10400, (1,2,3) 6800: (0,2,3) wins, E = 200, |p|^2 = 10400
    assert sel.m_bjj[2] == pytest.approx(math.sqrt(200.0**2 - 10400.0), rel=1e-6)
    assert sel.observable(config)[2] == pytest.approx(sel.m_bjj[2])
    assert sel.weight_jet_pt[0].tolist() == pytest.approx([100.0, 80.0, 60.0, 40.0])


@SELECTIONS
def test_jet_variations_move_acceptance_and_scale_the_mass(handmade, config, select):
    events = events_of(handmade)
    up = select(events, config, config.pt_scale_name)
    # the 29 GeV jet passes at 29 x 1.03 = 29.87 < 30: still out; HT scales by the factor
    assert [EVENTS[i][0] for i in up.index] == ["4j1b", "4j1b with an electron", "4j2b"]
    assert up.ht.tolist() == pytest.approx([280.0 * config.pt_scale_factor] * 3)
    assert up.m_bjj[2] == pytest.approx(config.pt_scale_factor * math.sqrt(200.0**2 - 10400.0), rel=1e-6)
    with pytest.raises(ConfigError, match="unknown jet variation"):
        select(events, config, "pt_scale_down")


def test_resolution_normals_are_per_jet_and_survive_chunking():
    rng = np.random.default_rng(3)
    n = 5000
    run, lumi = rng.integers(1, 10, n), rng.integers(1, 500, n)
    event, counts = rng.permutation(n) + 1, rng.integers(0, 8, n)
    full = jet_normals(run, lumi, event, counts, seed=2015)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    part = jet_normals(run[1000:2000], lumi[1000:2000], event[1000:2000], counts[1000:2000], seed=2015)
    np.testing.assert_array_equal(part, full[offsets[1000] : offsets[2000]])
    assert abs(full.mean()) < 0.05 and abs(full.std() - 1.0) < 0.05
    assert not np.array_equal(full, jet_normals(run, lumi, event, counts, seed=2016))


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"{REAL_FILE} is absent (../shared/realdata)")
def test_a_real_nanoaod_file_goes_through_the_processor(config):
    fileset = {"ttbar__nominal": {"files": {str(REAL_FILE): TREE_NAME},
                                  "metadata": {"process": "ttbar", "variation": "nominal", "nevts": 200,
                                               "xsec": 396.87}}}  # fmt: skip
    result = process_fileset(fileset, ProcessingOptions(executor="iterative", input_format="nanoaod"), config)
    assert result.metrics["entries"] == 200
    assert result.histograms is not None
    assert result.histograms.hist.sum(flow=True).value == 0  # no event of this file has four tight jets
    # the AGC v1 object cuts (leptons and jets pT > 25, nothing else) select four events of it
    loose = dataclasses.replace(
        config.nanoaod, electron_pt_min=25, electron_abs_eta_max=math.inf, electron_cut_based=0,
        electron_sip3d_max=math.inf, muon_pt_min=25, muon_abs_eta_max=math.inf, muon_tight_id=False,
        muon_sip3d_max=math.inf, muon_iso_max=math.inf, jet_pt_min=25, jet_abs_eta_max=math.inf, jet_id_mask=0,
    )  # fmt: skip
    v1 = dataclasses.replace(config, nanoaod=loose)
    events = events_of(REAL_FILE)
    assert len(select_nanoaod(events, v1).index) == 4
    for variation, sel in select_nanoaod_variations(events, v1, v1.jet_variations).items():
        assert_identical(sel, select_nanoaod(events, v1, variation))


def _loose(config):
    """Cuts that select many more events of the generated files, a b-tag threshold that float32
    cannot hold exactly and no jet ID requirement."""
    loose = dataclasses.replace(config.nanoaod, electron_cut_based=1, muon_tight_id=False, muon_iso_max=0.4,
                                jet_pt_min=25.3, jet_id_mask=0)  # fmt: skip
    return dataclasses.replace(config, nanoaod=loose, btag_threshold=0.8484, min_jets=3)


@pytest.mark.parametrize("cuts", ["analysis", "loose"])
def test_the_compiled_selection_is_the_awkward_one_bit_for_bit(tiny_nanoaod, config, cuts):
    """Every jet variation, every output, on generated files of three processes: exactly equal
    (same events, regions, HT, m_bjj and b-tag weight pTs to the last bit)."""
    cfg = config if cuts == "analysis" else _loose(config)
    for sample in ("ttbar__nominal", "wjets__nominal", "single_top_tW__nominal"):
        events = events_of(tiny_nanoaod.parent / sample / "0.root")
        compiled_all = select_nanoaod_variations(events, cfg, cfg.jet_variations)
        assert tuple(compiled_all) == cfg.jet_variations
        for variation, sel in compiled_all.items():
            spec = select_nanoaod(events, cfg, variation)
            assert_identical(sel, spec)
            if sample == "ttbar__nominal":
                assert len(spec.index) > 20 and set(spec.region.tolist()) == {0, 1}, (variation, len(spec.index))
        nominal, res = compiled_all["nominal"], compiled_all[cfg.pt_res_name]
        assert not np.array_equal(nominal.ht, res.ht) or not np.array_equal(nominal.index, res.index)


def test_handmade_file_through_the_processor_fills_the_regions(handmade, config):
    fileset = {"ttbar__nominal": {"files": {str(handmade): TREE_NAME},
                                  "metadata": {"process": "ttbar", "variation": "nominal", "nevts": len(EVENTS),
                                               "xsec": 1.0}}}  # fmt: skip
    result = process_fileset(fileset, ProcessingOptions(executor="iterative", input_format="nanoaod"), config)
    assert result.selected["ttbar__nominal"]["nominal/4j1b"] == 2
    assert result.selected["ttbar__nominal"]["nominal/4j2b"] == 1
    with pytest.raises(ConfigError, match="input_format='nano'"):
        ProcessingOptions(input_format="nano")


def test_the_real_nanoaod_list_is_a_dataset_loaded_unchanged():
    from utils.datasets.resolve import REAL_NANOAOD_NAME
    from utils.run.parameters import RunParameters
    from utils.run.pipeline import fileset_for

    params = RunParameters(dataset=REAL_NANOAOD_NAME, use_ml=False)
    assert params.resolved_input_format == "nanoaod"
    assert params.processing_options().input_format == "nanoaod"
    _, fileset = fileset_for(params)
    assert len(fileset) == 9
    assert sum(len(e["files"]) for e in fileset.values()) == 787  # the facts sheet's totals
    assert sum(e["metadata"]["nevts"] for e in fileset.values()) == 940_160_174
    assert {t for e in fileset.values() for t in e["files"].values()} == {TREE_NAME}
    five = fileset_for(RunParameters(dataset=REAL_NANOAOD_NAME, use_ml=False, n_files_max_per_sample=5))[1]
    assert sum(e["metadata"]["nevts"] for e in five.values()) == 47_996_231
    with pytest.raises(ConfigError, match="USE_ML=True with INPUT_FORMAT='nanoaod'"):
        RunParameters(dataset=REAL_NANOAOD_NAME)
    assert RunParameters().resolved_input_format == "ntuple"


def test_the_compiled_b_tag_cut_rounds_the_threshold_as_awkward_does(tiny_nanoaod, config):
    """awkward compares the float32 b-tag scores with a Python float in float32 (NumPy's NEP 50):
    a threshold one float64 step below a jet's score rounds to that score, and the jet is not
    tagged. The compiled selection must agree (a float64 comparison would tag it)."""
    events = events_of(tiny_nanoaod.parent / "ttbar__nominal" / "0.root")
    cfg = _loose(config)
    one_tag = select_nanoaod(events, cfg)
    event = int(one_tag.index[np.flatnonzero(one_tag.region == cfg.region_names.index("4j1b"))[0]])
    jets = selected_jets(events[event : event + 1], cfg)
    score = float(jets.btag[0][jets.btag[0] > cfg.btag_threshold][0])
    edge = dataclasses.replace(cfg, btag_threshold=float(np.nextafter(score, -np.inf)))
    spec = select_nanoaod(events, edge)
    assert event not in spec.index  # its only tag is lost: 0 b-tags
    assert_identical(compiled(events, edge), spec)
