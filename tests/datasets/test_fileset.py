"""Filesets from dataset descriptions: the real CMS list unchanged, and local descriptions."""

import json

import pytest

from utils.config import load_analysis_config
from utils.datasets.fileset import REAL_DATASET, build_fileset, normalisation
from utils.errors import ConfigError

FACTS = {  # sample: (files, events) from the facts sheet
    "ttbar__nominal": (707, 285_620_642), "ttbar__scaledown": (91, 39_461_147),
    "ttbar__scaleup": (92, 38_472_369), "ttbar__ME_var": (44, 19_147_000), "ttbar__PS_var": (45, 19_383_463),
    "single_top_s_chan__nominal": (12, 2_867_199), "single_top_t_chan__nominal": (252, 103_889_916),
    "single_top_tW__nominal": (6, 1_999_400), "wjets__nominal": (1020, 437_222_514),
}  # fmt: skip


def test_real_file_list_is_accepted_unchanged():
    fs = build_fileset(REAL_DATASET)
    assert {k: (len(v["files"]), v["metadata"]["nevts"]) for k, v in fs.items()} == FACTS
    first = next(iter(fs["ttbar__nominal"]["files"]))
    assert first.startswith("https://") and fs["ttbar__nominal"]["files"][first] == "events"
    assert fs["wjets__nominal"]["metadata"]["xsec"] == pytest.approx(15487.164)


def test_n_files_cap_sums_events_of_taken_files():
    description = json.loads(REAL_DATASET.read_text())
    fs = build_fileset(REAL_DATASET, n_files_max_per_sample=3)
    expected = sum(f["nevts"] for f in description["ttbar"]["nominal"]["files"][:3])
    assert fs["ttbar__nominal"]["metadata"]["nevts"] == expected
    norm = normalisation(fs, load_analysis_config())
    assert norm["ttbar__nominal"] == pytest.approx(729.84 * 3378 / expected)


def test_relative_paths_resolve_against_the_json(tmp_path):
    (tmp_path / "sub").mkdir()
    desc = {"ttbar": {"nominal": {"files": [{"path": "sub/a.root", "nevts": 10}], "nevts_total": 10}},
            "data": {"nominal": {"files": [{"path": "/abs/d.root", "nevts": 5}], "nevts_total": 5}},
            "zprime": {"nominal": {"files": [{"path": "z.root", "nevts": 5}], "nevts_total": 5, "xsec": 2.5}}}  # fmt: skip
    path = tmp_path / "d.json"
    path.write_text(json.dumps(desc))
    fs = build_fileset(path)
    assert list(fs["ttbar__nominal"]["files"]) == [str(tmp_path / "sub" / "a.root")]
    assert fs["data__nominal"]["metadata"]["xsec"] is None
    assert fs["zprime__nominal"]["metadata"]["xsec"] == 2.5
    assert normalisation(fs, load_analysis_config())["data__nominal"] == 1.0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"ttbar": {"nominal": {"files": [{"path": "a.root"}]}}}', r"\['ttbar'\]\['nominal'\]\['files'\]\[0\]"),
        ('{"ttbar": {"nominal": {"files": [{"path": "a.root", "nevts": -1}]}}}', "non-negative integer"),
        ('{"higgs": {"nominal": {"files": [{"path": "a.root", "nevts": 1}]}}}', "no cross-section for process 'higgs'"),
    ],
)
def test_malformed_descriptions_name_the_key(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        build_fileset(path)
