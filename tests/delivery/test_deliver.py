"""The ServiceX delivery stage, with the real servicex client against the local endpoint.

Every delivery goes through the unmodified ``servicex.deliver`` (about 5-10 s each: the client
polls every 5 s), the endpoint's REST and S3 layers and its worker processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import awkward as ak
import conftest_delivery as shared
import pytest
import uproot

from utils.config import REPO_ROOT, load_analysis_config
from utils.delivery import (
    deliver_fileset,
    func_adl_source,
    read_delivered,
    read_target,
    skim_definition,
    transform_requests,
    uproot_raw_cut,
    write_local_config,
)
from utils.delivery.config import ensure_reachable
from utils.delivery.local import LocalEndpoint, read_endpoint_info
from utils.errors import ConfigError, DeliveryError
from utils.processing.selection import READ_BRANCHES

REAL_FILE = REPO_ROOT / "../shared/realdata/poet2015/poet2015_1000evts_merged_events.root"
VENV_BIN = Path(sys.executable).parent
STARTUP_DEADLINE_S = 90  # waiting for a subprocess to come up, not a timing assertion

pytestmark = pytest.mark.slow

# fixtures shared with other tests of the stage (tests/delivery/conftest_delivery.py)
workdir, inputs, endpoint, sx_config = shared.workdir, shared.inputs, shared.endpoint, shared.sx_config
direct_selection = shared.direct_selection


@pytest.fixture(scope="module")
def fileset(inputs) -> dict:
    return {
        "ttbar__nominal": {
            "files": {str(inputs[1]): "events", str(inputs[0]): "events"},
            "metadata": {"process": "ttbar", "variation": "nominal", "xsec": 729.84, "nevts_total": 700},
        },
        "wjets__nominal": {
            "files": {str(inputs[2]): "events"},
            "metadata": {"process": "wjets", "variation": "nominal", "xsec": 15487.164, "nevts_total": 250},
        },
    }


@pytest.fixture(scope="module")
def raw_root(fileset, sx_config):
    return deliver_fileset(fileset, "uproot-raw", "root", servicex_config=sx_config)


def _by_input(result) -> dict[str, ak.Array]:
    return {f.input_path: read_delivered(f.path, f.tree_name) for f in result.files}


def _check_against_direct(result, fileset, tree: str | None) -> None:
    assert list(result.fileset) == list(fileset)
    for name, entry in result.fileset.items():
        assert entry["metadata"] == fileset[name]["metadata"]
        paths = list(entry["files"])
        assert paths == sorted(paths)
        assert set(entry["files"].values()) == {tree}
    assert {f.input_path for f in result.files} == {
        str(Path(p).resolve()) for s in fileset.values() for p in s["files"]
    }
    for f in result.files:
        expected = direct_selection(f.input_path)
        assert f.events == len(expected), f.input_path
        got = read_delivered(f.path, f.tree_name)
        for branch in READ_BRANCHES:
            assert ak.array_equal(got[branch], expected[branch]), branch
    assert result.stats.n_files == 3 and result.stats.n_inputs == 3
    assert result.stats.events == sum(len(direct_selection(f.input_path)) for f in result.files)
    assert result.stats.bytes_delivered == sum(Path(f.path).stat().st_size for f in result.files) > 0


# -- the query ------------------------------------------------------------------------------------
def test_queries_are_generated_from_the_configuration():
    cfg = dataclasses.replace(
        load_analysis_config(), lepton_pt_min=31.5, jet_pt_min=40.0, btag_threshold=0.77, min_jets=3
    )
    skim = skim_definition(cfg)
    for text in (uproot_raw_cut(skim), func_adl_source(skim, "events")):
        assert "31.5" in text and "0.77" in text and repr(cfg.loosest_jet_pt) in text and ">= 3" in text
        assert "25.0" not in text  # nothing left from the default configuration
    assert set(READ_BRANCHES) <= set(skim.keep)
    requests = transform_requests({"s": {"files": {"/data/x.root": "events"}}}, "func-adl", analysis_config=cfg)
    assert requests["s"].codegen == "uproot" and requests["s"].file_list == ["/data/x.root"]


def test_bad_arguments_are_config_errors(fileset):
    with pytest.raises(ConfigError, match="query_language"):
        transform_requests(fileset, "sql")
    with pytest.raises(ConfigError, match="output_format"):
        transform_requests(fileset, "uproot-raw", "csv")
    mixed = {"s": {"files": {"/a.root": "events", "/b.root": "Events"}}}
    with pytest.raises(ConfigError, match=r"fileset\['s'\].*one tree name"):
        transform_requests(mixed)


# -- deliveries -----------------------------------------------------------------------------------
def test_uproot_raw_root_matches_direct_selection(raw_root, fileset):
    _check_against_direct(raw_root, fileset, tree="events")
    f = raw_root.files[0]
    with uproot.open(f.path) as out:
        tree = out["events"]
        assert tree.classname == "TTree"  # not RNTuple
        assert set(tree.keys()) == set(READ_BRANCHES) | {"numberjet", "numberelectron", "numbermuon"}
        assert tree["numberjet"].typename == "int32_t"
    assert raw_root.metrics()["servicex_bytes_delivered"] == raw_root.stats.bytes_delivered


def test_second_call_is_a_cache_hit(raw_root, fileset, sx_config, endpoint):
    n_requests = len(endpoint.store.all())
    again = deliver_fileset(fileset, "uproot-raw", "root", servicex_config=sx_config)
    assert len(endpoint.store.all()) == n_requests  # nothing new reached the server
    assert all(s.from_cache for s in again.stats.samples.values())
    assert again.fileset == raw_root.fileset


def test_func_adl_gives_the_same_events_as_uproot_raw(raw_root, fileset, sx_config):
    result = deliver_fileset(fileset, "func-adl", "root", servicex_config=sx_config)
    _check_against_direct(result, fileset, tree="servicex")
    raw = _by_input(raw_root)
    for path, arrays in _by_input(result).items():
        for branch in (*READ_BRANCHES, "numberjet"):
            assert ak.array_equal(arrays[branch], raw[path][branch]), (path, branch)


def test_parquet_output(fileset, sx_config):
    result = deliver_fileset(fileset, "uproot-raw", "parquet", servicex_config=sx_config)
    _check_against_direct(result, fileset, tree=None)
    for f in result.files:
        assert f.path.endswith(".parquet")
        table = ak.from_parquet(f.path)
        assert table.numberjet.type.content.primitive == "int32"
        assert ak.all(table.numberjet == ak.num(table.jet_pt, axis=1))


def test_input_rewritten_at_the_same_path_is_delivered_again(inputs, sx_config, workdir):
    """Issue 14, case 5: the client's cache keys on file names; the inputs' size, mtime and UUID
    complete the key, so a new file at the same path does not get the old skim."""
    import shutil

    path = workdir / "rewritten_input.root"
    shutil.copy(inputs[2], path)
    fs = {"wjets__nominal": {"files": {str(path): "events"}, "metadata": {}}}
    first = deliver_fileset(fs, servicex_config=sx_config)
    assert first.stats.events == len(direct_selection(str(path)))
    assert all(s.from_cache for s in deliver_fileset(fs, servicex_config=sx_config).stats.samples.values())
    shutil.copy(inputs[0], path)  # other events, same name
    again = deliver_fileset(fs, servicex_config=sx_config)
    assert not any(s.from_cache for s in again.stats.samples.values())
    assert again.stats.events == len(direct_selection(str(path))) != first.stats.events


def test_missing_input_is_named(inputs, sx_config, workdir):
    missing = workdir / "no_such_file.root"
    fs = {"single_top_tW__nominal": {"files": {str(inputs[2]): "events", str(missing): "events"}, "metadata": {}}}
    with pytest.raises(DeliveryError, match=r"1 of 2 files delivered[\s\S]*no_such_file\.root"):
        deliver_fileset(fs, servicex_config=sx_config)
    result = deliver_fileset(fs, servicex_config=sx_config, allow_incomplete=True)
    assert [s.input_path for s in result.skipped] == [str(missing)]
    assert "not found" in result.skipped[0].reason
    assert [f.input_path for f in result.files] == [str(inputs[2])]
    assert result.stats.samples["single_top_tW__nominal"].n_files == 1


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"real POET file not available at {REAL_FILE}")
def test_real_poet_file(sx_config):
    fs = {"dy": {"files": {str(REAL_FILE): "events"}, "metadata": {"nevts_total": 1000}}}
    result = deliver_fileset(fs, "uproot-raw", "root", servicex_config=sx_config)
    (f,) = result.files
    assert f.events == len(direct_selection(REAL_FILE))  # Drell-Yan: few or none pass
    arrays = read_delivered(f.path, f.tree_name)
    assert set(READ_BRANCHES) <= set(arrays.fields)  # empty or not, the structure is complete
    assert str(arrays.jet_btag.type).endswith("var * float64")
    assert result.fileset["dy"]["metadata"] == {"nevts_total": 1000}


# -- endpoint operations --------------------------------------------------------------------------
def test_request_reattaches_after_endpoint_restart(tmp_path, inputs):
    """A killed run leaves the request on the server and SUBMITTED in the client cache; a new
    endpoint on the same state directory finishes it and the next delivery re-attaches to it."""
    from servicex.configuration import Configuration
    from servicex.query_cache import QueryCache
    from servicex.servicex_adapter import ServiceXAdapter

    fs = {"ttbar__scaleup": {"files": {str(inputs[0]): "events"}, "metadata": {}}}
    (request,) = transform_requests(fs).values()
    config = tmp_path / "servicex.yaml"
    state = tmp_path / "state"
    with LocalEndpoint(state, dispatch=False) as first:  # accepts and persists, runs nothing
        write_local_config(config, first.url, tmp_path / "cache", first.token)
        request_id = asyncio.run(ServiceXAdapter(first.url, first.token).submit_transform(request))
        cache = QueryCache(Configuration.read(str(config)))
        cache.cache_submitted_transform(request, request_id)
        cache.close()
        assert first.store.get(request_id).status == "Submitted"
    with LocalEndpoint(state, workers=1) as second:
        write_local_config(config, second.url, tmp_path / "cache", second.token)
        result = deliver_fileset(fs, servicex_config=config)
        assert [r.id for r in second.store.all()] == [request_id]  # re-attached, not resubmitted
        assert second.store.get(request_id).status == "Complete"
    (f,) = result.files
    assert request_id in f.path and f.events == len(direct_selection(inputs[0]))


def test_state_directory_has_one_owner(endpoint):
    with pytest.raises(DeliveryError, match="in use by the endpoint at " + endpoint.url):
        LocalEndpoint(endpoint.state_dir).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not ready after {STARTUP_DEADLINE_S} s")


def test_servicex_cli_against_standalone_endpoint(tmp_path, inputs):
    state, config = tmp_path / "state", tmp_path / "servicex.yaml"
    command = [
        sys.executable,
        "-m",
        "utils.cli",
        "servicex-endpoint",
        "--port",
        "0",
        "--state-dir",
        str(state),
        "--workers",
        "1",
        "--write-config",
        str(config),
    ]
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = _wait_for(lambda: config.is_file() and read_endpoint_info(state), "standalone endpoint", server)
        assert read_target(config).url == info["url"]
        body = {
            "title": "cli-check",
            "codegen": "uproot-raw",
            "file-list": [str(inputs[2])],
            "result-format": "root-file",
            "result-destination": "object-store",
            "selection": '[{"treename": "events", "filter_name": "jet_pt"}]',
        }
        assert config.stat().st_mode & 0o777 == 0o600  # it holds the token
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {read_target(config).token}"}
        post = urllib.request.Request(f"{info['url']}/servicex/transformation", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(post, timeout=10) as r:
            request_id = json.load(r)["request_id"]
        env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
        sx = str(VENV_BIN / "servicex")
        codegens = subprocess.run(
            [sx, "codegen", "list", "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=True,
        )
        assert set(json.loads(codegens.stdout)) == {"uproot-raw", "uproot"}
        listing = subprocess.run(
            [sx, "transforms", "list", "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=True,
        )
        assert request_id in listing.stdout and "cli-check" in listing.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=120)[0]
    assert server.returncode == 0, output
    assert read_endpoint_info(state) is None  # a clean stop releases the state directory


def test_silent_loopback_endpoint_is_started(tmp_path, monkeypatch):
    monkeypatch.setenv("AGC_SERVICEX_DIR", str(tmp_path / "sx"))
    port = _free_port()
    config = write_local_config(tmp_path / "servicex.yaml", f"http://127.0.0.1:{port}", tmp_path / "cache")
    target = ensure_reachable(read_target(config), workers=1)
    state = tmp_path / "sx" / f"endpoint-{port}"
    info = read_endpoint_info(state)
    try:
        assert target.token == info["token"] == read_target(config).token  # the config got the new token
        get = urllib.request.Request(
            f"http://127.0.0.1:{port}/servicex", headers={"Authorization": f"Bearer {target.token}"}
        )
        with urllib.request.urlopen(get, timeout=10) as r:
            assert "uproot-raw" in json.load(r)["code-gen-image"]
    finally:
        os.kill(info["pid"], signal.SIGTERM)  # the endpoint subprocess this test started
    _wait_for(lambda: read_endpoint_info(state) is None, "endpoint shutdown")


def test_silent_remote_endpoint_fails_fast(tmp_path, fileset):
    config = tmp_path / "servicex.yaml"
    config.write_text("api_endpoints:\n  - name: far\n    endpoint: http://192.0.2.1:9\n    token: abc\n")
    with pytest.raises(DeliveryError, match=r"'far' at http://192\.0\.2\.1:9 .*no answer to GET /servicex"):
        deliver_fileset(fileset, servicex_config=config)
