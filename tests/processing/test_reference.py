"""The reference selection (utils.processing.reference): hand-computed answers on hand-made events
in a small ROOT file, and the same result as the numba kernel on those events and on the
embedded tiny dataset, under every jet variation."""

from __future__ import annotations

import math
from dataclasses import replace

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoEventsFactory
from handmade_events import EVENTS as SELECTION_EVENTS
from handmade_events import TETRA_ETA, TETRA_PT

from utils.config import load_analysis_config
from utils.datasets.embedded import sample_paths
from utils.datasets.fileset import TREE_NAME
from utils.processing.reference import (
    EVENT_CUTS,
    event_selection,
    reference_selection,
    select_objects,
    varied_jets,
)
from utils.processing.schema import AGCSchema
from utils.processing.selection import FEATURE_NAMES, JET_FIELDS, chunk_arrays, select_variations

CFG = load_analysis_config()
PI = math.pi
# the kernel evaluates sin/cos/sinh of the stored single-precision eta, phi in single precision
RTOL = 1e-6
# and the smallest sphericity eigenvalue in closed form, which loses absolute precision (~1e-10)
# on nearly planar events (aplanarity ~1e-5); the reference uses a symmetric eigen-solver
APLANARITY_ATOL = 1e-9

# Jets (pt, eta, phi, mass, btag), stored in single precision as in the ntuples (so pi/2 is not
# exact: hand-computed values hold to 1e-6 relative); cuts of analysis_config.yml: leptons and jets pT > 25 GeV,
# b-tag > 0.5, exactly one lepton, >= 4 jets, >= 1 b-tag; 4j1b: 1 b-tag, 4j2b: >= 2.
EVENTS = [
    # 0: fails only the lepton count (two leptons)
    {"jets": [(100, 0, 0, 0, 0.9), (60, 0, PI / 2, 0, 0.8), (50, 0, PI, 0, 0.1), (40, 0, -PI / 2, 0, 0.1)],
     "electrons": [40.0], "muons": [30.0]},
    # 1: fails only the jet count (the fourth jet is below 25 GeV under every variation)
    {"jets": [(100, 0, 0, 0, 0.9), (60, 0, PI / 2, 0, 0.1), (50, 0, PI, 0, 0.1), (15, 0, -PI / 2, 0, 0.1)],
     "electrons": [40.0]},
    # 2: fails only the b-tag count
    {"jets": [(100, 0, 0, 0, 0.2), (60, 0, PI / 2, 0, 0.1), (50, 0, PI, 0, 0.1), (40, 0, -PI / 2, 0, 0.3)],
     "muons": [30.0]},
    # 3: 4j1b; the highest-pT trijet (0, 1, 2) has no b-tag; the 20 GeV b-jet is not selected
    {"jets": [(100, 0, 0, 0, 0.1), (80, 0, PI / 2, 0, 0.1), (50, 0, PI / 2, 0, 0.1), (30, 0, PI, 0, 0.9),
              (20, 0, -PI / 2, 0, 0.9)], "muons": [30.0], "electrons": [10.0]},
    # 4: 4j2b
    {"jets": [(100, 0, 0, 0, 0.9), (60, 0, PI / 2, 0, 0.8), (50, 0, PI, 0, 0.1), (40, 0, -PI / 2, 0, 0.1)],
     "electrons": [50.0]},
    # 5: 4j2b, tetrahedral jets: isotropic sphericity tensor, every trijet has the same mass
    {"jets": [(TETRA_PT, TETRA_ETA, PI / 4, 0, 0.9), (TETRA_PT, -TETRA_ETA, -PI / 4, 0, 0.9),
              (TETRA_PT, -TETRA_ETA, 3 * PI / 4, 0, 0.1), (TETRA_PT, TETRA_ETA, -3 * PI / 4, 0, 0.1)],
     "muons": [45.0]},
]  # fmt: skip

