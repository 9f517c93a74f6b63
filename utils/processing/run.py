"""The processing stage: the processor over a fileset, with the executor the options choose.

:func:`process_fileset` takes :class:`ProcessingOptions` (only what processing needs) and returns
a typed :class:`ProcessingResult`. The notebook's parameters map to these options in
:mod:`utils.run.parameters`.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from coffea import processor
from coffea.nanoevents import NanoAODSchema
from coffea.processor.executor import FileMeta

from utils.config import AnalysisConfig
from utils.datasets.fileset import DATA_PROCESS, TREE_NAME, data_luminosity, normalisation
from utils.datasets.inputs import POLICIES, BadInput, InputReport, preflight, remote_problem
from utils.errors import AGCError, ConfigError, InputFileError
from utils.histograms.accumulate import AnalysisHistograms, HistogramAccumulator
from utils.ml.assignment.features import READ_BRANCHES as ASSIGNMENT_BRANCHES
from utils.ml.assignment.features import Scorer
from utils.ml.assignment.histograms import FeatureHistograms
from utils.ml.scores import ScoreHistograms
from utils.processing.executors import EXECUTORS, make_executor, warm_processor
from utils.processing.nanoaod import READ_BRANCHES as NANOAOD_BRANCHES
from utils.processing.nanoaod import TREE_NAME as NANOAOD_TREE
from utils.processing.processor import INPUT_FORMATS, IO_BRANCH_SETS, Classifier, TtbarAnalysis
from utils.processing.reference_style import PROCESSORS, ReferenceStyleAnalysis, reference_histograms
from utils.processing.schema import AGCSchema
from utils.processing.selection import READ_BRANCHES
from utils.runinfo import peak_memory_mb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessingOptions:
    """How to process: executor, workers, chunking, systematics, I/O-only mode, bad-input policy,
    and which processor: the project's fused one, or the reference-style baseline
    (:mod:`utils.processing.reference_style`; ntuple input, no classifier, no I/O-only mode)."""

    executor: str = "futures"  # iterative | futures | dask
    workers: int = 2
    chunksize: int = 500_000
    scheduler_address: str | None = None
    af_name: str = "local"
    systematics: bool = True
    disable_processing: bool = False
    io_file_percent: int = 4
    on_bad_input: str = "fail"  # fail | skip
    input_format: str = "ntuple"  # ntuple | nanoaod
    read_timeout_s: int = 60  # per request to a remote input (root://, http(s)://)
    processor: str = "fused"  # fused | reference
    #: futures: keep the worker processes after a clean run for the next run in this process
    #: (notebook cells run again); off by default: idle workers hold their memory (~0.5 GB each)
    keep_workers: bool = False

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
        if self.input_format not in INPUT_FORMATS:
            problems.append(f"input_format={self.input_format!r}: allowed {list(INPUT_FORMATS)}")
        if self.read_timeout_s < 1:
            problems.append(f"read_timeout_s={self.read_timeout_s!r}: must be at least 1")
        if self.processor not in PROCESSORS:
            problems.append(f"processor={self.processor!r}: allowed {list(PROCESSORS)}")
        elif self.processor == "reference" and (self.disable_processing or self.input_format != "ntuple"):
            problems.append("processor='reference' processes ntuples (input_format='ntuple') and has no I/O-only "
                            "mode (disable_processing=False)")  # fmt: skip
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
    #: the jet-assignment feature histograms (NanoAOD with a jet assigner), for histograms_ml.root
    feature_histograms: FeatureHistograms | None = None
    #: the luminosity (/pb) the MC was normalised to
    mc_luminosity: float | None = None
    #: with a classifier: the score histograms of the nominal MC events per process (the score figures)
    score_histograms: ScoreHistograms | None = None


def process_fileset(
    fileset: dict[str, dict[str, Any]],
    options: ProcessingOptions,
    config: AnalysisConfig,
    classifier: Classifier | None = None,
    luminosity: float | None = None,
    jet_assigner: Scorer | None = None,
    luminosity_from_data: bool = False,
) -> ProcessingResult:
    """Run the processor over a fileset with the executor the options choose.

    Input files are checked first (:func:`utils.datasets.inputs.preflight`); with ``on_bad_input="skip"``
    bad files and unreadable chunks are left out, reported in ``input_report``, and the
    normalisation uses the events actually processed. ``luminosity`` overrides the configured
    luminosity for the MC normalisation. ``luminosity_from_data`` (when ``luminosity`` is not
    given): normalise the MC to the luminosity of the data actually processed
    (:func:`utils.datasets.fileset.data_luminosity` of the fileset after the input checks and
    the chunks lost; the configured luminosity stands for a data sample that records none).
    ``jet_assigner`` (NanoAOD): the jet-parton assignment, whose feature histograms come back in
    ``feature_histograms``. With a ``classifier``, ``score_histograms`` holds its scores of the
    nominal MC events (:mod:`utils.ml.scores`), normalised as the analysis histograms.
    """
    expected = {p: n for e in fileset.values() for p, n in e.get("file_nevts", {}).items()}
    had_data = any(e["metadata"]["process"] == DATA_PROCESS for e in fileset.values())
    nanoaod = options.input_format == "nanoaod"
    schema = NanoAODSchema if nanoaod else AGCSchema
    treename = NANOAOD_TREE if nanoaod else TREE_NAME
    required = NANOAOD_BRANCHES if nanoaod else READ_BRANCHES
    if jet_assigner is not None:
        required = (*required, *ASSIGNMENT_BRANCHES)
    t_preflight = time.monotonic()
    fileset, report = preflight(
        fileset,
        options.on_bad_input,
        expected,
        timeout_s=options.read_timeout_s,
        required=required,
        floating=not nanoaod,
    )
    preflight_s = time.monotonic() - t_preflight
    proc = _processor(options, config, classifier, jet_assigner)
    # every worker runs the processor on a few events before the clock starts: numba kernels,
    # torch and the ML models are loaded then, not inside the first chunk's processtime
    warm = functools.partial(warm_processor, proc, fileset, schema, treename=treename) if fileset else None
    with make_executor(options.executor, options.workers, options.scheduler_address, options.af_name, warm=warm,
                       keep_workers=options.keep_workers) as ex:  # fmt: skip
        runner = processor.Runner(
            executor=ex.executor,
            schema=schema,
            savemetrics=True,
            chunksize=options.chunksize,
            # the input checks' read of each file (entries, UUID): coffea plans the chunks from it
            # and opens no file for its preprocessing. Every chunk carries the UUID, and the
            # processor compares it with the file it opens: a file replaced after the checks is
            # caught there (TtbarAnalysis.check_file_uuid)
            metadata_cache=coffea_metadata_cache(fileset, report),
            xrootdtimeout=options.read_timeout_s,
        )
        t0 = time.monotonic()
        try:
            # preprocessing (the chunking, from the metadata cache) apart from processing, for the
            # time-to-result split; walltime covers both, as the Runner call did. treename None:
            # each file's own tree name of the fileset (as the input checks used)
            chunks = runner.preprocess(fileset, treename=None)
            preprocessing_s = time.monotonic() - t0
            output, metrics = runner(chunks, processor_instance=proc, treename=None)
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
    check_entries_read(fileset, output.get("entries", {}), expected, report)
    bad_chunks = InputReport(report.policy, list(output.get("bad_chunks", [])))
    report.bad.extend(bad_chunks.bad)
    for sample, lost in bad_chunks.lost_by_sample().items():
        fileset[sample]["metadata"]["nevts"] -= lost
    if luminosity is None and luminosity_from_data:
        luminosity = _processed_data_luminosity(fileset, config, had_data)
    histograms = None
    norm = normalisation(fileset, config, luminosity)  # every sample's per-event weight
    if options.processor == "reference":
        histograms = reference_histograms(output.get("hist", {}), fileset, norm, config, options.systematics)
    elif not options.disable_processing:
        accumulators: dict[str, HistogramAccumulator] = output.get("hists", {})
        histograms = AnalysisHistograms.from_accumulators(accumulators, norm, config)
    feature_histograms = None
    if jet_assigner is not None and not options.disable_processing:
        feature_histograms = FeatureHistograms.from_accumulators(output.get("hists_ml", {}), norm)
    score_histograms = None
    if classifier is not None and not options.disable_processing:
        score_histograms = ScoreHistograms.from_accumulators(output.get("ml_scores", {}), norm, config.region_names)
    metrics["input_report"] = report.to_dict()
    metrics["merging_s"] = time.monotonic() - t_merge
    return ProcessingResult(histograms, metrics, dict(output.get("nevents", {})), dict(output.get("selected", {})),
                            report, fileset, feature_histograms,
                            config.luminosity if luminosity is None else luminosity, score_histograms)  # fmt: skip


def _processor(options: ProcessingOptions, config: AnalysisConfig, classifier: Classifier | None,
               jet_assigner: Scorer | None) -> processor.ProcessorABC:  # fmt: skip
    """The processor of ``options.processor``: :class:`TtbarAnalysis`, or the reference-style one
    (which neither classifies nor assigns jets)."""
    if options.processor == "reference":
        if classifier is not None or jet_assigner is not None:
            raise ConfigError("processor='reference' does not classify events nor assign jets: run it with "
                              "USE_ML=False (the AGC classifier is not part of the reference-style baseline)")  # fmt: skip
        return ReferenceStyleAnalysis(config, systematics=options.systematics)
    return TtbarAnalysis(
        config,
        classifier=classifier,
        disable_processing=options.disable_processing,
        io_file_percent=options.io_file_percent,
        systematics=options.systematics,
        on_bad_input=options.on_bad_input,
        input_format=options.input_format,
        jet_assigner=jet_assigner,
    )


def _processed_data_luminosity(fileset: dict[str, dict[str, Any]], config: AnalysisConfig, had_data: bool) -> float:
    """The luminosity of the data processed (see :func:`process_fileset`): the configured one
    for a fileset without data (or whose data records no luminosity nor event counts); an error
    when a data sample was given but none of its events were processed."""
    lumi = data_luminosity(fileset, config.luminosity)
    if lumi is None and not had_data:
        return config.luminosity
    if lumi is None and any(e["metadata"]["process"] == DATA_PROCESS for e in fileset.values()):
        return config.luminosity
    if lumi is None or lumi <= 0:
        raise ConfigError(
            "FIT_DATA='data': no data events were processed (no data sample in the fileset, or all its "
            "files or entries were left out), so there is no luminosity to normalise the MC to; "
            "check the dataset's data sample and the input report, or use FIT_DATA='pseudodata'"
        )
    log.info("MC normalised to the luminosity of the data processed, %.6g /pb", lumi)
    return lumi


def coffea_metadata_cache(fileset: dict[str, dict[str, Any]], report: InputReport) -> dict[FileMeta, dict]:
    """coffea's preprocessing metadata (``numentries``, ``uuid``) of every file the input checks
    read, keyed as coffea's Runner keys it (sample, path, tree name of the fileset), with the
    sample's own metadata as coffea's metadata fetcher would add it. A file without a
    :class:`~utils.datasets.inputs.FileInfo` is left to coffea's own preprocessing."""
    cache: dict[FileMeta, dict] = {}
    for sample, entry in fileset.items():
        user_meta = entry.get("metadata")
        for path, tree in entry["files"].items():
            info = report.files.get(path)
            if info is None or tree is None:
                continue
            cache[FileMeta(sample, path, tree)] = {**(user_meta or {}), "numentries": info.entries, "uuid": info.uuid}
    return cache


