"""Remote inputs from a real xrootd server: the tiny dataset over root:// and HTTP gives the
histograms of the local run, bit for bit; each fault of a remote source has a named outcome."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from utils.datasets.fileset import build_fileset
from utils.datasets.inputs import preflight
from utils.datasets.urls import load_url_rules, rewrite_fileset
from utils.delivery.xrootd import XRootDServer, free_port
from utils.errors import AGCError, InputFileError
from utils.processing.run import ProcessingOptions, process_fileset

OPTIONS = {"executor": "iterative", "workers": 1, "chunksize": 3000, "systematics": False}
PROCESSES = ["ttbar", "wjets"]


def remote_fileset(tiny_dataset, base_url, **kw):
    rules = load_url_rules(f"{tiny_dataset.parent.resolve()}/=>{base_url}")
    return rewrite_fileset(build_fileset(tiny_dataset, **kw), rules)


@pytest.fixture(scope="module")
def local_result(tiny_dataset, config):
    fileset = build_fileset(tiny_dataset, 1, processes=PROCESSES)
    return process_fileset(fileset, ProcessingOptions(**OPTIONS), config)


def base_url(server, scheme: str) -> str:
    return {"root": server.root_url, "http": server.http_url, "https": server.https_url}[scheme]


@pytest.mark.parametrize("scheme", ["root", "http", "https"])
def test_remote_histograms_identical_to_local(scheme, xrootd_server, tiny_dataset, config, local_result, monkeypatch):
    """https://: the server's certificate is verified against its CA, given as AGC_CA_FILE."""
    monkeypatch.setenv("AGC_CA_FILE", str(xrootd_server.ca_file))
    base = base_url(xrootd_server, scheme)
    fileset = remote_fileset(tiny_dataset, base, n_files_max_per_sample=1, processes=PROCESSES)
    assert all(p.startswith(base) for e in fileset.values() for p in e["files"])
    result = process_fileset(fileset, ProcessingOptions(**OPTIONS), config)
    assert result.nevents == local_result.nevents
    h, ref = result.histograms.hist, local_result.histograms.hist
    np.testing.assert_array_equal(h.values(flow=True), ref.values(flow=True))
    np.testing.assert_array_equal(h.variances(flow=True), ref.variances(flow=True))


def test_https_with_worker_processes(xrootd_server, tiny_dataset, config, local_result, monkeypatch):
    """The futures executor's worker processes trust the CA of AGC_CA_FILE too."""
    monkeypatch.setenv("AGC_CA_FILE", str(xrootd_server.ca_file))
    fileset = remote_fileset(tiny_dataset, xrootd_server.https_url, n_files_max_per_sample=1, processes=PROCESSES)
    result = process_fileset(fileset, ProcessingOptions(**{**OPTIONS, "executor": "futures", "workers": 2}), config)
    np.testing.assert_array_equal(
        result.histograms.hist.values(flow=True), local_result.histograms.hist.values(flow=True)
    )


def test_dataset_json_with_urls(xrootd_server, tiny_dataset, tmp_path):
    """A dataset description whose paths are root:// URLs goes through the fileset and preflight."""
    description = json.loads(tiny_dataset.read_text())
    for variations in description.values():
        for entry in variations.values():
            for f in entry["files"]:
                f["path"] = xrootd_server.root_url + f["path"]
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(description))
    fileset = build_fileset(path, 1)
    expected = {p: n for e in fileset.values() for p, n in e["file_nevts"].items()}
    clean, report = preflight(fileset, "fail", expected, timeout_s=10)
    assert not report.bad and clean.keys() == fileset.keys()


def one_remote_file(server, tiny_dataset, name="ttbar__nominal/0.root", base=None):
    base = base or server.root_url
    fileset = remote_fileset(tiny_dataset, base, n_files_max_per_sample=1, processes=["ttbar"])
    entry = fileset["ttbar__nominal"]
    url = base + name
    nevts = next(iter(entry["file_nevts"].values()))
    return {"ttbar__nominal": {**entry, "files": {url: "events"}, "file_nevts": {url: nevts}}}, url


@pytest.mark.parametrize("scheme", ["root", "http", "https"])
def test_missing_remote_file_fails_naming_the_url(scheme, xrootd_server, tiny_dataset, monkeypatch):
    monkeypatch.setenv("AGC_CA_FILE", str(xrootd_server.ca_file))
    base = base_url(xrootd_server, scheme)
    fileset, url = one_remote_file(xrootd_server, tiny_dataset, "ttbar__nominal/404.root", base)
    with pytest.raises(InputFileError, match="file not found on the server") as err:
        preflight(fileset, "fail", fileset["ttbar__nominal"]["file_nevts"], timeout_s=5)
    assert url in str(err.value)
    clean, report = preflight(fileset, "skip", fileset["ttbar__nominal"]["file_nevts"], timeout_s=5)
    assert [b.path for b in report.bad] == [url] and not clean


@pytest.fixture
def own_server(tiny_dataset):
    server = XRootDServer(tiny_dataset.parent, http_port=-1)
    try:
        server.start()
    except AGCError as err:
        pytest.skip(str(err))
    yield server
    server.stop()


