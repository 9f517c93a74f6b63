"""coffea executors chosen by name: iterative, futures (processes) and Dask (a local cluster,
an existing scheduler by address, or a facility preset: coffea-casa's scheduler or a dask-gateway
cluster).

Remote choices fail fast with a :class:`~utils.errors.ConfigError` that says what was tried and
what to do, instead of hanging on a scheduler that is not there.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from coffea import processor

from utils.errors import ConfigError
from utils.processing.progress import StageFuturesExecutor, StageIterativeExecutor

log = logging.getLogger(__name__)

EXECUTORS = ("iterative", "futures", "dask")
# imported by every worker before the clock of a run starts (a fresh worker otherwise pays these
# imports, several seconds, inside the first chunk's wall time)
WARM_MODULES = ("utils.processing.processor",)
# one thread per library pool in a worker process (what Dask's nanny sets too): a worker is one
# core; torch's and BLAS's own thread pools would otherwise oversubscribe the machine
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
#: loky replaces a worker whose memory grew by more than this over its size after its first task
#: (its leak protection; default 300 MB): a real-sized chunk (400k events) and torch's allocator
#: grow a worker past 300 MB legitimately, and each replacement paid the imports, numba's cache
#: and torch again (ML on: +0.2 s of processtime per 400k-event chunk). A worker that grows by
#: more than 2 GB is still replaced.
WORKER_MEMORY_GROWTH_BYTES = 2_000_000_000
WORKER_ENV = {**SINGLE_THREAD_ENV, "LOKY_MAX_MEMORY_LEAK_SIZE": str(WORKER_MEMORY_GROWTH_BYTES)}
DEFAULT_PORTS = {"tcp": 8786, "tls": 8786, "http": 80, "https": 443, "gateway": 8786}
CONNECT_TIMEOUT_S = 3.0
WORKER_WAIT_S = 60.0


@dataclass(frozen=True)
class Facility:
    """How ``AF_NAME`` reaches Dask workers when ``USE_DASK`` is on.

    ``kind``: ``scheduler`` (connect to ``address``), ``gateway`` (ask a dask-gateway server for a
    cluster) or ``local`` (start a ``LocalCluster`` here).
    """

    name: str
    kind: str
    address: str | None = None
    hint: str = ""


FACILITIES: dict[str, Facility] = {
    "local": Facility("local", "local", hint="a LocalCluster on this machine"),
    "coffea_casa": Facility(
        "coffea_casa",
        "scheduler",
        "tls://localhost:8786",
        hint="coffea-casa runs a scheduler per user session at tls://localhost:8786 (TLS settings come from "
        "the session's Dask configuration); run inside a coffea-casa JupyterLab session",
    ),
    "dask_gateway": Facility(
        "dask_gateway",
        "gateway",
        hint="a dask-gateway server; its address comes from the Dask configuration key gateway.address "
        "(environment variable DASK_GATEWAY__ADDRESS)",
    ),
}


@dataclass
class ExecutorHandle:
    executor: processor.executor.ExecutorBase
    name: str
    workers: int
    client: object | None = None
    startup_s: float = 0.0  # starting the workers and importing WARM_MODULES in each
    #: numba cache hits and misses of the selection kernels in the workers after warming
    numba_cache: dict[str, int] | None = None


def warm_worker(modules: tuple[str, ...] = WARM_MODULES, warm: Callable[[], object] | None = None,
                linger_s: float = 0.0, ca_file: str | None = None) -> int:  # fmt: skip
    """Import ``modules`` and call ``warm`` (e.g. load the ML models) in this worker process;
    returns its pid. ``linger_s`` keeps the worker busy a moment so that a pool hands the next
    warm-up task to another worker. ``ca_file``: the parent's ``AGC_CA_FILE`` when the pool was
    made (a worker forked from the fork server has the server's environment, not the parent's)."""
    import importlib
    import os
    import time

    from utils.datasets.urls import configure_https_trust

    configure_https_trust(ca_file)  # for https:// inputs; None: this process's AGC_CA_FILE
    for name in modules:
        importlib.import_module(name)
    if warm is not None:
        warm()
    time.sleep(linger_s)
    return os.getpid()


def numba_cache_stats() -> dict[str, int]:
    """This process's cache hits and misses (compilations) of the selection kernels' numba
    dispatchers: a warm worker with a working cache has hits and no misses."""
    import numba

    from utils.processing import selection

    hits = misses = 0
    for obj in vars(selection).values():
        if isinstance(obj, numba.core.registry.CPUDispatcher):
            hits += sum(obj.stats.cache_hits.values())
            misses += sum(obj.stats.cache_misses.values())
    return {"hits": hits, "misses": misses}


def parent_ca_file() -> str | None:
    """The CA file this process trusts for https:// inputs (``AGC_CA_FILE``), for its workers."""
    from utils.datasets.urls import CA_FILE_ENV

    return os.environ.get(CA_FILE_ENV) or None


