"""The metrics JSON of a run (rates, bytes, stage times, input sizes, versions, machine), its
schema check, and the input-size measurement the metrics and the benchmarks share."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from utils.config import _format_path, load_schema
from utils.datasets.inputs import FileInfo
from utils.datasets.urls import load_url_rules, rules_record
from utils.errors import AGCError
from utils.io import write_json_atomic
from utils.processing.run import ProcessingResult
from utils.run.parameters import RunParameters
from utils.runinfo import git_commit, machine, package_versions, process_age_s

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


class MetricsError(AGCError):
    """A metrics JSON does not match the metrics schema."""


# --- metrics ----------------------------------------------------------------------------------------


def validate_metrics(metrics: Any, source: str = "metrics") -> None:
    """Check a run's metrics against ``metrics.schema.json``; the error names each bad field."""
    validator = jsonschema.Draft202012Validator(load_schema("metrics"))
    errors = sorted(validator.iter_errors(metrics), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{source}: does not match utils/schemas/metrics.schema.json ({len(errors)} problem(s)):"]
        lines += [f"  at {_format_path(err.absolute_path)}: {err.message}" for err in errors]
        raise MetricsError("\n".join(lines))


@dataclass(frozen=True)
class InputSize:
    """Size of the input files of a fileset and of the branches the analysis reads in them."""

    n_files: int
    entries: int
    dataset_bytes: int | None  # on disk; None when a file is remote
    needed_branch_bytes: int  # compressed, summed over the files
    branch_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def needed_bytes_per_event(self) -> float:
        return self.needed_branch_bytes / self.entries if self.entries else math.nan


def input_size(
    fileset: dict[str, dict[str, Any]],
    branches: Sequence[str] | None = None,
    open_remote: bool = False,
    files: Mapping[str, FileInfo] | None = None,
) -> InputSize | None:
    """Sum of ``TBranch.compressed_bytes`` of ``branches`` (default: the branches the selection
    reads, ``READ_BRANCHES`` of the ntuples, or of NanoAOD for a fileset of ``Events`` trees)
    over the fileset's files, their entries and their size on disk.
    ``files``: what the input check already read (:attr:`InputReport.files`); a file found there
    is not opened again. ``None`` for a fileset with remote files that ``files`` does not cover,
    unless ``open_remote`` (that opens every such file)."""
    from utils.processing import nanoaod
    from utils.processing.selection import READ_BRANCHES

    paths = [(p, tree) for entry in fileset.values() for p, tree in entry["files"].items()]
    if branches is None:
        nano = bool(paths) and all(tree == nanoaod.TREE_NAME for _, tree in paths)
        branches = nanoaod.READ_BRANCHES if nano else READ_BRANCHES
    branches = tuple(branches)
    files = files or {}
    known = {p: files[p] for p, _ in paths if p in files and all(b in files[p].branch_bytes for b in branches)}
    to_open = [(p, t) for p, t in paths if p not in known]
    if any("://" in p for p, _ in to_open) and not open_remote:
        return None
    per_branch = dict.fromkeys(branches, 0)
    entries = 0
    sizes: list[int | None] = []
    for info in known.values():
        entries += info.entries
        for b in branches:
            per_branch[b] += info.branch_bytes[b]
        sizes.append(info.file_bytes)
    if to_open:
        import uproot

        for path, tree_name in to_open:
            with uproot.open(path) as f:
                tree = f[tree_name]
                entries += tree.num_entries
                for b in branches:
                    if b in tree:
                        per_branch[b] += tree[b].compressed_bytes
            sizes.append(None if "://" in path else Path(path).stat().st_size)
    size = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
    return InputSize(len(paths), entries, size, sum(per_branch.values()), per_branch)


def input_size_metrics(
    fileset: dict[str, dict[str, Any]], files: Mapping[str, FileInfo] | None = None
) -> dict[str, int | None]:
    """The metrics fields ``dataset_bytes`` and ``needed_branch_bytes`` of a fileset (for
    run_metrics; from ``files``, what the input check read, where it covers the fileset; null
    for remote files it does not cover, which are not opened for this)."""
    size = input_size(fileset, files=files)
    if size is None:
        return {"dataset_bytes": None, "needed_branch_bytes": None}
    return {"dataset_bytes": size.dataset_bytes, "needed_branch_bytes": size.needed_branch_bytes}


#: the notebook's StageTimer stages that are figures
FIGURE_STAGES = ("figures", "variation_figures", "score_figures")
#: the notebook's StageTimer stages that save histograms (histograms_ml: the jet-assignment features)
SAVING_STAGES = ("histograms", "histograms_ml")


def time_to_result(
    stage_times: Mapping[str, float],
    processing: Mapping[str, Any],
    fit_timings: Mapping[str, float] | None = None,
    total: float | None = None,
) -> dict[str, float]:
    """The whole run's wall time split into its parts (``time_to_result_s`` of the metrics).

    ``stage_times``: the notebook's stages (``imports`` is the kernel process's age after the
    imports); ``processing``: the processing stage's metrics (``executor_startup_s``,
    ``preflight_s``, ``preprocessing_s``, ``walltime``, ``merging_s``); ``fit_timings``: the
    inference's own timings (its ``figures`` are counted as figures, not fit); ``total``: the
    run so far (default: this process's age). ``other`` is what the named parts leave of it.
    """
    fit_figures = float((fit_timings or {}).get("figures", 0.0))
    preprocessing = float(processing.get("preprocessing_s") or 0.0)
    parts = {
        "kernel_imports": float(stage_times.get("imports", 0.0)),
        "worker_start": float(processing.get("executor_startup_s") or 0.0),
        "preflight": float(processing.get("preflight_s") or 0.0),
        "preprocessing": preprocessing,
        "processing": max(0.0, float(processing.get("walltime") or 0.0) - preprocessing),
        "merging": float(processing.get("merging_s") or 0.0),
        "saving": sum(float(stage_times.get(s, 0.0)) for s in SAVING_STAGES),
        # the fit of the regions, and the wait for the one with ML-score categories (a worker's)
        "fit": max(0.0, float(stage_times.get("fit", 0.0)) + float(stage_times.get("ml", 0.0)) - fit_figures),
        "figures": sum(float(stage_times.get(s, 0.0)) for s in FIGURE_STAGES) + fit_figures,
    }
    total = process_age_s() if total is None else total
    named = sum(parts.values())
    if named > total * 1.001 + 1e-3:
        log.warning(
            "time to result: the parts (%.2f s) exceed the total (%.2f s); total set to their sum", named, total
        )
        total = named
    return {k: round(v, 4) for k, v in {**parts, "other": total - named, "total": total}.items()}


def run_metrics(params: RunParameters, result: ProcessingResult, stage_times: dict[str, float],
                dataset_path: Path, fileset: dict[str, Any],
                fit_timings: Mapping[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """The metrics JSON of a run: the reference's fields plus stages, the time to result,
    versions and machine. ``fit_timings``: the inference's own timings, when a fit ran."""
    m = result.metrics
    entries = int(m.get("entries", 0))
    processtime = float(m.get("processtime", 0.0)) or float("nan")
    walltime = float(m.get("walltime", 0.0)) or float("nan")
    return {
        "walltime": m.get("walltime"),
        "entries": entries,
        "processtime": m.get("processtime"),
        "chunks": m.get("chunks"),
        "bytesread": m.get("bytesread"),
        "columns": sorted(m.get("columns", [])),
        "num_workers": m.get("num_workers"),
        "af": params.af_name,
        "dataset_source": str(dataset_path),
        "use_dask": params.use_dask,
        "pipeline": params.pipeline,
        "n_files_max_per_sample": params.n_files_max_per_sample,
        "max_events_per_sample": params.max_events_per_sample,
        "input_urls": rules_record(params.input_urls, load_url_rules(params.input_urls)),
        "chunksize": params.chunksize,
        "cores_per_worker": params.cores_per_worker,
        "systematics": params.systematics,
        "disable_processing": params.disable_processing,
        "io_file_percent": params.io_file_percent,
        "processor": params.processor,
        "fit_data": params.fit_data,
        "entries_per_processtime_hz": entries / processtime,
        "entries_per_walltime_hz": entries / walltime,
        "stage_walltime_s": dict(stage_times),
        "time_to_result_s": time_to_result(stage_times, m, fit_timings),
        "numba_cache": m.get("numba_cache"),
        "preflight_s": m.get("preflight_s"),
        "preprocessing_s": m.get("preprocessing_s"),
        "merging_s": m.get("merging_s"),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "peak_memory_per_worker_mb": m.get("peak_memory_per_worker_mb"),
        "executor_startup_s": m.get("executor_startup_s"),
        "input_report": m.get("input_report"),
        "n_files": sum(len(v["files"]) for v in fileset.values()),
        **input_size_metrics(fileset, result.input_report.files if result.input_report else None),
        "parameters": asdict(params),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "machine": machine(),
    }


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write the metrics JSON atomically (:func:`validate_metrics` checks it against the schema)."""
    write_json_atomic(path, metrics)
    log.info("metrics written to %s", path)
    return Path(path)
