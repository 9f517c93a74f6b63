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