def _warm_task(warm: Callable[[], object] | None, linger_s: float, ca_file: str | None
               ) -> tuple[int, dict[str, int]]:  # fmt: skip
    """One warm-up task of a pool: ``warm`` in the worker that takes it; its pid and numba
    cache statistics."""
    return warm_worker((), warm, linger_s, ca_file), numba_cache_stats()


def warm_processor(
    processor_instance, fileset: dict, schema=None, entries: int = 2000, treename: str = "events"
) -> None:
    """Run ``processor_instance`` on the first ``entries`` events of one file of ``fileset`` and
    discard the output: a worker then has loaded everything a chunk needs on first use (compiled
    numba kernels from their cache, torch and the ML models, decompression libraries), which
    otherwise lands in the first chunk's processtime of every worker. A sample whose
    ``variation`` is ``nominal`` is preferred (it exercises every code path of the processor).
    Pass ``functools.partial(warm_processor, proc, fileset, schema)`` as ``make_executor(warm=...)``.
    """
    from coffea.nanoevents import NanoEventsFactory

    samples = sorted(fileset.items(), key=lambda kv: kv[1].get("metadata", {}).get("variation") != "nominal")
    for name, entry in samples:
        for path, tree in dict(entry["files"]).items():
            metadata = {"dataset": name, **entry.get("metadata", {}), "filename": path, "treename": tree or treename}
            events = NanoEventsFactory.from_root(
                {path: tree or treename}, schemaclass=schema, metadata=metadata, mode="virtual", entry_stop=entries
            ).events()
            processor_instance.process(events)
            return


#: futures pools started ahead of a run (:func:`start_workers`) or kept from a clean run, by worker
#: count; a run takes its pool out of here, so that no two runs ever share one at the same time
_STARTED: dict[int, object] = {}
#: how long a started or kept pool may take to answer a ping before it is replaced (its workers
#: may still be importing: that is the wait a new pool would have too)
PING_S = 120.0


#: imported once by the fork server the futures workers are forked from
PRELOAD_MODULES = ("utils.processing.preload",)


def worker_context():
    """The start method of the futures workers: a fork server that has imported
    :data:`PRELOAD_MODULES` (coffea, the processor, numba initialised) forks each worker, so that a
    worker starts in milliseconds instead of importing for seconds, and the imports are paid once,
    not once per worker. The server is started here, with :data:`WORKER_ENV` in its
    environment (which its workers inherit). One server per process: ``multiprocessing`` keeps it
    for the process's lifetime."""
    import multiprocessing
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD_MODULES))
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return ctx


def _new_pool(workers: int):
    """A futures pool (coffea's default class, loky, its own instance: not the process-wide
    reusable executor that joblib shares) whose workers start now, in the background, from the
    fork server (:func:`worker_context`) and import :data:`WARM_MODULES`. loky starts the processes
    on the first submission, and starting one waits for the fork server's preload: the pings are
    submitted from a thread of their own, so that this returns at once."""
    from loky import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=workers,
        context=worker_context(),
        initializer=warm_worker,
        initargs=(WARM_MODULES, None, 0.0, parent_ca_file()),
    )

    def start() -> None:  # blocks until the fork server has preloaded: off the caller's thread
        for _ in range(workers):
            pool.submit(os.getpid)

    threading.Thread(target=start, name="futures-start", daemon=True).start()
    return pool


def start_workers(workers: int) -> None:
    """Start ``workers`` futures worker processes now, in the background, so that they import while
    the caller prepares the fileset; the next futures run with that worker count takes them."""
    if workers not in _STARTED:
        _STARTED[workers] = _new_pool(workers)


def close_workers() -> None:
    """Shut down every started or kept pool of this process (a kernel's workers)."""
    while _STARTED:
        _, pool = _STARTED.popitem()
        pool.shutdown(wait=True, kill_workers=True)  # type: ignore[attr-defined]


atexit.register(close_workers)


def _responsive(pool) -> bool:
    """Whether ``pool`` runs a task within :data:`PING_S` (not broken, not hung)."""
    try:
        pool.submit(os.getpid).result(timeout=PING_S)
    except Exception as err:  # broken pool, crashed worker, timeout
        log.warning("futures: a started worker pool did not answer (%s); starting a new one", type(err).__name__)
        return False
    return True


