"""Selection, observables and features on hand-made events with hand-computed answers."""

import math

import numpy as np
import pytest
from handmade_events import CFG, EVENTS, TETRA_PT, make_events

from utils.processing.randoms import jet_resolution_factors
from utils.processing.selection import (
    FEATURE_NAMES,
    OPTIONAL_FEATURES,
    chunk_arrays,
    select_events,
    select_variations,
)


@pytest.fixture(scope="module")
def arrays():
    return chunk_arrays(make_events(EVENTS))


def feature(sel, i, name):
    return sel.features[list(sel.index).index(i), FEATURE_NAMES.index(name)]


def test_nominal_selection_and_regions(arrays):
    sel = select_events(arrays, CFG, "nominal")
    assert list(sel.index) == [0, 3, 6]
    regions = [CFG.region_names[r] for r in sel.region]
    assert regions == ["4j2b", "4j1b", "4j2b"]


def test_ht_and_m_bjj_hand_computed(arrays):
    sel = select_events(arrays, CFG, "nominal")
    assert feature(sel, 0, "ht") == pytest.approx(210.0)
    # trijets with a b-tag: (1,2,4) has the largest vector-sum pT^2 = 80^2 + 30^2 = 7300;
    # massless jets at eta 0: m^2 = (80 + 60 + 30)^2 - 7300 = 21600
    assert feature(sel, 0, "m_bjj") == pytest.approx(math.sqrt(21600.0), rel=1e-6)
    assert feature(sel, 0, "trijet_mean_delta_r") == pytest.approx(2 * math.pi / 3, rel=1e-6)
    assert feature(sel, 0, "lepton_pt") == pytest.approx(35.0)
    assert feature(sel, 0, "leading_jet_pt") == pytest.approx(80.0)
    # jets in the transverse plane: the sphericity tensor has a zero eigenvalue
    assert feature(sel, 0, "aplanarity") == pytest.approx(0.0, abs=1e-7)
    # the observable of a region is the configured one
    obs = sel.observable(CFG)
    assert obs[0] == pytest.approx(math.sqrt(21600.0)) and obs[1] == pytest.approx(4 * TETRA_PT)


def test_aplanarity_of_isotropic_event(arrays):
    sel = select_events(arrays, CFG, "nominal")
    assert feature(sel, 3, "aplanarity") == pytest.approx(0.5, rel=1e-5)
    assert feature(sel, 3, "lepton_pt") == pytest.approx(27.0)


def test_delta_phi_wrapped_across_pi(arrays):
    sel = select_events(arrays, CFG, "nominal")
    # best trijet is (1,2,3) [pt 90, 70, 50 near phi = +-pi]; pairwise Delta R with wrapped Delta phi
    dphi12 = 2 * math.pi - 6.0
    dr12 = abs(dphi12)
    dr13 = math.hypot(0.5, 0.1)
    dr23 = math.hypot(0.5, 2 * math.pi - 6.1)
    assert feature(sel, 6, "trijet_mean_delta_r") == pytest.approx((dr12 + dr13 + dr23) / 3, rel=1e-6)


def test_event_passes_only_under_pt_scale_up(arrays):
    nominal = select_events(arrays, CFG, "nominal")
    scaled = select_events(arrays, CFG, "pt_scale_up")
    assert 2 not in nominal.index
    assert 2 in scaled.index
    assert CFG.region_names[scaled.region[list(scaled.index).index(2)]] == "4j1b"
    assert feature(scaled, 2, "ht") == pytest.approx(1.03 * (70 + 50 + 40 + 24.5), rel=1e-6)
    # a kinematic variation scales the whole four-momentum: m_bjj scales by the same factor
    assert feature(scaled, 0, "m_bjj") == pytest.approx(1.03 * math.sqrt(21600.0), rel=1e-6)


