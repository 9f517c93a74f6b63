"""Fault injection: every bad input gets a clear error naming the file or key, or, in skip mode,
a report and the normalisation of the events actually processed; nothing half-written is left."""

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from utils.datasets.fileset import build_fileset
from utils.errors import AGCError, InputFileError
from utils.io import atomic_path, write_json_atomic
from utils.processing.run import ProcessingOptions, process_fileset
from utils.run.outputs import finish_run, is_complete
from utils.run.parameters import RunParameters


@pytest.fixture(scope="module")
def good_file(tiny_dataset):
    fs = build_fileset(tiny_dataset)
    return Path(next(iter(fs["ttbar__nominal"]["files"])))


def one_file_fileset(path: Path, nevts: int):
    meta = {"process": "ttbar", "variation": "nominal", "nevts": nevts, "xsec": 729.84}
    return {"ttbar__nominal": {"files": {str(path): "events"}, "file_nevts": {str(path): nevts}, "metadata": meta}}


def two_file_fileset(good: Path, bad: Path, n_good: int, n_bad: int):
    meta = {"process": "ttbar", "variation": "nominal", "nevts": n_good + n_bad, "xsec": 729.84}
    files = {str(good): "events", str(bad): "events"}
    return {"ttbar__nominal": {"files": files, "file_nevts": {str(good): n_good, str(bad): n_bad}, "metadata": meta}}


def entries(path: Path) -> int:
    with uproot.open(path) as f:
        return f["events"].num_entries


def rewrite(src: Path, dst: Path, drop=(), rename_tree=None, retype=None):
    """Copy the analysis branches of src into dst, optionally dropping / retyping branches."""
    from utils.processing.selection import READ_BRANCHES

    with uproot.open(src) as f:
        arrays = f["events"].arrays(list(READ_BRANCHES))
    data = {}
    for b in READ_BRANCHES:
        if b in drop:
            continue
        coll, field = b.split("_", 1)
        data.setdefault(coll, {})[field] = arrays[b] if b != retype else ak.values_astype(arrays[b] * 10, np.int32)
    with uproot.recreate(dst) as out:  # mktree with arrays creates the TTree and fills it
        out.mktree(rename_tree or "events", {c: ak.zip(v) for c, v in data.items()})


