"""HEPData submissions built with hepdata_lib and checked with the official hepdata-validator:
yields with an empty bin, limits with a missing band, the likelihood as a HistFactory resource,
the INSPIRE record."""

from __future__ import annotations

import json

import pytest
import yaml
from hepdata_validator.full_submission_validator import FullSubmissionValidator

from utils.errors import ConfigError, StatisticsError
from utils.preservation import hepdata

CHANNEL = "4j2b SR"
EDGES = [110.0, 150.0, 190.0, 230.0]


def workspace() -> dict:
    """A background-only workspace whose last bin is empty (no events, no uncertainty)."""
    return {
        "channels": [
            {
                "name": CHANNEL,
                "samples": [
                    {
                        "name": "ttbar",
                        "data": [20.0, 10.0, 0.0],
                        "modifiers": [{"name": "ttbar_norm", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "wjets",
                        "data": [5.0, 2.0, 0.0],
                        "modifiers": [{"name": "wjets_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}],
                    },
                ],
            }
        ],
        "observations": [{"name": CHANNEL, "data": [27.0, 11.0, 0.0]}],
        "measurements": [{"name": "m", "config": {"poi": "ttbar_norm", "parameters": []}}],
        "version": "1.0.0",
    }


def limit_points() -> list[dict]:
    band = [0.2, 0.3, 0.45, 0.7, 1.0]
    return [
        {"parameters": {"mass": 500.0}, "limit": {"observed_limit": 0.5, "expected_limit": band}},
        {
            "parameters": {"mass": 750.0},
            "limit": {"observed_limit": 1.5, "expected_limit": [None, 1.0, 1.4, 2.0, None]},
        },
    ]


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    likelihood = folder / "BkgOnly.json"
    likelihood.write_text(json.dumps(workspace()))
    binning, variables = {CHANNEL: EDGES}, {CHANNEL: "$m_{bjj}$ [GeV]"}
    tables = [
        *hepdata.yields_tables(workspace(), binning, variables, 3378.0, postfit=False),
        *hepdata.yields_tables(workspace(), binning, variables, 3378.0, postfit=True),
        hepdata.limits_table(limit_points(), "mass", "mu_sig"),
    ]
    resource = hepdata.Resource(likelihood, "Background-only likelihood (pyhf JSON workspace)", "HistFactory")
    hepdata.write_submission(folder / "hepdata", tables, [resource], record="ins1234567", analysis_id="AGC-test")
    return folder / "hepdata"


def test_the_official_validator_accepts_the_submission(submission):
    validator = FullSubmissionValidator()
    assert validator.validate(directory=str(submission)), validator.get_messages()


def test_record_resources_and_tables(submission):
    record, *entries = yaml.safe_load_all((submission / "submission.yaml").read_text())
    assert record["record_ids"] == [{"id": 1234567, "type": "inspire"}]
    assert "AGC-test" in record["comment"]
    (likelihood,) = [r for r in record["additional_resources"] if r.get("type") == "HistFactory"]
    assert likelihood["location"] == "BkgOnly.json" and (submission / "BkgOnly.json").is_file()
    assert [e["name"] for e in entries] == [f"Yields {CHANNEL} pre-fit", f"Yields {CHANNEL} post-fit", "Upper limits"]
    table = yaml.safe_load((submission / entries[0]["data_file"]).read_text())
    (observable,) = table["independent_variables"]
    assert observable["header"] == {"name": "$m_{bjj}$", "units": "GeV"}
    assert [(b["low"], b["high"]) for b in observable["values"]] == [(110, 150), (150, 190), (190, 230)]
    dependent = {d["header"]["name"]: d for d in table["dependent_variables"]}
    assert [v["value"] for v in dependent["ttbar (pre-fit)"]["values"]] == [20, 10, 0]
    assert [v["value"] for v in dependent["Pseudo-data"]["values"]] == [27, 11, 0]
    total = dependent["Total background (pre-fit)"]
    # the empty bin has no zero error (the validator refuses those); the others have theirs
    assert "errors" not in total["values"][2] and all(v["errors"][0]["symerror"] > 0 for v in total["values"][:2])
    assert {"name": "Region", "value": CHANNEL} in total["qualifiers"]
    limits = yaml.safe_load((submission / entries[2]["data_file"]).read_text())
    expected = limits["dependent_variables"][1]["values"]
    assert [e["label"] for e in expected[0]["errors"]] == ["1 sigma", "2 sigma"]
    assert [e["label"] for e in expected[1]["errors"]] == ["1 sigma"]  # the 2 sigma band was not found


def test_placeholder_record_adds_none_and_a_bad_one_is_refused(tmp_path):
    tables = [hepdata.limits_table(limit_points(), "mass", "mu_sig")]
    hepdata.write_submission(tmp_path / "h", tables)
    record = next(yaml.safe_load_all((tmp_path / "h" / "submission.yaml").read_text()))
    assert "record_ids" not in record
    with pytest.raises(ConfigError, match=r"'ins12': expected ins \+ 7 digits"):
        hepdata.write_submission(tmp_path / "bad", tables, record="ins12")


def test_an_invalid_submission_raises_with_the_validators_message(submission, tmp_path):
    for path in submission.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    data_file = next(e["data_file"] for e in list(yaml.safe_load_all((tmp_path / "submission.yaml").read_text()))[1:])
    (tmp_path / data_file).write_text("independent_variables: 3\n")
    with pytest.raises(StatisticsError, match="not a valid HEPData submission"):
        hepdata.validate_submission(tmp_path)


def test_limits_table_without_limits_is_valid(tmp_path):
    """CLs-only results (upper_limits: false) have no limit: an empty table, still valid."""
    table = hepdata.limits_table([{"parameters": {"mass": 500.0}, "limit": None}], "mass", "mu_sig")
    hepdata.write_submission(tmp_path / "h", [table])
    data = yaml.safe_load((tmp_path / "h" / "upper_limits.yaml").read_text())
    assert all(v["values"] == [] for v in data["dependent_variables"])
