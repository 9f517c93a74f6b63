"""The analysis configuration: schema errors name the key path, semantic checks name the value."""

import copy

import pytest
import yaml

from utils.config import DEFAULT_ANALYSIS_CONFIG, load_analysis_config, parse_analysis_config
from utils.errors import ConfigError

RAW = yaml.safe_load(DEFAULT_ANALYSIS_CONFIG.read_text())


def modified(**changes):
    data = copy.deepcopy(RAW)
    for path, value in changes.items():
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


def test_default_configuration_loads():
    cfg = load_analysis_config()
    assert cfg.region_names == ("4j1b", "4j2b")
    assert cfg.btag_threshold == 0.5 and cfg.jet_pt_min == 25.0 and cfg.lepton_pt_min == 25.0
    assert cfg.hist_bins == 25 and (cfg.hist_low, cfg.hist_high) == (50.0, 550.0)
    assert cfg.weight_variations("wjets")[-2:] == ("scale_var_up", "scale_var_down")
    assert "scale_var_up" not in cfg.weight_variations("ttbar")
    assert cfg.jet_variations == ("nominal", "pt_scale_up", "pt_res_up")


def test_typo_in_key_names_the_path():
    data = modified(**{"objects.jet_pt_min": KeyError})
    data["objects"]["jet_pt_mni"] = 25.0
    with pytest.raises(ConfigError) as err:
        parse_analysis_config(data, source="analysis_config.yml")
    msg = str(err.value)
    assert "analysis_config.yml" in msg and "['objects']" in msg
    assert "jet_pt_mni" in msg and "jet_pt_min" in msg


def test_wrong_value_names_allowed_values():
    with pytest.raises(ConfigError, match=r"\['regions'\]\[1\]\['observable'\].*'ht', 'm_bjj'"):
        parse_analysis_config(modified(**{"regions.1.observable": "mbjj"}))


def test_semantic_check_names_region():
    with pytest.raises(ConfigError, match=r"\['regions'\]\[0\].*max_btags \(0\) is below min_btags \(1\)"):
        parse_analysis_config(modified(**{"regions.0.max_btags": 0}))


def test_ml_features_of_unknown_region():
    data = modified()
    data["ml"]["features"]["5j3b"] = ["ht"]
    with pytest.raises(ConfigError, match=r"5j3b.*no such region"):
        parse_analysis_config(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"not found"):
        load_analysis_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("objects: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: not valid YAML"):
        load_analysis_config(bad)
