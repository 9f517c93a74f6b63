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
