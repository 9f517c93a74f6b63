"""The ServiceX delivery stage: skim a coffea-style fileset through ServiceX in one request.

:func:`deliver_fileset` sends every sample in ONE ``servicex.deliver`` call (the client polls
every 5 s, so each call costs about 10 s however small), then applies the guard rails the client
lacks: fewer files than inputs is an error naming the failed inputs (or, on request, a reported
skip), paths are sorted, each delivered file is opened to find its tree and entries, and wall
time and bytes are measured for the metrics JSON.

MC normalisation must keep using the sample metadata (``nevts_total`` of the *inputs*): the
delivered files hold only the skimmed events.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config import AnalysisConfig
from utils.delivery.config import ServiceXTarget, ensure_reachable, failure_reasons, resolve_target
from utils.delivery.inputs import InputFingerprints, SampleInput, normalise_fileset
from utils.delivery.query import CODEGEN, FUNC_ADL_TREE, QUERY_LANGUAGES, build_query, skim_definition
from utils.errors import ConfigError, DeliveryError

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("root", "parquet")
_CLIENT_FORMAT = {"root": "root-ttree", "parquet": "parquet"}
_RESULT_FORMAT = {"root": "root-file", "parquet": "parquet"}


# -- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveredFile:
    sample: str
    path: str
    tree_name: str | None  # None for parquet
    input_path: str | None  # None when the output name cannot be traced back to an input
    events: int
    bytes: int


@dataclass(frozen=True)
class SkippedInput:
    sample: str
    input_path: str
    reason: str


@dataclass(frozen=True)
class SampleDelivery:
    name: str
    n_inputs: int
    n_files: int
    events: int
    bytes: int
    from_cache: bool


@dataclass(frozen=True)
class DeliveryStats:
    wall_time_s: float
    bytes_delivered: int
    n_files: int
    n_inputs: int
    events: int
    samples: dict[str, SampleDelivery]


@dataclass(frozen=True)
class DeliveryResult:
    """What :func:`deliver_fileset` returns.

    ``fileset`` has the input's shape, ``{sample: {"files": {path: tree or None}, "metadata": {...}}}``,
    with sorted local paths of the delivered files, the tree holding the events per file
    (``events`` for uproot-raw, ``servicex`` for func-adl; None for parquet, read those with
    :func:`read_delivered` or ``awkward.from_parquet``) and the metadata unchanged.
    """

    fileset: dict[str, dict[str, Any]]
    files: tuple[DeliveredFile, ...]
    stats: DeliveryStats
    skipped: tuple[SkippedInput, ...]
    query_language: str
    output_format: str
    endpoint: str
    servicex_config: str
    columns: tuple[str, ...] = field(default=())

    def metrics(self) -> dict[str, Any]:
        """Flat numbers for the benchmark metrics JSON."""
        return {
            "servicex_delivery_time_s": self.stats.wall_time_s,
            "servicex_bytes_delivered": self.stats.bytes_delivered,
            "servicex_files": self.stats.n_files,
            "servicex_input_files": self.stats.n_inputs,
            "servicex_events": self.stats.events,
            "servicex_skipped_files": len(self.skipped),
            "servicex_from_cache": all(s.from_cache for s in self.stats.samples.values()),
            "servicex_query_language": self.query_language,
            "servicex_output_format": self.output_format,
            "servicex_endpoint": self.endpoint,
        }


# -- the client ----------------------------------------------------------------------------------
class _ClientNoise(logging.Filter):
    """Drop asyncio's traceback of the client's own 'completed with failures' exception, which
    the client raises in a callback where nobody can catch it; the stage reports it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "ServiceXException")