def check_entries_read(
    fileset: dict[str, dict[str, Any]], read: dict[str, dict[str, int]], expected: dict[str, int], report: InputReport
) -> None:
    """Compare the entries the processor read of each file with the dataset description's count
    (which the input checks confirmed): a file replaced between the checks and processing would
    else be normalised with the old count. ``fail``: :class:`InputFileError`; ``skip``: reported,
    and the sample's ``nevts`` becomes the entries really read."""
    for sample, entry in fileset.items():
        for path in entry["files"]:
            if path not in expected:
                continue
            n_read = int(read.get(sample, {}).get(path, 0))
            if n_read == expected[path]:
                continue
            problem = (f"the processor read {n_read} entries but the dataset description (and the input "
                       f"checks) say {expected[path]}: was the file replaced during the run?")  # fmt: skip
            if report.policy != "skip":
                raise InputFileError(
                    f"{path}: {problem}\n  sample: {sample}\n  what to do: rerun on files that do not change, "
                    "or correct 'nevts' in the dataset description"
                )
            log.warning("%s (%s): %s; normalising with the entries read", path, sample, problem)
            report.bad.append(BadInput(sample, path, problem, 0))
            entry["metadata"]["nevts"] += n_read - expected[path]


_WORK_ITEM_FILE = re.compile(r"filename='((?:root|https?)://[^']+)'")


def _project_error(err: BaseException) -> BaseException:
    """The project error inside coffea's wrapping (``Failed processing file: ...``), if any; else,
    for a remote file, an :class:`InputFileError` naming its URL and what went wrong with the
    server (coffea retries a failed chunk, so the last attempt's error may be a later symptom,
    e.g. a closed file after a connection reset); else an :class:`AGCError` that keeps coffea's
    message (which names the file and chunk)."""
    chain: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and len(chain) < 20:
        if isinstance(seen, AGCError):
            return seen
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    url = next((m.group(1) for e in chain if (m := _WORK_ITEM_FILE.search(str(e)))), None)
    if url is not None:
        problem = next((p for e in reversed(chain) if (p := remote_problem(e)) is not None), None)
        cause = chain[-1]
        return InputFileError(
            f"{url}: {problem or f'reading from the server failed ({type(cause).__name__}: {cause})'}.\n"
            "  what to do: check the server and the network to it (the read timeout is READ_TIMEOUT_S), or rerun "
            "with ON_BAD_INPUT='skip' to leave the file's unreadable entries out"
        )
    return AGCError(f"processing failed: {err}")
