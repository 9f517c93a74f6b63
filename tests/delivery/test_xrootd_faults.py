"""More faults of a remote source, with a real xrootd: a connection reset in the middle of reading
(a loopback TCP proxy that sends RST after a number of bytes), and an https:// server whose
certificate the client does not trust."""

from __future__ import annotations

import re
import socket
import struct
import threading

import pytest

from utils.datasets.fileset import build_fileset
from utils.datasets.inputs import preflight
from utils.datasets.urls import load_url_rules, rewrite_fileset
from utils.delivery.xrootd import XRootDServer
from utils.errors import AGCError, InputFileError
from utils.processing.run import ProcessingOptions, process_fileset

OPTIONS = {"executor": "iterative", "workers": 1, "chunksize": 3000, "systematics": False, "read_timeout_s": 5}
# bytes the proxy lets through before it resets: more than the input checks and coffea's
# preprocessing of one tiny-dataset file read (about 120 kB), less than the processor's branches
# of it (about 800 kB in all): the reset lands in the middle of the chunk's read
BUDGET = 400_000
# the named outcomes a reset can have: the read broken off; or the client's reconnection, which
# the proxy resets too, refused; or no answer within the read timeout
NAMED = re.compile(r"connection to the server lost|server not reachable|within the read timeout")


class ResetProxy:
    """``127.0.0.1:<port>`` -> ``target``, both ways. Once ``budget`` bytes have gone to the
    clients (over all connections), the connection is reset (SO_LINGER 0, then close: an RST),
    and so is every later one as soon as it is accepted: a link that keeps breaking."""

    def __init__(self, host: str, port: int, budget: int) -> None:
        self.target = (host, port)
        self.budget = budget
        self.sent = 0
        self.resets = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]

    def _reset(self, *socks: socket.socket) -> None:
        with self._lock:
            self.resets += 1
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def _pump(self, src: socket.socket, dst: socket.socket, client: socket.socket, upstream: socket.socket) -> None:
        downstream = dst is client
        try:
            while data := src.recv(1 << 16):
                if downstream:
                    with self._lock:
                        n = max(0, min(len(data), self.budget - self.sent))
                        self.sent += n
                    if n < len(data):
                        client.sendall(data[:n])
                        self._reset(client, upstream)
                        return
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if self.sent >= self.budget:
                self._reset(client)
                continue
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, client, upstream), daemon=True).start()

    def __enter__(self) -> ResetProxy:
        threading.Thread(target=self._serve, name="reset-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def reset_server(tiny_dataset):
    server = XRootDServer(tiny_dataset.parent, tls=True)
    try:
        server.start()
    except AGCError as err:
        pytest.skip(str(err))
    yield server
    server.stop()


def through(proxy: ResetProxy, scheme: str, tiny_dataset) -> tuple[dict, str]:
    """A fileset of one ttbar file read through the proxy, and that file's URL."""
    base = f"{scheme}://127.0.0.1:{proxy.port}//"
    rules = load_url_rules(f"{tiny_dataset.parent.resolve()}/=>{base}")
    fileset = rewrite_fileset(build_fileset(tiny_dataset, 1, processes=["ttbar"]), rules)
    entry = fileset["ttbar__nominal"]
    return {"ttbar__nominal": entry}, next(iter(entry["files"]))


@pytest.mark.parametrize("scheme", ["root", "http", "https"])
def test_connection_reset_mid_read_fails_naming_the_url(scheme, reset_server, tiny_dataset, config, monkeypatch):
    monkeypatch.setenv("AGC_CA_FILE", str(reset_server.ca_file))  # https://: its certificate names 127.0.0.1
    port = reset_server.port if scheme == "root" else reset_server.http_port
    with ResetProxy(reset_server.host, port, BUDGET) as proxy:
        fileset, url = through(proxy, scheme, tiny_dataset)
        with pytest.raises(InputFileError) as err:
            process_fileset(fileset, ProcessingOptions(**OPTIONS), config)
    assert proxy.sent == BUDGET and proxy.resets >= 1  # the checks passed; the reset came while reading
    message = str(err.value)
    assert message.startswith(url) and NAMED.search(message)


@pytest.mark.parametrize("scheme", ["root", "http", "https"])
def test_connection_reset_mid_read_under_skip_is_reported(scheme, reset_server, tiny_dataset, config, monkeypatch):
    """Under skip, the reset file's entries are reported and left out; a local file of the same
    sample is processed, and the normalisation counts only its events."""
    monkeypatch.setenv("AGC_CA_FILE", str(reset_server.ca_file))
    port = reset_server.port if scheme == "root" else reset_server.http_port
    local = str((tiny_dataset.parent / "ttbar__nominal" / "1.root").resolve())
    with ResetProxy(reset_server.host, port, BUDGET) as proxy:
        fileset, url = through(proxy, scheme, tiny_dataset)
        entry = fileset["ttbar__nominal"]
        mixed = {"ttbar__nominal": {**entry, "files": {**entry["files"], local: "events"},
                                    "file_nevts": {**entry["file_nevts"], local: 3000},
                                    "metadata": {**entry["metadata"], "nevts": entry["metadata"]["nevts"] + 3000}}}  # fmt: skip
        result = process_fileset(mixed, ProcessingOptions(**OPTIONS, on_bad_input="skip"), config)
    [bad] = result.input_report.bad
    assert bad.path == url and bad.events_lost == 3000
    assert NAMED.search(bad.problem)
    assert result.fileset["ttbar__nominal"]["metadata"]["nevts"] == 3000
    assert result.nevents["ttbar__nominal"] == 3000


def test_untrusted_https_certificate_is_named(tiny_dataset, monkeypatch):
    """A server whose CA the client was not given: the check fails naming the URL and AGC_CA_FILE;
    with AGC_CA_FILE set to that CA the same file passes (verification stays on throughout)."""
    try:
        server = XRootDServer(tiny_dataset.parent, tls=True).start()
    except AGCError as err:
        pytest.skip(str(err))
    try:
        rules = load_url_rules(f"{tiny_dataset.parent.resolve()}/=>{server.https_url}")
        fileset = rewrite_fileset(build_fileset(tiny_dataset, 1, processes=["ttbar"]), rules)
        url = next(iter(fileset["ttbar__nominal"]["files"]))
        one = {"ttbar__nominal": fileset["ttbar__nominal"]}
        monkeypatch.delenv("AGC_CA_FILE", raising=False)
        with pytest.raises(InputFileError, match="TLS certificate is not trusted") as err:
            preflight(one, "fail", timeout_s=5)
        assert url in str(err.value) and "AGC_CA_FILE" in str(err.value)
        monkeypatch.setenv("AGC_CA_FILE", str(server.ca_file))
        clean, report = preflight(one, "fail", timeout_s=5)
        assert not report.bad and url in clean["ttbar__nominal"]["files"]
    finally:
        server.stop()