def tame_client_logging() -> None:
    """Remove the rich handlers the servicex client attaches at import (messages then reach the
    application's handlers once) and quieten httpx's per-request INFO lines."""
    import rich.logging

    for name in ["servicex", *[n for n in logging.root.manager.loggerDict if n.startswith("servicex.")]]:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, rich.logging.RichHandler):
                logger.removeHandler(handler)
    for name in ("httpx", "httpcore"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _quiet_client_callbacks() -> Iterator[None]:
    noise = _ClientNoise()
    logger = logging.getLogger("asyncio")
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _client_cache_dir(target: ServiceXTarget) -> str:
    """The cache folder exactly as the client will use it (it rebases /tmp paths on $TMPDIR)."""
    from servicex.configuration import Configuration

    cfg = Configuration(
        api_endpoints=[{"name": target.backend, "endpoint": target.url}], cache_path=str(target.cache_dir)
    )
    return str(cfg.cache_path)


def _transform_request(sample: SampleInput, query, codegen: str, output_format: str):
    from servicex.models import ResultDestination, TransformRequest

    return TransformRequest(
        title=sample.name,
        codegen=codegen,
        result_destination=ResultDestination.object_store,
        result_format=_RESULT_FORMAT[output_format],
        selection=query.generate_selection_string(),
        file_list=list(sample.inputs),
    )


def _cached_samples(cache_dir: str, target: ServiceXTarget, requests: dict[str, Any]) -> set[str]:
    from servicex.configuration import Configuration
    from servicex.query_cache import QueryCache

    cache = QueryCache(
        Configuration(api_endpoints=[{"name": target.backend, "endpoint": target.url}], cache_path=cache_dir)
    )
    try:
        return {
            name
            for name, request in requests.items()
            if (record := cache.get_transform_by_hash(request.compute_hash())) is not None and record.file_list
        }
    finally:
        cache.close()


def _expected_names(path: str, output_format: str) -> set[str]:
    from servicex.minio_adapter import MinioAdapter, _sanitize_filename

    obj = path.replace("/", ":") + (".parquet" if output_format == "parquet" else "")
    return {_sanitize_filename(obj), _sanitize_filename(MinioAdapter.hash_path(obj))}


def _run_client(spec, target: ServiceXTarget, cache_dir: str, ignore_cache: bool, progress: bool) -> dict[str, Any]:
    from servicex import ProgressBarFormat, deliver

    with _quiet_client_callbacks():
        try:
            return deliver(
                spec,
                config_path=str(target.config_path),
                servicex_name=target.backend,
                return_exceptions=True,
                fail_if_incomplete=True,  # a failed transform is then not cached: a retry resubmits it
                ignore_local_cache=ignore_cache,
                progress_bar=ProgressBarFormat.expanded if progress else ProgressBarFormat.none,
                cache_dir=cache_dir,
            )
        except Exception as err:
            raise DeliveryError(
                f"ServiceX delivery through {target.url} (from {target.config_path}) failed: {type(err).__name__}: {err}"
            ) from err


# -- inspection of delivered files ---------------------------------------------------------------
def _inspect(path: str, output_format: str, expected_tree: str) -> tuple[str | None, int]:
    """(tree name, entries) of a delivered file; DeliveryError when it is not readable."""
    try:
        if output_format == "parquet":
            import pyarrow.parquet as pq

            return None, pq.ParquetFile(path).metadata.num_rows
        import uproot

        with uproot.open(path) as f:
            trees = sorted({k.split(";")[0] for k, v in f.classnames().items() if v == "TTree"})
            if not trees:
                raise DeliveryError(f"{path}: delivered file holds no TTree")
            tree = expected_tree if expected_tree in trees else trees[0]
            return tree, int(f[tree].num_entries)
    except DeliveryError:
        raise
    except Exception as err:
        raise DeliveryError(
            f"{path}: delivered file is not readable ({type(err).__name__}: {err}); rerun with ignore_cache=True"
        ) from err


def read_delivered(path: str | Path, tree_name: str | None = None, columns: list[str] | None = None):
    """Read a delivered file (ROOT or parquet) into a flat awkward record array with the branch
    names (``jet_pt``, ..., ``numberjet``, ...)."""
    import awkward as ak

    path = str(path)
    if path.endswith(".parquet"):
        return ak.from_parquet(path, columns=columns)
    import uproot

    with uproot.open(path) as f:
        if tree_name is None:
            tree_name = next(k.split(";")[0] for k, v in f.classnames().items() if v == "TTree")
        return f[tree_name].arrays(filter_name=columns)


# -- the stage -----------------------------------------------------------------------------------
def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: expected one of {list(allowed)}")


def _prepare(
    fileset, query_language: str, output_format: str, analysis_config: AnalysisConfig | None, input_format: str
):
    _check_choice("query_language", query_language, QUERY_LANGUAGES)
    _check_choice("output_format", output_format, OUTPUT_FORMATS)
    samples = normalise_fileset(fileset)
    skim = skim_definition(analysis_config, input_format)
    queries = {s.name: build_query(skim, query_language, s.tree) for s in samples}
    codegen = CODEGEN[query_language]
    requests = {s.name: _transform_request(s, queries[s.name], codegen, output_format) for s in samples}
    return samples, queries, requests


def transform_requests(
    fileset: Mapping[str, Any],
    query_language: str = "uproot-raw",
    output_format: str = "root",
    *,
    analysis_config: AnalysisConfig | None = None,
    input_format: str = "ntuple",
) -> dict[str, Any]:
    """The ``servicex.models.TransformRequest`` that :func:`deliver_fileset` submits per sample
    (what the client's cache hashes): to inspect a query, or to find a request in the cache."""
    return _prepare(fileset, query_language, output_format, analysis_config, input_format)[2]


def deliver_fileset(
    fileset: Mapping[str, Any],
    query_language: str = "uproot-raw",
    output_format: str = "root",
    servicex_config: str | Path | None = None,
    ignore_cache: bool = False,
    allow_incomplete: bool = False,
    *,
    analysis_config: AnalysisConfig | None = None,
    progress: bool = False,
    input_format: str = "ntuple",
) -> DeliveryResult:
    """Skim ``fileset`` through ServiceX and return the delivered files as a new fileset.

    ``query_language``: ``uproot-raw`` or ``func-adl``; ``output_format``: ``root`` or ``parquet``;
    ``servicex_config``: a servicex.yaml (None: the local endpoint, started when silent);
    ``allow_incomplete``: skip (and report) inputs whose transform failed instead of raising;
    ``input_format``: ``ntuple`` or ``nanoaod``, the skim's object definitions and branches.
    """
    samples, queries, requests = _prepare(fileset, query_language, output_format, analysis_config, input_format)
    target = ensure_reachable(resolve_target(servicex_config))

    import servicex
    from servicex import dataset

    tame_client_logging()
    cache_dir = _client_cache_dir(target)

    def make_spec(ignore: bool):
        return servicex.ServiceXSpec(
            General=servicex.General(OutputFormat=_CLIENT_FORMAT[output_format], Delivery="LocalCache"),
            Sample=[
                servicex.Sample(
                    Name=s.name,
                    Dataset=dataset.FileList(list(s.inputs)),
                    Query=queries[s.name],
                    IgnoreLocalCache=ignore or s.name in changed,
                )
                for s in samples
            ],
        )

    cached = set() if ignore_cache else _cached_samples(cache_dir, target, requests)
    # the client's cache key is the query and the file names: an input rewritten at the same path
    # would get the old skim; the inputs' size, mtime and ROOT UUID complete the key
    fingerprints = InputFingerprints(cache_dir)
    changed = {s.name for s in samples if s.name in cached and not fingerprints.matches(requests[s.name], s)}
    if changed:
        log.warning("inputs of %s changed since they were cached (size, mtime or UUID); delivering again",
                    sorted(changed))  # fmt: skip
        cached -= changed
    log.info(
        "ServiceX delivery of %d samples (%d files) via %s: %s -> %s%s",
        len(samples),
        sum(len(s.inputs) for s in samples),
        target.url,
        query_language,
        output_format,
        f"; cached: {sorted(cached)}" if cached else "",
    )
    start = time.perf_counter()
    raw = _run_client(make_spec(ignore_cache), target, cache_dir, ignore_cache, progress)
    stale = [n for n, g in raw.items() if g.valid() and any(not Path(p).is_file() for p in g)]
    if stale:
        log.warning("cached ServiceX results of %s point at deleted files; delivering again", stale)
        cached = set()
        raw = _run_client(make_spec(True), target, cache_dir, True, progress)
    wall = time.perf_counter() - start
    fingerprints.record([(requests[s.name], s) for s in samples if s.name in raw and raw[s.name].valid()])

    keep = skim_definition(analysis_config, input_format).keep
    return _collect(samples, raw, cached, target, query_language, output_format, allow_incomplete, wall, keep)


def _collect(
    samples: list[SampleInput],
    raw: dict[str, Any],
    cached: set[str],
    target: ServiceXTarget,
    query_language: str,
    output_format: str,
    allow_incomplete: bool,
    wall: float,
    columns: tuple[str, ...],
) -> DeliveryResult:
    fileset: dict[str, dict[str, Any]] = {}
    files: list[DeliveredFile] = []
    skipped: list[SkippedInput] = []
    per_sample: dict[str, SampleDelivery] = {}
    problems: list[str] = []
    for sample in samples:
        guard = raw.get(sample.name)
        if guard is not None and guard.valid():
            paths = sorted(str(p) for p in guard)
            sample_error = None
        else:
            paths = []
            sample_error = repr(guard).splitlines()[-1] if guard is not None else "no result returned"
        by_name = {Path(p).name: p for p in paths}
        traced: dict[str, str | None] = dict.fromkeys(paths)
        untraced = []
        for inp in sample.inputs:
            hit = next((by_name[n] for n in _expected_names(inp, output_format) if n in by_name), None)
            if hit is None:
                untraced.append(inp)
            else:
                traced[hit] = inp
        n_failed = len(sample.inputs) - len(paths)
        if n_failed > 0:
            reasons = failure_reasons(target, sample.name)
            fallback = sample_error or "transform failed"
            if len(untraced) == n_failed:
                failed = [SkippedInput(sample.name, m, reasons.get(m) or fallback) for m in untraced]
            else:  # output names do not follow the input names: only the count is known
                failed = [
                    SkippedInput(sample.name, "<unknown>", f"{n_failed} of {len(sample.inputs)} inputs: {fallback}")
                ]
            skipped += failed
            problems.append(
                f"sample {sample.name!r}: {len(paths)} of {len(sample.inputs)} files delivered; failed:\n    "
                + "\n    ".join(f"{f.input_path}: {f.reason}" for f in failed)
            )
        expected_tree = FUNC_ADL_TREE if query_language == "func-adl" else sample.tree
        sample_files = []
        for p in paths:
            tree, events = _inspect(p, output_format, expected_tree)
            sample_files.append(DeliveredFile(sample.name, p, tree, traced[p], events, Path(p).stat().st_size))
        files += sample_files
        per_sample[sample.name] = SampleDelivery(
            name=sample.name,
            n_inputs=len(sample.inputs),
            n_files=len(sample_files),
            events=sum(f.events for f in sample_files),
            bytes=sum(f.bytes for f in sample_files),
            from_cache=sample.name in cached,
        )
        if sample_files:
            fileset[sample.name] = {
                "files": {f.path: f.tree_name for f in sample_files},
                "metadata": dict(sample.metadata),
            }
    if problems:
        message = "ServiceX delivered fewer files than requested:\n  " + "\n  ".join(problems)
        if not allow_incomplete:
            raise DeliveryError(
                message + "\nFix or remove the failed inputs, or pass allow_incomplete=True to continue without them."
            )
        log.warning("%s\nContinuing without them (allow_incomplete=True).", message)
    stats = DeliveryStats(
        wall_time_s=wall,
        bytes_delivered=sum(f.bytes for f in files),
        n_files=len(files),
        n_inputs=sum(len(s.inputs) for s in samples),
        events=sum(f.events for f in files),
        samples=per_sample,
    )
    log.info(
        "ServiceX delivered %d files (%d events, %.1f MB) in %.1f s",
        stats.n_files,
        stats.events,
        stats.bytes_delivered / 1e6,
        wall,
    )
    return DeliveryResult(
        fileset=fileset,
        files=tuple(files),
        stats=stats,
        skipped=tuple(skipped),
        query_language=query_language,
        output_format=output_format,
        endpoint=target.url,
        servicex_config=str(target.config_path),
        columns=columns,
    )
