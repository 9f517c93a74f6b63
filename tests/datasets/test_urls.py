"""Input URL rules (facility switches) and the standard subsets of a dataset."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from utils.datasets.fileset import REAL_DATASET, build_fileset
from utils.datasets.urls import URL_RULES, load_url_rules, rewrite_fileset, rules_record
from utils.errors import ConfigError
from utils.run.parameters import RunParameters


def test_every_rule_set_rewrites_the_real_list_unchanged_on_disk():
    before = REAL_DATASET.read_bytes()
    fileset = build_fileset(REAL_DATASET, 1)
    for name in ("unl-root", "uchicago-xcache", "local-store-mirror"):
        rewritten = rewrite_fileset(fileset, load_url_rules(name))
        for sample, entry in rewritten.items():
            (old,) = fileset[sample]["files"]
            (new,) = entry["files"]
            assert new != old and new.endswith(old.split("//store/", 1)[1])
            assert entry["file_nevts"] == {new: fileset[sample]["file_nevts"][old]}
    xcache = rewrite_fileset(fileset, load_url_rules("uchicago-xcache"))
    assert next(iter(xcache["ttbar__nominal"]["files"])).startswith("root://xcache.af.uchicago.edu:1094//root://")
    assert REAL_DATASET.read_bytes() == before
    assert rewrite_fileset(fileset, load_url_rules("as-listed")) is fileset


def test_inline_rules_first_match_wins_and_are_recorded():
    rules = load_url_rules("/a/=>root://h//; /a/b/=>never")
    fileset = {"s": {"files": {"/a/b/1.root": "events", "/c/2.root": "events"}, "metadata": {}}}
    assert list(rewrite_fileset(fileset, rules)["s"]["files"]) == ["root://h//b/1.root", "/c/2.root"]
    assert rules_record("x", rules)["rules"][0] == {"source": "/a/", "target": "root://h//"}


@pytest.mark.parametrize("spec", ["no-such-facility", "=>x"])
def test_bad_rules_name_the_problem(spec):
    with pytest.raises(ConfigError, match="INPUT_URLS"):
        load_url_rules(spec)
    assert URL_RULES.is_file()


def test_max_events_per_sample_takes_whole_files(tiny_dataset):
    full = build_fileset(tiny_dataset)
    one = build_fileset(tiny_dataset, max_events_per_sample=1)
    assert all(len(e["files"]) == 1 for e in one.values())
    assert one["ttbar__nominal"]["metadata"]["nevts"] == 3000 < full["ttbar__nominal"]["metadata"]["nevts"]
    both = build_fileset(tiny_dataset, max_events_per_sample=3001)
    assert both["ttbar__nominal"]["metadata"]["nevts"] == 6000
    with pytest.raises(ConfigError, match="MAX_EVENTS_PER_SAMPLE"):
        RunParameters(max_events_per_sample=0)


def test_agc_datasets_prints_files_events_and_size(tiny_dataset):
    from utils.cli.datasets import datasets

    result = CliRunner().invoke(datasets, [str(tiny_dataset), "--n-files-max-per-sample", "1"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("ttbar__nominal"))
    assert row.split()[1:3] == ["1", "3,000"] and float(row.split()[3]) > 0
    remote = CliRunner().invoke(datasets, ["cms-open-data-2015", "--input-urls", "unl-root"])
    assert remote.exit_code == 0 and remote.output.splitlines()[-1].split()[-1] == "-"
