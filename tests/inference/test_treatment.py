"""Template treatment: pruning and smoothing rules on hand-made templates, and their configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from utils.errors import ConfigError
from utils.inference.config import DEFAULT_CABINETRY_CONFIG, parse_cabinetry_config, treatment_rules
from utils.inference.treatment import TreatmentSettings, treat_templates

NOM = np.array([100.0, 200.0, 300.0, 200.0, 100.0])
WHERE = ("JES", "SR", "ttbar")


def treat(up, settings, down=None, nom_s2=None, var_s2=None, symmetrized=True):
    nom_s2 = NOM / 100 if nom_s2 is None else nom_s2
    var_s2 = nom_s2 if var_s2 is None else var_s2
    variations = {"Up": (np.asarray(up, float), var_s2)}
    if down is not None:
        variations["Down"] = (np.asarray(down, float), var_s2)
    return treat_templates((NOM, nom_s2), variations, settings, symmetrized, WHERE)


def test_small_normalisation_effect_is_pruned_and_the_shape_kept():
    shape = np.array([1.05, 1.0, 0.98, 1.0, 1.03])
    up = NOM * shape * 1.002 / (NOM * shape).sum() * NOM.sum()
    out, records = treat(up, TreatmentSettings(norm_threshold=0.005, shape_threshold=0.005))
    assert out["Up"].sum() == pytest.approx(NOM.sum())
    np.testing.assert_allclose(out["Up"] / out["Up"].sum(), up / up.sum())  # shape untouched
    assert [r.action for r in records] == ["norm pruned"]
    assert "0.002" in records[0].reason and "NormThreshold" in records[0].reason
    assert records[0].to_dict() == {"systematic": "JES", "region": "SR", "sample": "ttbar",
                                    "action": "norm pruned", "reason": records[0].reason}  # fmt: skip


def test_flat_shape_is_pruned_and_the_normalisation_kept():
    up = NOM * 1.04 * (1 + 1e-4 * np.array([1, -1, 1, -1, 1]))
    out, records = treat(up, TreatmentSettings(norm_threshold=0.005, shape_threshold=0.005))
    np.testing.assert_allclose(out["Up"], NOM * up.sum() / NOM.sum())
    assert [r.action for r in records] == ["shape pruned"]


def test_two_sided_pruning_looks_at_both_templates():
    up, down = NOM * 1.002, NOM * 0.99  # down is above threshold: the normalisation stays
    out, records = treat(up, TreatmentSettings(norm_threshold=0.005), down=down, symmetrized=False)
    assert records == [] or all(r.action != "norm pruned" for r in records)
    np.testing.assert_allclose(out["Down"], down)
    # symmetrised: down is the mirror, 2 - 1.002 = 0.998, also below threshold
    _, records = treat(up, TreatmentSettings(norm_threshold=0.005))
    assert [r.action for r in records] == ["norm pruned"]


def test_shape_within_mc_statistics_is_pruned_a_significant_one_kept():
    wiggle = np.array([1.03, 0.97, 1.02, 0.98, 1.03])
    up = NOM * wiggle
    noisy = NOM * 1.0  # sumw2 = content: relative stat. uncertainty 6-10 %, larger than the wiggle
    out, records = treat(up, TreatmentSettings(shape_significance=1.0), nom_s2=noisy, var_s2=noisy)
    assert [r.action for r in records] == ["shape pruned"] and "chi2/bins" in records[0].reason
    np.testing.assert_allclose(out["Up"], NOM * up.sum() / NOM.sum())
    precise = NOM / 1e4  # 0.1 % statistical uncertainty: the same wiggle is significant
    out, records = treat(up, TreatmentSettings(shape_significance=1.0), nom_s2=precise, var_s2=precise)
    assert records == [] and np.array_equal(out["Up"], up)


def test_smoothing_keeps_the_yield_and_removes_a_spike():
    up = NOM * np.array([1.02, 1.02, 1.30, 1.02, 1.02])
    out, records = treat(up, TreatmentSettings(smoothing="353QH"))
    assert out["Up"].sum() == pytest.approx(up.sum())
    ratio = out["Up"] / NOM
    assert np.ptp(ratio) < 0.01 * np.ptp(up / NOM)
    assert [r.action for r in records] == ["smoothed"]


def test_no_rules_change_nothing():
    up = NOM * np.array([1.1, 0.9, 1.0, 1.05, 0.95])
    out, records = treat(up, TreatmentSettings())
    assert records == [] and np.array_equal(out["Up"], up)


@pytest.fixture
def raw_config() -> dict:
    return yaml.safe_load(DEFAULT_CABINETRY_CONFIG.read_text())


def test_repository_rules_load_and_stay_out_of_cabinetrys_config(raw_config):
    rules = treatment_rules(raw_config)
    assert rules.enabled and rules.settings_for("b-tag NP 1").norm_threshold == 0.005
    assert "TemplateTreatment" not in parse_cabinetry_config(raw_config)


def test_bad_treatment_settings_name_the_key(raw_config):
    bad = json.loads(json.dumps(raw_config))
    bad["TemplateTreatment"]["Defaults"]["NormTreshold"] = 0.01
    with pytest.raises(ConfigError, match=r"(?s)cfg.yml \[TemplateTreatment\].*Defaults.*NormTreshold"):
        parse_cabinetry_config(bad, source="cfg.yml")
    bad = json.loads(json.dumps(raw_config))
    bad["TemplateTreatment"]["Systematics"] = {"Jet energy scal": {"Smoothing": "353QH"}}
    with pytest.raises(ConfigError, match=r"\['TemplateTreatment'\]\['Systematics'\].*Jet energy scal"):
        parse_cabinetry_config(bad, source="cfg.yml")
    bad["TemplateTreatment"]["Systematics"] = {"Jet energy scale": {"Smoothing": "gauss"}}
    with pytest.raises(ConfigError, match="Smoothing"):
        parse_cabinetry_config(bad, source="cfg.yml")


# -- NonNegative and DropEmptyBins: hand-made templates with empty and over-large bins ------------------


def test_variation_in_an_empty_nominal_bin_is_zeroed():
    nominal = np.array([0.0, 10.0, 20.0])
    up = np.array([5.0, 12.0, 22.0])
    out, records = treat_templates(
        (nominal, nominal), {"Up": (up, up)}, TreatmentSettings(non_negative=True), True, WHERE
    )
    np.testing.assert_array_equal(out["Up"], [0.0, 12.0, 22.0])
    assert [r.action for r in records] == ["zeroed"] and "Up bins [1]" in records[0].reason


def test_mirrored_template_is_kept_non_negative_with_the_normalisation():
    # shape = up * 900 / 1100: bin 1 is 2700/11, its effect 1600/11 exceeds the nominal 100, so the
    # whole shape effect is scaled by 100 / (1600/11) = 0.6875 and the mirror's bin 1 becomes 0
    up = NOM * np.array([3.0, 1, 1, 1, 1])
    out, records = treat(up, TreatmentSettings(non_negative=True))
    n = 1100 / 900
    shape = up / n
    expected = (NOM + 0.6875 * (shape - NOM)) * n
    np.testing.assert_allclose(out["Up"], expected, rtol=1e-8)
    assert out["Up"].sum() == pytest.approx(1100)
    mirror = 2 * NOM - out["Up"] / n  # cabinetry's symmetrised down template
    assert mirror.min() >= 0 and mirror[0] == pytest.approx(0, abs=1e-5)
    assert [r.action for r in records] == ["capped"] and "scaled by 0.6875" in records[0].reason
    # without the rule the mirror is negative there
    plain, _ = treat(up, TreatmentSettings())
    assert (2 * NOM - plain["Up"] / n)[0] < 0


def test_negative_bins_and_vanishing_normalisations_are_capped():
    down = NOM * 0.05
    down[0] = -5.0
    up = NOM * 1.2
    out, records = treat(up, TreatmentSettings(non_negative=True), down=down, symmetrized=False)
    np.testing.assert_array_equal(out["Up"], up)
    # bin 1 clipped to 0, then the yield (0.05 * 800 = 40 of 900) raised to 0.1 of the nominal
    clipped = np.concatenate([[0.0], NOM[1:] * 0.05])
    np.testing.assert_allclose(out["Down"], clipped * 90 / clipped.sum())
    assert [r.action for r in records] == ["capped", "capped"]
    assert "Down bins [1]" in records[0].reason and "limited to 0.1" in records[1].reason
    # symmetrised: a mirror of 2 - 1.95 = 0.05 is limited to 0.1 too
    out, records = treat(NOM * 1.95, TreatmentSettings(non_negative=True))
    np.testing.assert_allclose(out["Up"], NOM * 1.9)
    assert "mirrored 0.05" in records[0].reason


DROP_MODEL = """
General: {Measurement: drop, POI: ttbar_norm, HistogramFolder: unused,
          InputPath: "histograms.root:{RegionPath}_{SamplePath}{VariationPath}"}