# Compared with the kernel only: the selection tests' events (values at the thresholds, Delta phi
# across +-pi, an event selected only under pt_scale_up) and a 3-jet event, no jets, no leptons,
# six jets with three b-tags and a second electron below the cut.
EDGE_EVENTS = [
    *SELECTION_EVENTS,
    {"jets": [(90, 0, 0, 5, 0.9), (70, 0, 2, 5, 0.9), (50, 0, 4, 5, 0.1)], "muons": [50.0]},
    {"jets": [], "muons": [50.0]},
    {"jets": [(90, 0, 0, 5, 0.9), (70, 0, 2, 5, 0.9), (50, 0, 4, 5, 0.1), (40, 1, 1, 5, 0.1)]},
    {"jets": [(95, 1.1, 0.3, 12, 0.7), (81, -0.4, 2.2, 9, 0.2), (64, 0.8, -1.9, 7, 0.95), (52, -2.1, 2.9, 6, 0.1),
              (33, 0.05, -0.7, 4, 0.6), (24.9, 1.4, 1.0, 3, 0.9)], "electrons": [61.0, 12.0], "muons": [3.0]},
]  # fmt: skip


def write_events(path, events) -> None:
    """A ROOT TTree in the layout of the 2015 ntuples (jet_pt, ..., electron_pt, muon_pt)."""
    jets = {f: [[j[i] for j in e["jets"]] for e in events] for i, f in enumerate(JET_FIELDS)}
    data = {
        "jet": ak.zip({f: ak.values_astype(ak.Array(v), np.float64 if f == "btag" else np.float32)
                       for f, v in jets.items()}),
        "electron": ak.zip({"pt": ak.values_astype(ak.Array([e.get("electrons", []) for e in events]), np.float32)}),
        "muon": ak.zip({"pt": ak.values_astype(ak.Array([e.get("muons", []) for e in events]), np.float32)}),
    }  # fmt: skip
    with uproot.recreate(path) as out:
        out.mktree(TREE_NAME, {name: array.type.content for name, array in data.items()})
        out[TREE_NAME].extend(data)


def read_events(path, entry_stop=None):
    return NanoEventsFactory.from_root(
        {str(path): TREE_NAME}, schemaclass=AGCSchema, mode="virtual", entry_stop=entry_stop
    ).events()


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "events.root"
    write_events(path, EVENTS)
    return read_events(path)


