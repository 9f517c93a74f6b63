"""coffea executors chosen by name: iterative, futures (processes) and Dask (a local cluster,
an existing scheduler by address, or a facility preset)."""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from coffea import processor

from utils.errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("iterative", "futures", "dask")
# Facility presets: scheduler addresses of known analysis facilities
FACILITY_SCHEDULERS: dict[str, str] = {
    "coffea_casa": "tls://localhost:8786",
}


@dataclass
class ExecutorHandle:
    executor: processor.executor.ExecutorBase
    name: str
    workers: int
    client: object | None = None


def _reachable(address: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 8786), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def make_executor(
    name: str = "futures",
    workers: int = 2,
    scheduler_address: str | None = None,
    af_name: str = "local",
):
    """Yield an :class:`ExecutorHandle`; a local Dask cluster started here is closed on exit.

    ``name``: iterative | futures | dask. For dask, ``scheduler_address`` connects to an existing
    scheduler; otherwise the facility preset of ``af_name`` is used if one exists, else a
    ``LocalCluster`` with ``workers`` single-threaded worker processes is started.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; allowed: {list(EXECUTORS)}")
    if name == "iterative":
        yield ExecutorHandle(processor.IterativeExecutor(), name, 1)
        return
    if name == "futures":
        yield ExecutorHandle(processor.FuturesExecutor(workers=workers, merging=False), name, workers)
        return
    from dask.distributed import Client, LocalCluster

    address = scheduler_address or FACILITY_SCHEDULERS.get(af_name)
    if address:
        if not _reachable(address):
            raise ConfigError(
                f"Dask scheduler {address} (facility {af_name!r}) is not reachable; start it, fix "
                "SCHEDULER_ADDRESS, or use AF_NAME='local' for a local cluster"
            )
        client = Client(address, timeout="10s")
        n = len(client.scheduler_info()["workers"])
        try:
            yield ExecutorHandle(processor.DaskExecutor(client=client, status=False), name, n, client)
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    )
    client = Client(cluster)
    try:
        yield ExecutorHandle(processor.DaskExecutor(client=client, status=False), name, workers, client)
    finally:
        client.close()
        cluster.close()
