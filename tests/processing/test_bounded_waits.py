"""Bounded waits (issue 14, case 9): a port that accepts but never answers is a clear error
within the configured handshake timeout, not a hang."""

from __future__ import annotations

import socket
import threading

import dask.config
import distributed  # noqa: F401 (its defaults registered before dask.config.set, which restores by deleting)
import pytest

from utils.errors import ConfigError
from utils.processing.executors import make_executor


@pytest.fixture()
def silent_port():
    """A loopback TCP port that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_silent_scheduler_port_is_a_clear_error(silent_port):
    address = f"tcp://127.0.0.1:{silent_port}"
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(ConfigError, match=r"did not answer the Dask handshake within 2 s"),
        make_executor("dask", 1, address),
    ):
        pass
