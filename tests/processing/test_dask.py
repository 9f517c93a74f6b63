"""Dask scale-out: a local cluster gives the iterative executor's histograms bit for bit; remote
choices (scheduler address, facility presets) fail fast with a ConfigError; the processor and the
ML classifier pickle cleanly to workers."""

from __future__ import annotations

import functools
import importlib
import os
import socket
import sys
import time
import types

import cloudpickle
import numpy as np
import pytest

from utils.datasets.fileset import build_fileset
from utils.errors import ConfigError
from utils.processing.executors import FACILITIES, _reachable, make_executor
from utils.processing.processor import TtbarAnalysis
from utils.processing.run import ProcessingOptions, process_fileset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dask_local_cluster_matches_iterative_bitwise(tiny_dataset, config):
    fileset = build_fileset(tiny_dataset)
    ref = process_fileset(fileset, ProcessingOptions(executor="iterative", chunksize=10_000), config)
    dask = process_fileset(fileset, ProcessingOptions(executor="dask", workers=2, chunksize=10_000), config)
    assert dask.metrics["num_workers"] == 2
    assert dask.metrics["chunks"] == ref.metrics["chunks"] > 2  # several chunks per worker: merging is exercised
    assert dask.metrics["entries"] == ref.metrics["entries"]
    assert dask.nevents == ref.nevents and dask.selected == ref.selected
    assert ref.histograms.hist.sum(flow=True).value > 0
    assert dask.histograms.filled == ref.histograms.filled
    a, b = dask.histograms.hist.view(flow=True), ref.histograms.hist.view(flow=True)
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.variance, b.variance)
    assert dask.metrics["peak_memory_per_worker_mb"] > 0


def test_unreachable_scheduler_address_fails_fast():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"not reachable.*SCHEDULER_ADDRESS"):
        _enter("dask", 1, address)
    assert time.monotonic() - t0 < 30  # generous: the point is "no hang", not speed


def _enter(*args) -> None:
    with make_executor(*args):
        pass


def test_unresolvable_scheduler_host_fails_with_config_error():
    with pytest.raises(ConfigError, match=r"no-such-scheduler\.invalid"):
        _enter("dask", 1, "tls://no-such-scheduler.invalid:8786")


def test_coffea_casa_preset_unreachable_names_the_facility():
    if _reachable(FACILITIES["coffea_casa"].address, timeout=1):
        pytest.skip("something listens on the coffea-casa scheduler port here")
    with pytest.raises(ConfigError, match=r"coffea_casa.*tls://localhost:8786.*AF_NAME='local'"):
        _enter("dask", 1, None, "coffea_casa")


def test_dask_gateway_preset_without_package_explains(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_gateway", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"dask-gateway client, which is not installed.*pip install dask-gateway"):
        _enter("dask", 1, None, "dask_gateway")


def test_dask_gateway_preset_without_address_or_unreachable(monkeypatch):
    import dask.config

    fake = types.ModuleType("dask_gateway")
    fake.Gateway = lambda *a, **k: pytest.fail("no Gateway may be created before the address is checked")
    monkeypatch.setitem(sys.modules, "dask_gateway", fake)
    with dask.config.set({"gateway.address": None}), pytest.raises(ConfigError, match="DASK_GATEWAY__ADDRESS"):
        _enter("dask", 1, None, "dask_gateway")
    with (
        dask.config.set({"gateway.address": f"http://127.0.0.1:{_free_port()}"}),
        pytest.raises(ConfigError, match=r"dask-gateway server.*not reachable"),
    ):
        _enter("dask", 1, None, "dask_gateway")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["futures", "dask"])
def test_workers_are_warm_before_the_run(name):
    """Workers have imported the processor and run the caller's warm-up before the clock starts,
    with one thread per library pool (OMP_NUM_THREADS=1, as Dask's nanny sets)."""
    warm = functools.partial(importlib.import_module, "json.tool")
    loaded = lambda: (  # noqa: E731 (a lambda is pickled by value: workers cannot import this test module)
        "json.tool" in sys.modules
        and "utils.processing.processor" in sys.modules
        and os.environ.get("OMP_NUM_THREADS") == "1"
    )
    with make_executor(name, 2, warm=warm) as ex:
        assert ex.workers == 2 and ex.startup_s > 0
        if name == "dask":
            assert list(ex.client.run(loaded).values()) == [True, True]
        else:
            assert ex.executor.pool.submit(loaded).result()


def test_warm_processor_runs_the_processor_on_a_few_events(poet_file, config, monkeypatch):
    from utils.processing.executors import warm_processor
    from utils.processing.schema import AGCSchema

    seen = []
    proc = TtbarAnalysis(config)
    original = proc.process
    monkeypatch.setattr(proc, "process", lambda events: seen.append(original(events)))
    meta = {"process": "ttbar", "variation": "nominal", "nevts": 1000, "xsec": 729.84}
    fileset = {
        "ttbar__scaleup": {"files": {str(poet_file): "events"}, "metadata": {**meta, "variation": "scaleup"}},
        "ttbar__nominal": {"files": {str(poet_file): "events"}, "metadata": meta},
    }
    warm_processor(proc, fileset, AGCSchema, entries=300)
    assert len(seen) == 1 and seen[0]["nevents"] == {"ttbar__nominal": 300}  # a nominal sample is preferred


def test_unknown_executor_names_the_choices():
    with pytest.raises(ConfigError, match=r"'threads'.*iterative.*futures.*dask"), make_executor("threads"):
        pass


def test_processor_pickles_for_workers(config):
    for proc in (TtbarAnalysis(config), TtbarAnalysis(config, disable_processing=True, io_file_percent=25)):
        clone = cloudpickle.loads(cloudpickle.dumps(proc))
        assert isinstance(clone, TtbarAnalysis)
        assert clone.config == proc.config
        assert (clone.disable_processing, clone.io_file_percent, clone.systematics) == (
            proc.disable_processing,
            proc.io_file_percent,
            proc.systematics,
        )


def test_processor_with_ml_classifier_pickles(config):
    from utils.run.pipeline import make_classifier

    try:
        classifier = make_classifier(True)
    except Exception as err:  # models are trained by `agc train`; absent in a fresh checkout
        pytest.skip(f"ML models not available: {err}")
    proc = TtbarAnalysis(config, classifier=classifier)
    clone = cloudpickle.loads(cloudpickle.dumps(proc))
    for region in config.region_names:
        names = classifier.feature_names(region)
        if names is None:
            continue
        x = np.random.default_rng(1).normal(50, 20, size=(64, len(names))).astype(np.float32)
        np.testing.assert_array_equal(clone.classifier.classify(region, x), classifier.classify(region, x))