@pytest.fixture(scope="module")
def edge_events(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "edge.root"
    write_events(path, EDGE_EVENTS)
    return read_events(path)


def assert_same_as_kernel(events, config, variations=None) -> int:
    """Reference and kernel agree on every selected event; returns the number compared."""
    variations = variations or config.jet_variations
    kernel = select_variations(chunk_arrays(events), config, variations)
    n = 0
    for v in variations:
        ref, ker = reference_selection(events, config, v), kernel[v]
        np.testing.assert_array_equal(ref.index, ker.index, err_msg=v)
        np.testing.assert_array_equal(ref.region, ker.region, err_msg=v)
        assert ref.feature_names == FEATURE_NAMES
        for name in FEATURE_NAMES:
            atol = APLANARITY_ATOL if name == "aplanarity" else 0.0
            np.testing.assert_allclose(
                ref.feature(name), ker.feature(name), rtol=RTOL, atol=atol, err_msg=f"{v} {name}"
            )
        np.testing.assert_allclose(ref.observable, ker.observable(config), rtol=RTOL, err_msg=v)
        np.testing.assert_array_equal(ref.weight_jet_pt, ker.weight_jet_pt, err_msg=v)
        n += len(ref.index)
    return n


# --- (a) hand-computed answers ---------------------------------------------------------------


def test_each_event_fails_exactly_the_expected_cut(events):
    objects = select_objects(events, varied_jets(events, CFG, "nominal"), CFG)
    selection = event_selection(objects, CFG)
    failed = [{cut for cut in EVENT_CUTS if not selection.all(cut)[i]} for i in range(len(EVENTS))]
    assert failed == [{"n_leptons"}, {"min_jets"}, {"min_btags"}, set(), set(), set()]


def test_selected_events_regions_and_cutflow(events):
    sel = reference_selection(events, CFG, "nominal")
    assert list(sel.index) == [3, 4, 5]
    assert [CFG.region_names[r] for r in sel.region] == ["4j1b", "4j2b", "4j2b"]
    assert sel.cutflow == {"n_leptons": 5, "min_jets": 4, "min_btags": 3, "4j1b": 1, "4j2b": 2}


def test_hand_computed_observables_and_features(events):
    sel = reference_selection(events, CFG, "nominal")
    row = {i: k for k, i in enumerate(sel.index)}
    # event 3 (massless jets at eta 0): HT of the four selected jets; best b-tagged trijet (1, 2, 3):
    # sum pT = (-30, 130), pT^2 = 17800, m^2 = (80 + 50 + 30)^2 - 17800 = 7800
    f3 = dict(zip(FEATURE_NAMES, sel.features[row[3]], strict=True))
    assert f3["ht"] == 260.0 and sel.observable[row[3]] == 260.0
    assert f3["m_bjj"] == pytest.approx(math.sqrt(7800.0), rel=1e-6)
    assert f3["trijet_mean_delta_r"] == pytest.approx((0 + PI / 2 + PI / 2) / 3, rel=1e-6)
    assert f3["aplanarity"] == pytest.approx(0.0, abs=1e-12)  # all jets in the transverse plane
    assert (f3["lepton_pt"], f3["leading_jet_pt"]) == (30.0, 100.0)
    # event 4: best trijet (0, 1, 3): sum pT = (100, 20), m^2 = (100 + 60 + 40)^2 - 10400 = 29600
    f4 = dict(zip(FEATURE_NAMES, sel.features[row[4]], strict=True))
    assert f4["ht"] == 250.0
    assert f4["m_bjj"] == pytest.approx(math.sqrt(29600.0), rel=1e-6) and sel.observable[row[4]] == f4["m_bjj"]
    assert f4["trijet_mean_delta_r"] == pytest.approx((PI / 2 + PI / 2 + PI) / 3, rel=1e-6)
    assert (f4["lepton_pt"], f4["leading_jet_pt"]) == (50.0, 100.0)
    # event 5: any three of the tetrahedral jets sum to minus the fourth: |p| = 30 sqrt(3),
    # E = 90 sqrt(3), m^2 = 24300 - 2700; isotropic tensor (eigenvalues 1/3): aplanarity 0.5
    f5 = dict(zip(FEATURE_NAMES, sel.features[row[5]], strict=True))
    assert f5["ht"] == pytest.approx(4 * TETRA_PT, rel=1e-6)
    assert f5["m_bjj"] == pytest.approx(math.sqrt(21600.0), rel=1e-6)
    assert f5["aplanarity"] == pytest.approx(0.5, rel=1e-6)
    dr_far = math.hypot(2 * TETRA_ETA, PI / 2)
    assert f5["trijet_mean_delta_r"] == pytest.approx((PI + 2 * dr_far) / 3, rel=1e-6)
    np.testing.assert_array_equal(sel.weight_jet_pt[row[3]], [100, 80, 50, 30])


def test_pt_scale_variation_scales_the_four_momenta(events):
    nominal = reference_selection(events, CFG, "nominal")
    scaled = reference_selection(events, CFG, CFG.pt_scale_name)
    np.testing.assert_array_equal(scaled.index, nominal.index)
    for name in ("ht", "m_bjj", "leading_jet_pt"):
        np.testing.assert_allclose(scaled.feature(name), CFG.pt_scale_factor * nominal.feature(name), rtol=1e-12)
    np.testing.assert_allclose(scaled.feature("aplanarity"), nominal.feature("aplanarity"), atol=1e-12)


def test_cuts_come_from_the_configuration(events):
    """A looser jet pT cut lets event 1 (fourth jet 15 GeV) in; kernel and reference still agree."""
    loose = replace(CFG, jet_pt_min=10.0)
    assert list(reference_selection(events, loose).index) == [1, 3, 4, 5]
    assert_same_as_kernel(events, loose)


def test_unknown_variation_is_rejected(events):
    with pytest.raises(ValueError, match="unknown jet variation 'pt_scale_down'"):
        reference_selection(events, CFG, "pt_scale_down")


# --- (b) reference and kernel on the hand-made events ----------------------------------------


def test_same_as_kernel_on_hand_made_events(events, edge_events):
    assert assert_same_as_kernel(events, CFG) == 9
    assert assert_same_as_kernel(edge_events, CFG) > 0


def test_no_selected_event(events):
    assert assert_same_as_kernel(events[:3], CFG) == 0
    sel = reference_selection(events[:3], CFG)
    assert sel.features.shape == (0, len(FEATURE_NAMES)) and sel.weight_jet_pt.shape == (0, CFG.btag_n_jets)


# --- (c) reference and kernel on the embedded tiny dataset -----------------------------------


@pytest.mark.parametrize("sample", ["ttbar__nominal", "wjets__nominal", "single_top_tW__nominal"])
def test_same_as_kernel_on_tiny_dataset(tiny_dataset, sample):
    path = sample_paths(tiny_dataset)[sample][0]
    assert assert_same_as_kernel(read_events(path), CFG) > 0
