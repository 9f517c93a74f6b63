"""Executors: the workers the options ask for, and a clear error for a scheduler that is not there."""

import socket

import pytest

from utils.errors import ConfigError
from utils.processing.executors import EXECUTORS, _host_port, make_executor


def test_scheduler_addresses_are_parsed_with_default_ports():
    assert _host_port("tcp://10.0.0.1:8786") == ("10.0.0.1", 8786)
    assert _host_port("tls://localhost") == ("localhost", 8786)
    assert _host_port("myhost:9000") == ("myhost", 9000)


@pytest.mark.parametrize("name", ["iterative", "futures"])
def test_local_executors_report_their_workers(name):
    with make_executor(name, 2) as ex:
        assert ex.name == name
        assert ex.workers == (1 if name == "iterative" else 2)


def test_unknown_executor_is_refused():
    assert "dask" in EXECUTORS
    with pytest.raises(ConfigError, match="spark"), make_executor("spark", 1):
        pass


def test_unreachable_scheduler_fails_at_once():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"), make_executor("dask", 1, f"tcp://127.0.0.1:{port}"):
        pass


def test_futures_workers_use_the_numba_cache(tiny_dataset, config):
    import functools

    from utils.datasets.fileset import build_fileset
    from utils.processing.executors import warm_processor
    from utils.processing.processor import TtbarAnalysis
    from utils.processing.schema import AGCSchema

    fileset = build_fileset(tiny_dataset, 1)
    warm = functools.partial(warm_processor, TtbarAnalysis(config), fileset, AGCSchema)
    with make_executor("futures", 2, warm=warm) as ex:
        cache = ex.numba_cache
    # the kernels come from numba's cache in the workers (a miss would be a compilation)
    assert cache["hits"] > 0 and cache["misses"] == 0, cache


def _pids(pool, n: int) -> set[int]:
    return {f.result() for f in [pool.submit(_linger_pid) for _ in range(n)]}


def _linger_pid() -> int:
    import os
    import time

    time.sleep(0.3)
    return os.getpid()


def test_started_workers_are_taken_by_the_run_and_shut_down_after():
    from utils.processing import executors

    executors.start_workers(2)
    started = executors._STARTED[2]
    with make_executor("futures", 2) as ex:
        assert ex.executor.pool is started  # the workers started ahead, not a second start-up
        assert 2 not in executors._STARTED  # taken: no other run can use them meanwhile
    assert 2 not in executors._STARTED  # not kept unless asked


def test_kept_workers_serve_the_next_run_but_not_after_an_error():
    from utils.processing import executors

    with make_executor("futures", 1, keep_workers=True) as first:
        pool = first.executor.pool
    assert executors._STARTED[1] is pool
    with pytest.raises(RuntimeError, match="boom"), make_executor("futures", 1, keep_workers=True) as second:
        assert second.executor.pool is pool
        raise RuntimeError("boom")
    assert 1 not in executors._STARTED  # a run that failed never hands its workers on


def test_a_started_pool_whose_worker_died_is_replaced():
    import os
    import signal

    from utils.processing import executors

    executors.start_workers(1)
    dead = executors._STARTED[1]
    (pid,) = _pids(dead, 1)
    os.kill(pid, signal.SIGKILL)
    with make_executor("futures", 1) as ex:
        assert ex.executor.pool is not dead
        assert pid not in _pids(ex.executor.pool, 1)


def _ordered(x: int) -> dict[str, list[int]]:
    import time

    time.sleep(0.05 * (3 - x))  # later items finish first
    return {"order": [x]}


@pytest.mark.parametrize("name", ["iterative", "futures"])
def test_stage_bar_ends_at_100_percent_and_results_merge_in_order(name, capsys):
    with make_executor(name, 2) as ex:
        executor = ex.executor.copy(desc="Processing", unit="chunk", compression=1)
        out, err = executor(list(range(4)), _ordered, {})
    assert err == 0
    assert out == {"order": [0, 1, 2, 3]}  # submission order, whatever finished first
    bars = capsys.readouterr().err
    assert "Processing: 100%" in bars and "4/4" in bars, bars


def _loaded(names: tuple[str, ...]) -> dict[str, bool]:
    import sys

    return {n: n in sys.modules for n in names}


def test_futures_workers_come_preloaded_from_the_fork_server_without_torch():
    # the fork server imported coffea and the processor and initialised numba once; a worker
    # forked from it has them loaded; torch is loaded only by a run with ML on (its warm-up)
    with make_executor("futures", 1) as ex:
        loaded = ex.executor.pool.submit(_loaded, ("utils.processing.preload", "coffea.processor", "torch")).result()
    assert loaded == {"utils.processing.preload": True, "coffea.processor": True, "torch": False}


_HELD: list[bytes] = []


def _hold_mb(mb: int) -> int:
    import os

    _HELD.append(os.urandom(mb * 1_000_000))  # resident: random bytes are touched, not lazily mapped
    return os.getpid()


def test_a_worker_that_grows_by_a_chunks_memory_is_kept():
    """loky replaces a worker whose memory grew by more than 300 MB since its first task (its leak
    protection): a real-sized chunk grows a worker that much, and the replacement paid the
    imports, numba's cache and torch again. The workers allow :data:`WORKER_MEMORY_GROWTH_BYTES`."""
    import time

    from utils.processing import executors

    with make_executor("futures", 1) as ex:
        pool = ex.executor.pool
        first = pool.submit(_hold_mb, 1).result()  # loky's reference size is taken after a first task
        assert pool.submit(_hold_mb, 500).result() == first
        time.sleep(1.2)  # loky checks at most once a second, after a task
        pids = {pool.submit(_linger_pid).result() for _ in range(3)}
    assert pids == {first}, "the worker was replaced after growing by 500 MB"
    assert executors.WORKER_MEMORY_GROWTH_BYTES >= 1_000_000_000