def test_permission_denied(tiny_dataset, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: the server drops to the xrootd user, which must be refused the file")
    tmp_path = Path(tempfile.mkdtemp(prefix="agc-xrootd-denied-"))  # /tmp: readable by the xrootd user
    tmp_path.chmod(0o755)
    (tmp_path / "ttbar__nominal").mkdir()
    secret = tmp_path / "ttbar__nominal" / "0.root"
    secret.write_bytes((tiny_dataset.parent / "ttbar__nominal" / "0.root").read_bytes())
    secret.chmod(0o600)
    try:
        with XRootDServer(tmp_path, http_port=-1) as server:
            fileset, url = one_remote_file(server, tiny_dataset)
            with pytest.raises(InputFileError, match="permission denied by the server") as err:
                preflight(fileset, "fail", timeout_s=5)
    finally:
        shutil.rmtree(tmp_path)
    assert url in str(err.value)


def test_server_not_running(tiny_dataset):
    base = f"root://127.0.0.1:{free_port()}//"
    fileset = remote_fileset(tiny_dataset, base, n_files_max_per_sample=1, processes=["ttbar"])
    with pytest.raises(InputFileError, match=r"read timeout|not reachable") as err:
        preflight(fileset, "fail", timeout_s=3)
    assert base in str(err.value)


def test_hung_server_times_out(own_server, tiny_dataset):
    """A server that accepts connections but never answers (stopped with SIGSTOP): the read gives
    up after the configured timeout."""
    fileset, url = one_remote_file(own_server, tiny_dataset)
    os.killpg(own_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(InputFileError, match="read timeout") as err:
            preflight(fileset, "fail", timeout_s=3)
    finally:
        os.killpg(own_server.process.pid, signal.SIGCONT)
    assert url in str(err.value)


def test_server_killed_mid_run(own_server, tiny_dataset, config):
    """The server vanishes after the input checks: processing stops with an error naming the URL,
    or under skip reports the lost chunks."""
    fileset, url = one_remote_file(own_server, tiny_dataset)
    clean, _ = preflight(fileset, "fail", fileset["ttbar__nominal"]["file_nevts"], timeout_s=5)
    own_server.kill()
    opts = {**OPTIONS, "read_timeout_s": 3}
    with pytest.raises(AGCError) as err:
        process_fileset(clean, ProcessingOptions(**opts), config)
    assert url in str(err.value)
    # under skip, with a second (local) file: the gone server's file is reported and left out
    local = str((tiny_dataset.parent / "ttbar__nominal" / "1.root").resolve())
    entry = clean["ttbar__nominal"]
    mixed = {"ttbar__nominal": {**entry, "files": {**entry["files"], local: "events"},
                                "file_nevts": {**entry["file_nevts"], local: 3000},
                                "metadata": {**entry["metadata"], "nevts": entry["metadata"]["nevts"] + 3000}}}  # fmt: skip
    skipped = process_fileset(mixed, ProcessingOptions(**opts, on_bad_input="skip"), config)
    assert [b.path for b in skipped.input_report.bad] == [url]
    assert skipped.fileset["ttbar__nominal"]["metadata"]["nevts"] == 3000


@pytest.mark.parametrize("scheme", ["root", "https"])
def test_servicex_pipeline_reads_remote_inputs(
    scheme, xrootd_server, tiny_dataset, config, local_result, tmp_path, monkeypatch
):
    """The local ServiceX endpoint's workers (spawned processes) read root:// and https:// inputs,
    trusting the server's CA from AGC_CA_FILE; the skim gives the same histograms."""
    from utils.delivery import deliver_fileset

    monkeypatch.setenv("AGC_SERVICEX_DIR", str(tmp_path / "servicex"))
    monkeypatch.setenv("AGC_SERVICEX_PORT", str(free_port()))
    monkeypatch.setenv("AGC_CA_FILE", str(xrootd_server.ca_file))
    fileset = remote_fileset(
        tiny_dataset, base_url(xrootd_server, scheme), n_files_max_per_sample=1, processes=PROCESSES
    )
    delivery = deliver_fileset(fileset, query_language="uproot-raw")
    assert delivery.stats.n_files == sum(len(e["files"]) for e in fileset.values())
    skimmed = process_fileset(delivery.fileset, ProcessingOptions(**OPTIONS), config)
    h, ref = skimmed.histograms.hist, local_result.histograms.hist
    np.testing.assert_array_equal(h.values(flow=True), ref.values(flow=True))
    np.testing.assert_array_equal(h.variances(flow=True), ref.variances(flow=True))


def test_ml_scores_over_root_identical_to_local(xrootd_server, tiny_dataset, config):
    """The torch classifier's categories filled from root:// inputs match the local run's."""
    from utils.ml.inference import MLClassifier

    classifier = MLClassifier.from_directory(None)
    options = ProcessingOptions(**OPTIONS)
    local = process_fileset(build_fileset(tiny_dataset, 1, processes=["ttbar"]), options, config, classifier)
    fileset = remote_fileset(tiny_dataset, xrootd_server.root_url, n_files_max_per_sample=1, processes=["ttbar"])
    remote = process_fileset(fileset, options, config, classifier)
    np.testing.assert_array_equal(remote.histograms.hist.values(flow=True), local.histograms.hist.values(flow=True))
    assert remote.histograms.hist.axes.name == local.histograms.hist.axes.name