def corrupt_basket(src: Path, dst: Path, branch="jet_pt"):
    shutil.copy(src, dst)
    with uproot.open(dst) as f:
        b = f["events"][branch]
        seek = int(b.member("fBasketSeek")[0])
        nbytes = int(b.member("fBasketBytes")[0])
    with open(dst, "r+b") as fh:
        fh.seek(seek + nbytes // 2)
        chunk = bytearray(fh.read(64))
        fh.seek(seek + nbytes // 2)
        fh.write(bytes(x ^ 0xFF for x in chunk))


FAULTS = {
    "missing file": (lambda src, dst: None, "file not found"),
    "not ROOT": (lambda src, dst: dst.write_text("this is not a ROOT file\n" * 100), "not a readable ROOT file"),
    "empty file": (lambda src, dst: dst.write_bytes(b""), "not a readable ROOT file"),
    "truncated": (lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), "truncated"),
    "missing tree": (lambda src, dst: rewrite(src, dst, rename_tree="Events"), "no tree 'events'"),
    "missing branch": (lambda src, dst: rewrite(src, dst, drop=("jet_btag",)), r"missing branch.*jet_btag"),
    "unexpected dtype": (lambda src, dst: rewrite(src, dst, retype="jet_pt"), r"jet_pt.*dtype.*i4"),
    "corrupt basket": (corrupt_basket, r"cannot read entries"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fail_fast_names_file_and_problem(fault, good_file, tmp_path, config):
    make, match = FAULTS[fault]
    bad = tmp_path / "bad.root"
    make(good_file, bad)
    n = entries(good_file)
    with pytest.raises(InputFileError, match=match) as err:
        process_fileset(one_file_fileset(bad, n), ProcessingOptions(executor="iterative"), config)
    msg = str(err.value)
    assert str(bad) in msg and "ON_BAD_INPUT='skip'" in msg


@pytest.mark.parametrize("fault", ["missing file", "not ROOT", "missing branch", "corrupt basket"])
def test_skip_mode_reports_and_renormalises(fault, good_file, tmp_path, config):
    make, _ = FAULTS[fault]
    bad = tmp_path / "bad.root"
    make(good_file, bad)
    n = entries(good_file)
    params = ProcessingOptions(executor="iterative", on_bad_input="skip")
    skipped = process_fileset(two_file_fileset(good_file, bad, n, n), params, config)
    clean = process_fileset(one_file_fileset(good_file, n), ProcessingOptions(executor="iterative"), config)
    report = skipped.input_report
    assert [b.path for b in report.bad] == [str(bad)]
    assert sum(b.events_lost for b in report.bad) > 0
    assert report.to_dict()["events_lost"]["ttbar__nominal"] == sum(b.events_lost for b in report.bad)
    if fault != "corrupt basket":  # whole file lost: identical to running on the good file alone
        np.testing.assert_array_equal(
            skipped.histograms.hist.values(flow=True), clean.histograms.hist.values(flow=True)
        )
    assert skipped.metrics["input_report"]["n_bad"] == len(report.bad)


def test_skip_report_is_written_with_the_outputs(good_file, tmp_path, config, tiny_dataset):
    bad = tmp_path / "missing.root"
    n = entries(good_file)
    params = RunParameters(executor="iterative", on_bad_input="skip")
    fileset = two_file_fileset(good_file, bad, n, 123)
    result = process_fileset(fileset, params.processing_options(), config)
    out = tmp_path / "run"
    out.mkdir()
    metrics = finish_run(out, params, result, {"processing": 1.0}, tiny_dataset, fileset, config)
    report = json.loads((out / "input_report.json").read_text())
    assert report["bad"][0]["path"] == str(bad) and report["events_lost"] == {"ttbar__nominal": 123}
    assert metrics["input_report"]["n_bad"] == 1
    assert is_complete(out)


def test_no_selected_events_still_gives_templates(good_file, tmp_path, config):
    """A sample with no selected events (no b-tags at all): zero templates, not missing ones."""
    from utils.histograms.accumulate import histogram_name, template_histograms

    path = tmp_path / "nosel.root"
    with uproot.open(good_file) as f:
        arrays = f["events"].arrays(["jet_pt", "jet_eta", "jet_phi", "jet_mass", "jet_btag", "electron_pt", "muon_pt"])
    data = {"jet": ak.zip({k[4:]: arrays[k] * (0.0 if k == "jet_btag" else 1.0) for k in arrays.fields if k.startswith("jet_")}),
            "electron": ak.zip({"pt": arrays["electron_pt"]}), "muon": ak.zip({"pt": arrays["muon_pt"]})}  # fmt: skip
    with uproot.recreate(path) as out:
        out.mktree("events", data)
    result = process_fileset(one_file_fileset(path, len(arrays)), ProcessingOptions(executor="iterative"), config)
    assert result.histograms.hist.sum(flow=True).value == 0
    assert ("ttbar", "nominal") in result.histograms.filled
    with pytest.raises(AGCError, match="pseudo-data needs samples that were not processed"):
        template_histograms(result.histograms, config)  # the other samples are absent here
    h = result.histograms.hist
    for region in config.region_names:
        assert (
            h[{"region": region, "process": "ttbar", "variation": "pt_res_up", "classification": sum}].sum().value == 0
        )
    assert histogram_name("4j1b", "ttbar", "pt_res_up") == "4j1b_ttbar_pt_res_up"


def test_crash_while_writing_leaves_nothing(tmp_path):
    target = tmp_path / "histograms.root"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("simulated crash")
    assert not target.exists() and not list(tmp_path.iterdir())
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert not is_complete(tmp_path)  # outputs without a manifest are an incomplete run


def test_manifest_detects_a_changed_output(tmp_path, good_file, config, tiny_dataset):
    fileset = one_file_fileset(good_file, entries(good_file))
    params = RunParameters(executor="iterative")
    result = process_fileset(fileset, params.processing_options(), config)
    (tmp_path / "histograms.root").write_bytes(b"pretend")
    finish_run(tmp_path, params, result, {}, tiny_dataset, fileset, config)
    assert is_complete(tmp_path)
    (tmp_path / "histograms.root").write_bytes(b"changed")
    assert not is_complete(tmp_path)


def test_project_errors_are_agc_errors():
    assert issubclass(InputFileError, AGCError)
