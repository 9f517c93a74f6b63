"""The remote-read benchmark's pieces: the grid, the delaying proxy, one read through both."""

from __future__ import annotations

import pytest

from utils.benchmark.latency import DelayProxy
from utils.benchmark.remote import load_remote_grid, read_files
from utils.config import REPO_ROOT
from utils.errors import ConfigError


def test_committed_grid_is_valid():
    grid = load_remote_grid(REPO_ROOT / "benchmarks" / "remote" / "remote.yml")
    assert {p.scheme for p in grid.points} == {"local", "root", "http", "https"}
    assert {p.rtt_ms for p in grid.points} == {0, 10}


def test_grid_needs_a_local_point(tmp_path):
    bad = tmp_path / "g.yml"
    bad.write_text("name: x\ndataset: embedded:tiny\nsamples: [a]\npoints: [{name: r, scheme: root}]\n")
    with pytest.raises(ConfigError, match="scheme 'local'"):
        load_remote_grid(bad)


@pytest.mark.parametrize("handler", ["default", "xrootd"])
def test_read_through_the_delay_proxy_counts_bytes_and_requests(xrootd_server, tiny_dataset, handler):
    rel = "ttbar__nominal/0.root"
    local = read_files([str(tiny_dataset.parent.resolve() / rel)])
    with DelayProxy(xrootd_server.host, xrootd_server.port, 0.002) as proxy:
        remote = read_files([f"root://{proxy.host}:{proxy.port}//{rel}"], timeout_s=10, handler=handler)
    assert remote[1] == local[1] == 3000
    assert remote[2] > 0 and remote[3] > 0


def test_https_through_the_delay_proxy_verifies_the_certificate(xrootd_server, tiny_dataset, monkeypatch):
    """https:// through the proxy on 127.0.0.1: the server's certificate names that address and is
    verified against its CA (AGC_CA_FILE); bytes, requests and events as read locally."""
    from utils.datasets.urls import configure_https_trust

    rel = "ttbar__nominal/0.root"
    local = read_files([str(tiny_dataset.parent.resolve() / rel)])
    monkeypatch.setenv("AGC_CA_FILE", str(xrootd_server.ca_file))
    configure_https_trust()
    with DelayProxy(xrootd_server.host, xrootd_server.http_port, 0.002) as proxy:
        remote = read_files([f"https://{proxy.host}:{proxy.port}//{rel}"], timeout_s=10)
    assert remote[1] == local[1] == 3000
    assert remote[2] == local[2] and remote[3] == local[3]
