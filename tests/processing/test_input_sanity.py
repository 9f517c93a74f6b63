"""Input sanity of the processing stage (issue 14): what is really read is what is normalised;
misaligned, absurd or non-regular inputs are refused (or skipped and reported), never summed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

import utils.processing.run as processing_run
from utils.datasets.fileset import build_fileset
from utils.datasets.inputs import check_file
from utils.errors import AGCError, ConfigError, InputFileError
from utils.histograms.accumulate import HistogramAccumulator
from utils.processing.run import ProcessingOptions, process_fileset
from utils.processing.selection import READ_BRANCHES

OPTIONS = ProcessingOptions(executor="iterative", workers=1, chunksize=100_000)
XSEC = 729.84


@pytest.fixture(scope="module")
def good_file(tiny_dataset) -> Path:
    fs = build_fileset(tiny_dataset)
    return Path(next(iter(fs["ttbar__nominal"]["files"])))


def read_branches(src: Path, n: int | None = None) -> dict[str, ak.Array]:
    with uproot.open(src) as f:
        arrays = f["events"].arrays(list(READ_BRANCHES), entry_stop=n)
    return {b: arrays[b] for b in READ_BRANCHES}


def write_branches(dst: Path, data: dict[str, ak.Array], tree: str = "events") -> Path:
    """One jagged branch per name (each with its own counts), as a ROOT file."""
    with uproot.recreate(dst) as out:
        out.mktree(tree, data)  # with arrays: creates the TTree and fills it
    return dst


def fileset_of(path: Path, nevts: int, tree: str = "events") -> dict:
    meta = {"process": "ttbar", "variation": "nominal", "nevts": nevts, "xsec": XSEC}
    return {"ttbar__nominal": {"files": {str(path): tree}, "file_nevts": {str(path): nevts}, "metadata": meta}}


def nominal_yield(result) -> float:
    h = result.histograms.hist
    return float(
        h[{"process": "ttbar", "variation": "nominal", "classification": sum, "region": sum}].sum(flow=True).value
    )


def write_description(tmp_path: Path, files: list[dict], **extra) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"ttbar": {"nominal": {"files": files, "nevts_total": 0, **extra}}}))
    return path


# --- case 3: a file listed twice ----------------------------------------------------------------


def test_duplicate_file_in_a_sample_is_an_error_naming_it(tmp_path, good_file):
    shutil.copy(good_file, tmp_path / "a.root")
    n = uproot.open(good_file)["events"].num_entries
    desc = write_description(tmp_path, [{"path": "a.root", "nevts": n}, {"path": str(tmp_path / "a.root"), "nevts": n}])
    with pytest.raises(ConfigError, match=r"listed more than once.*a\.root"):
        build_fileset(desc)


# --- case 8: cross-sections and luminosity of a description --------------------------------------


@pytest.mark.parametrize("xsec", [float("nan"), -1.0, 0.0, "TBD", None, float("inf")])
def test_bad_xsec_is_an_error_naming_the_key(tmp_path, xsec):
    desc = tmp_path / "dataset.json"
    entry = {"files": [], "nevts_total": 0, "xsec": xsec}
    desc.write_text(json.dumps({"ttbar": {"nominal": entry}}))  # json writes NaN / Infinity as Python does
    with pytest.raises(ConfigError, match=r"\['ttbar'\]\['nominal'\]\['xsec'\]"):
        build_fileset(desc)


def test_bad_data_luminosity_is_an_error(tmp_path):
    desc = tmp_path / "dataset.json"
    desc.write_text(json.dumps({"data": {"nominal": {"files": [], "nevts_total": 0, "lumi": float("nan")}}}))
    with pytest.raises(ConfigError, match=r"\['lumi'\]"):
        build_fileset(desc)


@pytest.mark.parametrize(
    ("key", "value"), [(("luminosity",), float("nan")), (("histogram", "high"), float("inf")), (("luminosity",), -1.0)]
)
def test_non_finite_config_values_are_refused(key, value, config):
    from utils.config import parse_analysis_config

    data = json.loads(json.dumps(config.raw))
    target = data
    for k in key[:-1]:
        target = target[k]
    target[key[-1]] = value
    with pytest.raises(ConfigError, match=key[-1]):
        parse_analysis_config(data, "test.yml")


# --- case 4: a file replaced between the checks and processing -----------------------------------


def _replace_after_preflight(monkeypatch, target: Path, replacement: Path) -> None:
    real = processing_run.preflight

    def preflight_then_replace(*args, **kwargs):
        out = real(*args, **kwargs)
        shutil.copy(replacement, target)  # the race: the checks saw the old file
        return out

    monkeypatch.setattr(processing_run, "preflight", preflight_then_replace)


@pytest.fixture()
def replaced(tmp_path, good_file, monkeypatch):
    n = uproot.open(good_file)["events"].num_entries
    target = tmp_path / "input.root"
    write_branches(target, read_branches(good_file, n // 2))
    doubled = write_branches(tmp_path / "doubled.root", read_branches(good_file))
    _replace_after_preflight(monkeypatch, target, doubled)
    return target, n // 2, n


def test_file_replaced_after_the_checks_fails(replaced, config):
    target, n_old, _ = replaced
    # coffea plans the chunks from the checks' read (n_old entries); the UUID of the file each
    # chunk opens is compared with the one the checks read
    with pytest.raises(
        InputFileError,
        match=rf"{target.name}: entries 0-{n_old}: the file's UUID is .* the input checks read .*replaced",
    ):
        process_fileset(fileset_of(target, n_old), OPTIONS, config)


def test_file_replaced_after_the_checks_is_caught_on_every_executor(replaced, config):
    target, n_old, _ = replaced
    options = ProcessingOptions(executor="futures", workers=1, chunksize=100_000)
    # (across the process boundary coffea's wrapping keeps the message, not the error type)
    with pytest.raises(AGCError, match=rf"{target.name}: entries 0-{n_old}: the file's UUID.*replaced"):
        process_fileset(fileset_of(target, n_old), options, config)


def test_file_replaced_after_the_checks_skip_leaves_it_out(replaced, config, good_file):
    target, n_old, n_new = replaced
    fileset = fileset_of(target, n_old)
    entry = fileset["ttbar__nominal"]
    entry["files"][str(good_file)] = "events"
    entry["file_nevts"][str(good_file)] = n_new
    entry["metadata"]["nevts"] = n_old + n_new
    options = ProcessingOptions(executor="iterative", workers=1, chunksize=100_000, on_bad_input="skip")
    result = process_fileset(fileset, options, config)
    assert result.fileset["ttbar__nominal"]["metadata"]["nevts"] == n_new  # the good file's events only
    bad = result.input_report.bad
    assert [(b.path, b.events_lost) for b in bad] == [(str(target), n_old)] and "replaced" in bad[0].problem
    reference = process_fileset(fileset_of(good_file, n_new), OPTIONS, config)
    assert nominal_yield(result) == pytest.approx(nominal_yield(reference), rel=1e-12)


def test_coffea_plans_chunks_from_the_checks_and_opens_no_file_for_it(good_file, config, monkeypatch):
    from coffea.processor import Runner

    def no_metadata_read(*args, **kwargs):
        raise AssertionError("coffea opened a file for its preprocessing")

    monkeypatch.setattr(Runner, "metadata_fetcher_root", staticmethod(no_metadata_read))
    n = uproot.open(good_file)["events"].num_entries
    result = process_fileset(fileset_of(good_file, n), OPTIONS, config)
    assert result.nevents == {"ttbar__nominal": n}


# --- case 6: sibling jagged branches with other counts -------------------------------------------


@pytest.mark.parametrize("extra", [1, -1])
def test_sibling_branch_with_other_counts_is_refused(tmp_path, good_file, config, extra):
    data = read_branches(good_file, 200)
    if extra > 0:
        data["jet_eta"] = ak.concatenate([data["jet_eta"], ak.ones_like(data["jet_pt"][:, :1])], axis=1)
    else:
        data["jet_eta"] = data["jet_eta"][:, :-1]
    path = write_branches(tmp_path / "misaligned.root", data)
    with pytest.raises(InputFileError, match=r"misaligned\.root.*jet_eta.*equal counts per event"):
        process_fileset(fileset_of(path, 200), OPTIONS, config)


def test_aligned_siblings_with_separate_counters_pass(tmp_path, good_file, config):
    path = write_branches(tmp_path / "aligned.root", read_branches(good_file, 200))
    result = process_fileset(fileset_of(path, 200), OPTIONS, config)
    assert result.nevents["ttbar__nominal"] == 200


# --- case 7: absurd kinematics and the fixed-point accumulator -----------------------------------


@pytest.mark.parametrize("value", [np.inf, 1e30, np.nan])
def test_absurd_jet_pt_fails_naming_the_file(tmp_path, good_file, config, value):
    data = read_branches(good_file, 200)
    pt = ak.to_numpy(ak.flatten(data["jet_pt"])).copy()
    pt[3] = value
    data["jet_pt"] = ak.unflatten(pt, ak.num(data["jet_pt"]))
    path = write_branches(tmp_path / "absurd.root", data)
    with pytest.raises(InputFileError, match=r"absurd\.root.*absurd kinematics.*jet_pt"):
        process_fileset(fileset_of(path, 200), OPTIONS, config)
    skip = ProcessingOptions(executor="iterative", workers=1, chunksize=50, on_bad_input="skip")
    result = process_fileset(fileset_of(path, 200), skip, config)
    (bad,) = result.input_report.bad
    assert (bad.entry_start, bad.entry_stop, bad.events_lost) == (0, 50, 50)
    assert result.fileset["ttbar__nominal"]["metadata"]["nevts"] == 150
    view = result.histograms.hist.view(flow=True)
    assert np.all(np.isfinite(view.value)) and np.all(view.variance >= 0)


@pytest.mark.parametrize("weight", [np.inf, np.nan, 1e30])
def test_accumulator_refuses_weights_it_cannot_hold(config, weight):
    from utils.errors import AGCError

    acc = HistogramAccumulator.empty(config, "ttbar", ("nominal",))
    w = np.array([1.0, weight])
    with pytest.raises(AGCError, match="fixed-point accumulator"):
        acc.fill("nominal", np.zeros(2, np.int64), np.array([100.0, 200.0]), np.zeros(2, np.int64), w)
    assert not acc.sumw.any()


# --- case 10: non-regular files --------------------------------------------------------------------


def test_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "input.root"
    os.mkfifo(fifo)
    assert "not a regular file" in check_file(str(fifo))
    assert "not a regular file" in check_file(str(tmp_path))


# --- case 19: the fileset's tree name ----------------------------------------------------------


def test_fileset_tree_name_is_used_by_processing(tmp_path, good_file, config):
    path = write_branches(tmp_path / "renamed.root", read_branches(good_file, 200), tree="Events")
    result = process_fileset(fileset_of(path, 200, tree="Events"), OPTIONS, config)
    assert result.nevents["ttbar__nominal"] == 200


# --- case 14: non-ASCII paths --------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["iterative", "futures"])
def test_non_ascii_path_is_processed(tmp_path, good_file, config, executor):
    folder = tmp_path / "données ü"
    folder.mkdir()
    path = write_branches(folder / "événements #1.root", read_branches(good_file, 200))
    options = ProcessingOptions(executor=executor, workers=1, chunksize=100_000)
    result = process_fileset(fileset_of(path, 200), options, config)
    assert result.nevents["ttbar__nominal"] == 200