def _take_pool(workers: int):
    pool = _STARTED.pop(workers, None)
    if pool is not None and _responsive(pool):
        return pool
    if pool is not None:
        pool.shutdown(wait=False, kill_workers=True)  # type: ignore[attr-defined]
    return _new_pool(workers)


@contextmanager
def _futures_pool(
    workers: int, warm: Callable[[], object] | None, keep: bool = False
) -> Iterator[tuple[object, dict[str, int]]]:
    """A futures pool whose workers have imported :data:`WARM_MODULES` and called ``warm``; with
    the workers' numba cache statistics. The pool :func:`start_workers` started is taken if there is
    one. ``keep``: after a run that ended without an error the pool is kept for the next run of this
    process (notebook cells run again); after an error it is always shut down."""
    pool = _take_pool(workers)
    clean = False
    try:
        stats: dict[int, dict[str, int]] = {}
        # one warm-up task per worker: each lingers so that the pool hands the next one to
        # another worker; a worker that got none (still starting) gets one in the next round
        for _ in range(3):
            tasks = [pool.submit(_warm_task, warm, 0.2, parent_ca_file()) for _ in range(workers - len(stats))]
            stats.update(f.result() for f in tasks)
            if len(stats) >= workers:
                break
        log.debug("futures pool: %d of %d workers warm; numba cache %s", len(stats), workers, stats)
        yield pool, _summed(stats.values())
        clean = True
    finally:
        if keep and clean and workers not in _STARTED:
            _STARTED[workers] = pool
        else:
            pool.shutdown(wait=True)


def _summed(stats) -> dict[str, int]:
    out = {"hits": 0, "misses": 0}
    for s in stats:
        out = {k: out[k] + s[k] for k in out}
    return out


