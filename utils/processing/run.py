"""The processing stage: the processor over a fileset, with the executor the options choose.

:func:`process_fileset` takes :class:`ProcessingOptions` (only what processing needs) and returns
a typed :class:`ProcessingResult`. The notebook's parameters map to these options in
:mod:`utils.run.parameters`.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from coffea import processor

from utils.config import AnalysisConfig
from utils.datasets.fileset import normalisation
from utils.datasets.inputs import POLICIES, InputReport, preflight
from utils.errors import AGCError, ConfigError
from utils.histograms.accumulate import AnalysisHistograms, HistogramAccumulator
from utils.processing.executors import EXECUTORS, make_executor, warm_processor
from utils.processing.processor import IO_BRANCH_SETS, Classifier, TtbarAnalysis
from utils.processing.schema import AGCSchema
from utils.runinfo import peak_memory_mb

log = logging.getLogger(__name__)

TREE_NAME = "events"


@dataclass(frozen=True)
class ProcessingOptions:
    """How to process: executor, workers, chunking, systematics, I/O-only mode, bad-input policy."""

    executor: str = "futures"  # iterative | futures | dask
    workers: int = 2
    chunksize: int = 500_000
    scheduler_address: str | None = None
    af_name: str = "local"
    systematics: bool = True
    disable_processing: bool = False
    io_file_percent: int = 4
    on_bad_input: str = "fail"  # fail | skip

    def __post_init__(self) -> None:
        problems = []
        if self.executor not in EXECUTORS:
            problems.append(f"executor={self.executor!r}: allowed {list(EXECUTORS)}")
        if self.io_file_percent not in IO_BRANCH_SETS:
            problems.append(f"io_file_percent={self.io_file_percent!r}: allowed {sorted(IO_BRANCH_SETS)}")
        if self.on_bad_input not in POLICIES:
            problems.append(f"on_bad_input={self.on_bad_input!r}: allowed {list(POLICIES)}")
        if self.workers < 1:
            problems.append(f"workers={self.workers!r}: must be at least 1")
        if self.chunksize < 1:
            problems.append(f"chunksize={self.chunksize!r}: must be at least 1")
        if problems:
            raise ConfigError("invalid processing options:\n  " + "\n  ".join(problems))


@dataclass
class ProcessingResult:
    """What the processing stage returns."""

    histograms: AnalysisHistograms | None
    metrics: dict[str, Any]
    nevents: dict[str, int]
    selected: dict[str, dict[str, int]] = field(default_factory=dict)
    input_report: InputReport | None = None
    #: the fileset actually processed: bad inputs left out, nevts of the events processed
    fileset: dict[str, Any] | None = None


def process_fileset(
    fileset: dict[str, dict[str, Any]],
    options: ProcessingOptions,
    config: AnalysisConfig,
    classifier: Classifier | None = None,
    luminosity: float | None = None,
) -> ProcessingResult:
    """Run the processor over a fileset with the executor the options choose.

    Input files are checked first (:func:`utils.datasets.inputs.preflight`); with ``on_bad_input="skip"``
    bad files and unreadable chunks are left out, reported in ``input_report``, and the
    normalisation uses the events actually processed. ``luminosity`` overrides the configured
    luminosity for the MC normalisation (e.g. a data sample's, see ``fileset.data_luminosity``).
    """
    expected = {p: n for e in fileset.values() for p, n in e.get("file_nevts", {}).items()}
    t_preflight = time.monotonic()
    fileset, report = preflight(fileset, options.on_bad_input, expected)
    preflight_s = time.monotonic() - t_preflight
    proc = TtbarAnalysis(
        config,
        classifier=classifier,
        disable_processing=options.disable_processing,
        io_file_percent=options.io_file_percent,
        systematics=options.systematics,
        on_bad_input=options.on_bad_input,
    )
    # every worker runs the processor on a few events before the clock starts: numba kernels,
    # torch and the ML models are loaded then, not inside the first chunk's processtime
    warm = functools.partial(warm_processor, proc, fileset, AGCSchema) if fileset else None
    with make_executor(options.executor, options.workers, options.scheduler_address, options.af_name, warm=warm) as ex:
        runner = processor.Runner(
            executor=ex.executor,
            schema=AGCSchema,
            savemetrics=True,
            chunksize=options.chunksize,
            metadata_cache=coffea_metadata_cache(fileset, report),
        )
        t0 = time.monotonic()
        try:
            # preprocessing (the chunking, from the metadata cache) apart from processing, for the
            # time-to-result split; walltime covers both, as the Runner call did
            chunks = runner.preprocess(fileset, treename=TREE_NAME)
            preprocessing_s = time.monotonic() - t0
            output, metrics = runner(chunks, processor_instance=proc, treename=TREE_NAME)
        except Exception as err:
            raise _project_error(err) from None
        walltime = time.monotonic() - t0
        workers = ex.workers
        startup = ex.startup_s
        numba_cache = ex.numba_cache
    t_merge = time.monotonic()
    metrics = dict(metrics)
    worker_peak = output.get("peak_memory")
    metrics.update(
        {
            "walltime": walltime,
            "executor_startup_s": startup,
            "numba_cache": numba_cache,
            "preflight_s": preflight_s,
            "preprocessing_s": preprocessing_s,
            "num_workers": workers,
            "peak_memory_mb": peak_memory_mb(),
            "peak_memory_per_worker_mb": worker_peak.mb if worker_peak is not None else None,
        }
    )
    bad_chunks = InputReport(report.policy, list(output.get("bad_chunks", [])))
    report.bad.extend(bad_chunks.bad)
    for sample, lost in bad_chunks.lost_by_sample().items():
        fileset[sample]["metadata"]["nevts"] -= lost
    histograms = None
    if not options.disable_processing:
        accumulators: dict[str, HistogramAccumulator] = output.get("hists", {})
        histograms = AnalysisHistograms.from_accumulators(
            accumulators, normalisation(fileset, config, luminosity), config
        )
    metrics["input_report"] = report.to_dict()
    metrics["merging_s"] = time.monotonic() - t_merge
    return ProcessingResult(histograms, metrics, dict(output.get("nevents", {})), dict(output.get("selected", {})),
                            report, fileset)  # fmt: skip


def coffea_metadata_cache(fileset: dict[str, dict[str, Any]], report: InputReport) -> dict[Any, dict[str, Any]]:
    """coffea's ``metadata_cache`` filled from what the input check read (one metadata read per
    file): keyed by ``FileMeta(dataset, filename, treename)`` as the Runner builds it (the entry's
    ``treename``, else the Runner's ``treename``), valued by the sample's metadata plus
    ``numentries`` and ``uuid`` (what ``Runner.metadata_fetcher_root`` would read). Files the
    check has no information for are left to coffea's preprocessing."""
    from coffea.processor.executor import FileMeta

    cache: dict[Any, dict[str, Any]] = {}
    for dataset, entry in fileset.items():
        treename = entry.get("treename", TREE_NAME)
        for path in entry["files"]:
            info = report.files.get(path)
            if info is not None:
                meta = {**entry.get("metadata", {}), "numentries": info.entries, "uuid": info.uuid}
                cache[FileMeta(dataset, path, treename)] = meta
    return cache


def _project_error(err: BaseException) -> BaseException:
    """The project error inside coffea's wrapping (``Failed processing file: ...``), if any;
    else an :class:`AGCError` that keeps coffea's message (which names the file and chunk)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, AGCError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return AGCError(f"processing failed: {err}")
