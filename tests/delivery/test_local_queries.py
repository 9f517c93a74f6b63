"""The query interpreters of the local endpoint (uproot-raw expressions, FuncADL qastle) on a
hand-made file, checked against answers computed by hand."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from utils.delivery.local.codegen import CodegenError, generate_source, run_query


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("queries") / "small.root"
    jet_pt = ak.Array([[50.0, 30.0, 10.0], [], [25.0], [40.0, 40.0]])
    met = np.array([10.0, 20.0, 30.0, 40.0])
    with uproot.recreate(path) as f:
        f["events"] = {"jet_pt": jet_pt, "met": met}
    return str(path)


def _raw(small_file, **sub):
    selection = json.dumps([{"treename": "events", **sub}])
    generate_source("uproot-raw", selection)
    return run_query("uproot-raw", selection, small_file)[0]["events"]


def test_uproot_raw_cut_expressions_and_aliases(small_file):
    out = _raw(
        small_file,
        expressions=["ht", "met * 2", "sqrt(met)"],
        aliases={"ht": "sum(jet_pt[jet_pt > 20])"},
        cut="(count_nonzero(jet_pt > 20) >= 1) & (met < 35)",
    )
    # events 0 and 2 pass (event 1 has no jet, event 3 has met 40)
    assert out.fields == ["ht", "met * 2", "sqrt(met)"]
    assert out["ht"].tolist() == [80.0, 25.0]
    assert out["met * 2"].tolist() == [20.0, 60.0]
    assert out["sqrt(met)"].tolist() == pytest.approx([np.sqrt(10.0), np.sqrt(30.0)])


def test_uproot_raw_filter_name_keeps_branches(small_file):
    out = _raw(small_file, filter_name="jet_*", cut="met > 15")
    assert out.fields == ["jet_pt"] and out["jet_pt"].tolist() == [[], [25.0], [40.0, 40.0]]


def test_unknown_branch_and_alias_cycle_are_named(small_file):
    with pytest.raises(ValueError, match="'nope' is not a branch of the tree nor an alias"):
        _raw(small_file, expressions=["nope + 1"])
    with pytest.raises(ValueError, match="alias 'a' refers to itself"):
        _raw(small_file, expressions=["a"], aliases={"a": "b + 1", "b": "a"})


def test_func_adl_select_where_count(small_file):
    qastle = (
        "(Select (Where (call EventDataset 'bogus.root' 'events') "
        "(lambda (list e) (>= (Count (Where (attr e 'jet_pt') (lambda (list j) (> j 20.0)))) 1))) "
        "(lambda (list e) (dict (list 'met' 'n' 'lead') (list (attr e 'met') "
        "(Count (attr e 'jet_pt')) (Max (attr e 'jet_pt'))))))"
    )
    generate_source("uproot", qastle)
    out = run_query("uproot", qastle, small_file)[0]["servicex"]
    assert out["met"].tolist() == [10.0, 30.0, 40.0]
    assert out["n"].tolist() == [3, 1, 2]
    assert out["lead"].tolist() == [50.0, 25.0, 40.0]


def test_func_adl_refuses_top_level_count():
    with pytest.raises(CodegenError, match="is not allowed as the source"):
        generate_source("uproot", "(Count (call EventDataset 'bogus.root' 'events'))")