def _host_port(address: str) -> tuple[str | None, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return parsed.hostname, parsed.port or DEFAULT_PORTS.get(parsed.scheme, 8786)


def _reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the address's host and port opens within ``timeout`` seconds."""
    host, port = _host_port(address)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _require_reachable(address: str, what: str, fix: str) -> None:
    if not _reachable(address):
        host, port = _host_port(address)
        raise ConfigError(
            f"{what} at {address} is not reachable (no TCP connection to {host}:{port} within "
            f"{CONNECT_TIMEOUT_S:.0f} s); {fix}"
        )


def handshake_timeout_s() -> float:
    """The bound on a Dask connection and handshake: dask's ``distributed.comm.timeouts.connect``
    (configuration, e.g. ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=10s``)."""
    import dask.config
    import distributed  # noqa: F401 (registers the distributed.* defaults)
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds"))


def _connect_bounded(address: str, what: str):
    """A Dask client of ``address``, or a :class:`ConfigError` within :func:`handshake_timeout_s`:
    a port that accepts connections but never answers would else block ``Client`` for ever."""
    from dask.distributed import Client

    timeout = handshake_timeout_s()
    box: dict[str, object] = {}

    def connect() -> None:
        try:
            box["client"] = Client(address, timeout=timeout)
        except Exception as err:  # handed to the caller below
            box["error"] = err

    thread = threading.Thread(target=connect, name="dask-connect", daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if thread.is_alive():
        raise ConfigError(
            f"{what} at {address} accepts TCP connections but did not answer the Dask handshake within "
            f"{timeout:.0f} s: is it a Dask scheduler (and not TLS-only)? Fix SCHEDULER_ADDRESS, or raise "
            "distributed.comm.timeouts.connect"
        )
    if "error" in box:
        err = box["error"]
        raise ConfigError(f"{what} at {address}: the connection opened but the Dask handshake failed: {err}") from None
    return box["client"]


def _wait_for_workers(client, n: int, where: str) -> int:
    try:
        client.wait_for_workers(n, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise ConfigError(
            f"the Dask scheduler {where} has no workers after {WORKER_WAIT_S:.0f} s; start workers "
            "(dask worker <address>) or scale the cluster"
        ) from None
    return len(client.scheduler_info(n_workers=-1)["workers"])


@contextmanager
def _scheduler_client(address: str, facility: Facility | None) -> Iterator[tuple[object, int]]:
    what = f"Dask scheduler of facility {facility.name!r}" if facility else "Dask scheduler (SCHEDULER_ADDRESS)"
    fix = (
        f"{facility.hint}; or set AF_NAME='local' for a local cluster"
        if facility
        else "start it (dask scheduler), fix SCHEDULER_ADDRESS, or set it to None for a local cluster"
    )
    _require_reachable(address, what, fix)
    client = _connect_bounded(address, what)
    try:
        yield client, _wait_for_workers(client, 1, address)
    finally:
        client.close()


@contextmanager
def _gateway_client(facility: Facility, workers: int) -> Iterator[tuple[object, int]]:
    try:
        import dask_gateway
    except ImportError:
        raise ConfigError(
            f"AF_NAME={facility.name!r} needs the dask-gateway client, which is not installed in this "
            "environment: pip install dask-gateway (the version of the facility's gateway server) and "
            "set DASK_GATEWAY__ADDRESS; or use AF_NAME='local' or SCHEDULER_ADDRESS"
        ) from None
    import dask.config

    address = facility.address or dask.config.get("gateway.address", None)
    if not address:
        raise ConfigError(
            f"AF_NAME={facility.name!r}: no dask-gateway address configured; set the Dask configuration "
            "key gateway.address (environment variable DASK_GATEWAY__ADDRESS)"
        )
    _require_reachable(address, "dask-gateway server", "check DASK_GATEWAY__ADDRESS and the network")
    gateway = dask_gateway.Gateway(address)
    cluster = gateway.new_cluster()
    try:
        cluster.scale(workers)
        client = cluster.get_client()
        try:
            yield client, _wait_for_workers(client, workers, f"of the dask-gateway cluster {cluster.name}")
        finally:
            client.close()
    finally:
        cluster.shutdown()


@contextmanager
def _local_client(workers: int) -> Iterator[tuple[object, int]]:
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
    )
    client = Client(cluster)
    try:
        yield client, workers
    finally:
        client.close()
        cluster.close()


def dask_client(workers: int = 2, scheduler_address: str | None = None, af_name: str = "local"):
    """A context manager yielding ``(client, n_workers)``.

    Precedence: an explicit ``scheduler_address``; else the facility preset ``af_name``
    (:data:`FACILITIES`); else (``local`` or a facility name without a preset, which is then
    only a label in the metrics) a ``LocalCluster`` of ``workers`` single-threaded processes.
    """
    if scheduler_address:
        return _scheduler_client(scheduler_address, None)
    facility = FACILITIES.get(af_name)
    if facility is None or facility.kind == "local":
        if facility is None:
            log.info("AF_NAME=%r has no Dask preset (known: %s): starting a local cluster", af_name, list(FACILITIES))
        return _local_client(workers)
    if facility.kind == "scheduler":
        assert facility.address is not None, f"facility {facility.name} has no scheduler address"
        return _scheduler_client(facility.address, facility)
    return _gateway_client(facility, workers)


@contextmanager
def make_executor(
    name: str = "futures",
    workers: int = 2,
    scheduler_address: str | None = None,
    af_name: str = "local",
    warm: Callable[[], object] | None = None,
    keep_workers: bool = False,
) -> Iterator[ExecutorHandle]:
    """Yield an :class:`ExecutorHandle`; a cluster or client started here is closed on exit.

    ``name``: iterative | futures | dask. For dask see :func:`dask_client`. Futures and Dask
    workers are started and have imported :data:`WARM_MODULES` when this yields, so that a run's
    wall time measures processing, not start-up (``startup_s`` records the start-up). ``warm``
    (picklable, no arguments) is called once in each worker too: pass what loads the ML models.
    Futures take the workers :func:`start_workers` started; ``keep_workers`` keeps them after a
    clean run for the next one in this process.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; allowed: {list(EXECUTORS)}")
    t0 = time.monotonic()
    if name == "iterative":
        yield ExecutorHandle(StageIterativeExecutor(), name, 1)
        return
    if name == "futures":
        started = "started" if workers in _STARTED else "starting"
        log.info("futures: %d worker process(es) %s; warming them up (imports, kernels, a few events)", workers,
                 started)  # fmt: skip
        with _futures_pool(workers, warm, keep_workers) as (pool, cache):
            startup = time.monotonic() - t0
            log.info("%d worker%s ready in %.1f s", workers, "s" if workers > 1 else "", startup)
            yield ExecutorHandle(StageFuturesExecutor(pool=pool, workers=workers, merging=False), name,
                                 workers, startup_s=startup, numba_cache=cache)  # fmt: skip
        return
    log.info("Dask: starting or joining the cluster (%s)", scheduler_address or f"{workers} local worker(s)")
    with dask_client(workers, scheduler_address, af_name) as (client, n_workers):
        client.run(warm_worker, WARM_MODULES, warm, 0.0, parent_ca_file())
        cache = _summed(client.run(numba_cache_stats).values())
        startup = time.monotonic() - t0
        log.info("%d Dask worker%s ready in %.1f s (%s)", n_workers, "s" if n_workers > 1 else "", startup, client)
        yield ExecutorHandle(processor.DaskExecutor(client=client, status=False), name, n_workers, client, startup,
                             cache)  # fmt: skip