def test_resolution_variation_is_per_jet_and_reproducible(arrays):
    res = select_events(arrays, CFG, "pt_res_up")
    again = select_events(arrays, CFG, "pt_res_up")
    np.testing.assert_array_equal(res.features, again.features)
    # HT under smearing equals the sum of the per-jet factors times pT
    j = arrays.jet_offsets
    f = jet_resolution_factors(arrays.jet_pt[j[0]:j[1]], arrays.jet_eta[j[0]:j[1]], arrays.jet_phi[j[0]:j[1]],
                               CFG.pt_res_seed, CFG.pt_res_sigma)  # fmt: skip
    pt = arrays.jet_pt[j[0] : j[1]] * f
    assert feature(res, 0, "ht") == pytest.approx(float(np.sum(pt[pt > 25])), rel=1e-6)


def test_resolution_factors_are_normal_with_configured_width():
    rng = np.random.default_rng(1)
    pt = rng.uniform(20, 200, 200_000).astype(np.float32)
    eta = rng.uniform(-2.4, 2.4, 200_000).astype(np.float32)
    phi = rng.uniform(-np.pi, np.pi, 200_000).astype(np.float32)
    f = jet_resolution_factors(pt, eta, phi, seed=2015, sigma=0.05)
    assert np.mean(f) == pytest.approx(1.0, abs=5e-4)
    assert np.std(f) == pytest.approx(0.05, rel=0.02)
    # a different seed gives a different stream; the same jet always gets the same number
    g = jet_resolution_factors(pt, eta, phi, seed=2016, sigma=0.05)
    assert np.corrcoef(f, g)[0, 1] < 0.01
    np.testing.assert_array_equal(f[:10], jet_resolution_factors(pt[:10], eta[:10], phi[:10], 2015, 0.05))


def test_btag_weight_jets_are_the_selected_leading_jets(arrays):
    sel = select_events(arrays, CFG, "nominal")
    row = list(sel.index).index(0)
    np.testing.assert_allclose(sel.weight_jet_pt[row], [80, 60, 40, 30])


def test_unknown_variation_is_rejected(arrays):
    with pytest.raises(ValueError, match="unknown jet variation"):
        select_events(arrays, CFG, "pt_scale_down")


def test_classifier_only_features_are_computed_where_asked_and_refused_elsewhere(arrays):
    """The processor asks only for the features its classifier reads: the others are not
    computed (NaN), asking for them raises, and everything computed is bit-identical."""
    variations = CFG.jet_variations
    full = select_variations(arrays, CFG, variations)
    none = select_variations(arrays, CFG, variations, features={})
    only_2b = select_variations(arrays, CFG, variations, features={"4j2b": ("m_bjj", "trijet_mean_delta_r")})
    keep = [FEATURE_NAMES.index(n) for n in FEATURE_NAMES if n not in OPTIONAL_FEATURES]
    for v in variations:
        for sel in (none[v], only_2b[v]):
            for field in ("index", "region", "weight_jet_pt"):
                np.testing.assert_array_equal(getattr(sel, field), getattr(full[v], field))
            np.testing.assert_array_equal(sel.features[:, keep], full[v].features[:, keep])
            np.testing.assert_array_equal(sel.observable(CFG), full[v].observable(CFG))
    sel, ref = none["nominal"], full["nominal"]
    assert np.isnan(sel.features[:, [FEATURE_NAMES.index(n) for n in OPTIONAL_FEATURES]]).all()
    with pytest.raises(ValueError, match=r"\['aplanarity'\] not computed in region"):
        sel.feature("aplanarity")
    with pytest.raises(ValueError, match="not computed"):
        sel.feature_matrix(("ht", "trijet_mean_delta_r"))
    assert sel.feature_matrix(("ht", "lepton_pt")).tolist() == ref.feature_matrix(("ht", "lepton_pt")).tolist()
    # asked in 4j2b only: computed (bit-identical) there, refused in 4j1b
    sel = only_2b["nominal"]
    in_2b = sel.region == CFG.region_names.index("4j2b")
    assert in_2b.any() and (~in_2b).any()
    np.testing.assert_array_equal(sel.feature_matrix(("trijet_mean_delta_r",), in_2b),
                                  ref.feature_matrix(("trijet_mean_delta_r",), in_2b))  # fmt: skip
    with pytest.raises(ValueError, match="not computed in region"):
        sel.feature_matrix(("trijet_mean_delta_r",), ~in_2b)
    with pytest.raises(ValueError, match="unknown region"):
        select_variations(arrays, CFG, variations, features={"5j3b": ("aplanarity",)})