Regions: [{Name: SR, RegionPath: 4j2b, Variable: "m_bjj [GeV]", Binning: [110, 190, 270, 350, 550]}]
Samples:
  - {Name: Pseudodata, SamplePath: pseudodata, Data: true}
  - {Name: ttbar, SamplePath: ttbar}
  - {Name: W+jets, SamplePath: wjets}
NormFactors: [{Name: ttbar_norm, Samples: ttbar, Nominal: 1.0, Bounds: [0, 10]}]
Systematics:
  - {Name: JES, Type: NormPlusShape, Up: {VariationPath: _pt_scale_up}, Down: {Symmetrize: true}}
"""


@pytest.mark.parametrize("offset", [0.0, 1e-6])
def test_bins_without_prediction_leave_the_fit(tmp_path, offset):
    """MC empty in 270-350 GeV (the third bin of the model), pseudo-data not: the likelihood is zero
    for every parameter value unless DropEmptyBins takes the bin out. With the AGC's offset (1e-6
    in every bin, no sum of squared weights) the bin has no simulated event either."""
    import hist
    import uproot

    from utils.errors import StatisticsError
    from utils.inference.diagnostics import fit_with_diagnostics
    from utils.inference.fit import numpy_backend
    from utils.inference.results import prepare_workspace

    edges = np.linspace(50, 550, 26)
    x = 0.5 * (edges[1:] + edges[:-1])
    empty = (x > 270) & (x < 350)
    wjets = np.where(empty, 0.0, 400 * np.exp(-x / 200))
    ttbar = np.where(empty, 0.0, 50 * np.exp(-(((x - 175) / 60) ** 2)))

    def h(values):
        out = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
        out.view(flow=False)["value"] = values + offset
        out.view(flow=False)["variance"] = values * 0.1
        return out

    with uproot.recreate(tmp_path / "histograms.root") as f:
        f["4j2b_wjets"], f["4j2b_ttbar"] = h(wjets), h(ttbar)
        f["4j2b_wjets_pt_scale_up"], f["4j2b_ttbar_pt_scale_up"] = h(wjets * 1.02), h(ttbar * 1.03)
        f["4j2b_pseudodata"] = h(wjets + ttbar + 7.0 * empty)  # 4 bins of 7 events: 28 in the empty bin
    plain = tmp_path / "plain.yml"
    plain.write_text(DROP_MODEL)
    dropping = tmp_path / "dropping.yml"
    dropping.write_text(DROP_MODEL + "TemplateTreatment: {DropEmptyBins: true}\n")
    import cabinetry

    with numpy_backend():
        _, ws, _ = prepare_workspace(tmp_path / "histograms.root", tmp_path / "a", plain, keep_templates=False)
        model, data = cabinetry.model_utils.model_and_data(ws)
        assert data[2] == pytest.approx(28.0)
        assert model.expected_actualdata(model.config.suggested_init())[2] == pytest.approx(0.0, abs=1e-5)
        if not offset:
            with pytest.raises(StatisticsError, match="no valid minimum"):
                fit_with_diagnostics(model, data, minos=False)
        records = []
        _, ws, _ = prepare_workspace(
            tmp_path / "histograms.root", tmp_path / "b", dropping, keep_templates=False, treatment=records
        )
        model, data = cabinetry.model_utils.model_and_data(ws)
        assert data[:4] == pytest.approx([*data[:2], 0.0, data[3]]) and data[2] == 0
        fit, diagnostics = fit_with_diagnostics(model, data, minos=False)
    assert fit.bestfit[model.config.poi_index] == pytest.approx(1.0, abs=0.01)  # data = prediction elsewhere
    assert diagnostics.minuit_valid
    assert [r.to_dict() for r in records] == [
        {
            "systematic": "",
            "region": "SR",
            "sample": "all samples",
            "action": "bins dropped",
            "reason": "bins [3] have no nominal prediction; every template set to zero there (data removed: 28)",
        }
    ]


# -- PositiveWithin: shapes from too few Monte Carlo events keep the yield non-negative within +-5 ----------


def test_lowest_reach_is_pyhfs_code4p_minimum():
    import pyhf

    from utils.inference.backend import numpy_backend
    from utils.inference.treatment import lowest_reach

    rng = np.random.default_rng(7)
    nom = rng.uniform(1, 10, 40)
    hi, lo = nom * rng.uniform(0.3, 1.8, 40), nom * rng.uniform(0.3, 1.8, 40)
    alphas = np.linspace(-5, 5, 40_001)
    with numpy_backend():
        deltas = np.asarray(pyhf.interpolators.code4p([[[lo.tolist(), nom.tolist(), hi.tolist()]]])(alphas[None, :]))
    for within in (5.0, 0.5):
        inside = np.abs(alphas) <= within
        expected = nom + deltas[0, 0][inside].min(axis=0)
        np.testing.assert_allclose(lowest_reach(nom, hi, lo, within), expected, atol=1e-5 * nom.max())
    # both templates above the nominal: the polynomial still dips below it inside [-1, 1]
    dip = lowest_reach(np.array([10.0]), np.array([20.0]), np.array([10.0]), 5.0)
    assert 9.0 < dip[0] < 10.0


def test_positive_within_is_pyhfs_parameter_bound():
    import pyhf

    from utils.inference.treatment import POSITIVE_WITHIN

    spec = {"channels": [{"name": "SR", "samples": [{"name": "s", "data": [5.0, 5.0], "modifiers": [
        {"name": "mu", "type": "normfactor", "data": None},
        {"name": "shape", "type": "histosys", "data": {"hi_data": [6.0, 4.0], "lo_data": [4.0, 6.0]}},
        {"name": "norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]}]}]}  # fmt: skip
    model = pyhf.Model(spec, poi_name="mu")
    for name in ("shape", "norm"):
        assert model.config.suggested_bounds()[model.config.par_slice(name)] == [(-POSITIVE_WITHIN, POSITIVE_WITHIN)]


# a shape effect of +30 % in bin 1 and -10 % in bin 3 (summing to zero), and a normalisation of 1.1: the
# mirror has -30 % in bin 1, which the linear extrapolation takes to 100 - 5 x 30 = -50 at alpha = -5
EFFECT = np.array([30.0, 0.0, -30.0, 0.0, 0.0])
FEW = NOM * 10.0  # weights of 10: 900 / 10 = 90 effective events, fewer than 5 bins x 5^2 = 125
MANY = NOM * 1.0  # 900 effective events


def test_a_shape_from_few_events_keeps_the_yield_non_negative_within_the_bounds():
    from utils.inference.treatment import lowest_reach

    up = (NOM + EFFECT) * 1.1
    out, records = treat(up, TreatmentSettings(positive_within=5), nom_s2=FEW, var_s2=FEW * 1.21)
    k = 100 / 150  # the largest factor that keeps bin 1 at >= 0 for alpha = -5
    np.testing.assert_allclose(out["Up"], (NOM + k * EFFECT) * 1.1, rtol=1e-8)
    shape = out["Up"] / 1.1
    assert lowest_reach(NOM, shape, 2 * NOM - shape, 5.0)[0] == pytest.approx(0.0, abs=1e-5)
    assert [r.action for r in records] == ["capped"]
    reason = records[0].reason
    assert "scaled by 0.6667" in reason and "bins [1]" in reason and "-0.5 x nominal" in reason
    assert "90 effective Monte Carlo events" in reason and "125 (5 bins x 5^2)" in reason
    # enough events: the shape is measured and kept as it is, though it reaches a negative yield
    out, records = treat(up, TreatmentSettings(positive_within=5), nom_s2=MANY, var_s2=MANY)
    assert records == [] and np.array_equal(out["Up"], up)
    # within +-2 the mirror stays at 100 - 2 x 30 = 40: nothing to cap
    out, records = treat(up, TreatmentSettings(positive_within=2), nom_s2=FEW, var_s2=FEW)
    assert records == [] and np.array_equal(out["Up"], up)


def test_two_sided_shapes_from_few_events_are_scaled_together():
    up, down = (NOM + EFFECT) * 1.1, (NOM - 2 * EFFECT) * 0.95  # down: -60 % in bin 1, 100 - 5 x 60 < 0
    out, records = treat(up, TreatmentSettings(positive_within=5), down=down, nom_s2=FEW, var_s2=FEW, symmetrized=False)
    k = 100 / 300
    np.testing.assert_allclose(out["Up"], (NOM + k * EFFECT) * 1.1, rtol=1e-8)
    np.testing.assert_allclose(out["Down"], (NOM - 2 * k * EFFECT) * 0.95, rtol=1e-8)
    assert out["Up"].sum() == pytest.approx(up.sum()) and out["Down"].sum() == pytest.approx(down.sum())
    assert [r.action for r in records] == ["capped"]


def test_a_bin_with_only_the_agcs_offset_is_empty():
    """histograms_ml.root has 1e-6 in every bin (the AGC's offset): a yield without any sum of
    squared weights is not an event, so NonNegative sets the variation to the nominal there."""
    from utils.inference.treatment import empty_bins

    nominal, nominal_s2 = np.array([2e-6, 10.0, 20.0]), np.array([0.0, 10.0, 20.0])
    assert empty_bins(nominal, nominal_s2).tolist() == [True, False, False]
    assert empty_bins(nominal).tolist() == [False, False, False]
    up = np.array([5.0, 12.0, 22.0])
    out, records = treat_templates(
        (nominal, nominal_s2), {"Up": (up, up)}, TreatmentSettings(non_negative=True), True, WHERE
    )
    np.testing.assert_array_equal(out["Up"], [2e-6, 12.0, 22.0])
    assert [r.action for r in records] == ["zeroed"] and "no simulated event" in records[0].reason
