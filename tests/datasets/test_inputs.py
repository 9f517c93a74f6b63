"""Input checks before processing: each problem named, and the skip report's arithmetic."""

import awkward as ak
import numpy as np
import pytest
import uproot

from utils.datasets.inputs import check_file, preflight
from utils.errors import ConfigError, InputFileError
from utils.processing.selection import READ_BRANCHES


def write_tree(path, n=5, drop=(), dtype=np.float32, tree="events"):
    jets = {b: ak.Array([np.ones(2, dtype)] * n) for b in READ_BRANCHES if b not in drop}
    with uproot.recreate(path) as f:
        f.mktree(tree, {b: ak.Array(v) for b, v in jets.items()})
    return path


def test_a_good_file_has_no_problem(tmp_path):
    assert check_file(str(write_tree(tmp_path / "ok.root")), expected_entries=5) is None


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_text("not root"), p)[1], "not a readable ROOT file"),
        (lambda p: write_tree(p, tree="other"), "no tree 'events'"),
        (lambda p: write_tree(p, drop=("jet_btag",)), "missing branch(es) the analysis needs: ['jet_btag']"),
        (lambda p: write_tree(p, dtype=np.int32), "(expected floating point)"),
        (lambda p: write_tree(p, n=4), "holds 4 entries but the dataset description says 5"),
    ],
)
def test_each_problem_is_named(tmp_path, make, problem):
    path = make(tmp_path / "f.root")
    assert problem in check_file(str(path), expected_entries=5)


def test_truncated_file_is_detected(tmp_path):
    path = write_tree(tmp_path / "t.root", n=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in check_file(str(path)) or "not a readable ROOT file" in check_file(str(path))


def fileset(tmp_path):
    good = write_tree(tmp_path / "good.root")
    return {
        "ttbar__nominal": {"files": {str(good): "events", str(tmp_path / "gone.root"): "events"},
                           "metadata": {"nevts": 12, "xsec": 1.0}},
        "wjets__nominal": {"files": {str(tmp_path / "gone2.root"): "events"}, "metadata": {"nevts": 3, "xsec": 1.0}},
    }  # fmt: skip


def test_fail_policy_names_the_file_the_sample_and_the_fix(tmp_path):
    with pytest.raises(
        InputFileError, match=r"(?s)gone.root: file not found.*sample: ttbar__nominal.*ON_BAD_INPUT='skip'"
    ):
        preflight(fileset(tmp_path), "fail")


def test_skip_policy_subtracts_the_lost_events_and_drops_empty_samples(tmp_path):
    fs = fileset(tmp_path)
    expected = {str(tmp_path / "good.root"): 5, str(tmp_path / "gone.root"): 7, str(tmp_path / "gone2.root"): 3}
    clean, report = preflight(fs, "skip", expected)
    assert list(clean) == ["ttbar__nominal"]
    assert clean["ttbar__nominal"]["metadata"]["nevts"] == 5
    assert report.lost_by_sample() == {"ttbar__nominal": 7, "wjets__nominal": 3}
    assert fs["ttbar__nominal"]["metadata"]["nevts"] == 12  # the input fileset is not modified
    assert report.to_dict()["n_bad"] == 2


def test_unknown_policy_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ON_BAD_INPUT='ignore'"):
        preflight(fileset(tmp_path), "ignore")


def test_a_usable_file_is_described_once_for_preprocessing_and_sizes(tmp_path):
    path = write_tree(tmp_path / "ok.root", n=7)
    _, report = preflight({"s": {"files": {str(path): "events"}, "metadata": {"nevts": 7}}}, "fail")
    info = report.files[str(path)]
    with uproot.open(path) as f:
        assert info.entries == 7 and info.uuid == f.file.fUUID
        assert info.branch_bytes == {b: f["events"][b].compressed_bytes for b in READ_BRANCHES}
    assert info.file_bytes == path.stat().st_size
    assert "files" not in report.to_dict()  # the metrics report only what was left out
