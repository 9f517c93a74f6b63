"""The pipeline's stages as functions the notebook and the CLI call in order:
dataset -> fileset -> (delivery) -> processing -> histograms -> inference -> metrics."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coffea import processor

from utils.config import REPO_ROOT, AnalysisConfig, load_analysis_config
from utils.errors import AGCError, ConfigError
from utils.executors import make_executor, warm_processor
from utils.fileset import REAL_DATASET, build_fileset, normalisation
from utils.histograms import AnalysisHistograms, HistogramAccumulator
from utils.inputs import InputReport, preflight
from utils.io import sha256_file
from utils.metrics import git_commit, machine, package_versions, peak_memory_mb
from utils.processor import IO_BRANCH_SETS, TtbarAnalysis
from utils.schema import AGCSchema

log = logging.getLogger(__name__)

PIPELINES = ("direct", "servicex")


@dataclass
class RunParameters:
    """The knobs of a run (the notebook's ``parameters`` cell), validated."""

    dataset: str = "embedded:quickstart"  # embedded:<preset> | cms-open-data-2015 | path to a JSON
    n_files_max_per_sample: int = -1
    pipeline: str = "direct"  # direct | servicex
    use_dask: bool = False
    executor: str = "futures"  # iterative | futures (ignored when use_dask)
    num_cores: int = 2
    chunksize: int = 500_000
    af_name: str = "local"
    scheduler_address: str | None = None
    systematics: str = "all"  # all | none
    disable_processing: bool = False
    io_file_percent: int = 4
    use_ml: bool = True
    on_bad_input: str = "fail"  # fail | skip
    cores_per_worker: int = 1
    output_dir: str = "outputs"

    def __post_init__(self) -> None:
        problems = []
        if self.pipeline not in PIPELINES:
            problems.append(f"PIPELINE={self.pipeline!r}: allowed {list(PIPELINES)}")
        if self.executor not in ("iterative", "futures"):
            problems.append(f"EXECUTOR={self.executor!r}: allowed ['iterative', 'futures'] (or USE_DASK=True)")
        if self.systematics not in ("all", "none"):
            problems.append(f"SYSTEMATICS={self.systematics!r}: allowed ['all', 'none']")
        if self.io_file_percent not in IO_BRANCH_SETS:
            problems.append(f"IO_FILE_PERCENT={self.io_file_percent!r}: allowed {sorted(IO_BRANCH_SETS)}")
        if self.on_bad_input not in ("fail", "skip"):
            problems.append(f"ON_BAD_INPUT={self.on_bad_input!r}: allowed ['fail', 'skip']")
        if self.num_cores < 1:
            problems.append(f"NUM_CORES={self.num_cores!r}: must be at least 1")
        if self.chunksize < 1:
            problems.append(f"CHUNKSIZE={self.chunksize!r}: must be at least 1")
        if self.n_files_max_per_sample == 0 or self.n_files_max_per_sample < -1:
            problems.append(f"N_FILES_MAX_PER_SAMPLE={self.n_files_max_per_sample!r}: -1 (all) or a positive number")
        if problems:
            raise ConfigError("invalid run parameters:\n  " + "\n  ".join(problems))

    @property
    def executor_name(self) -> str:
        return "dask" if self.use_dask else self.executor


def resolve_dataset(spec: str, workers: int = 1) -> Path:
    """The dataset description JSON of ``embedded:<preset>``, ``cms-open-data-2015`` or a path.
    The embedded dataset is generated on first use (and cached)."""
    if spec.startswith("embedded:"):
        from utils.toymc import ensure_dataset

        return ensure_dataset(spec.split(":", 1)[1], workers=workers)
    if spec == "cms-open-data-2015":
        return REAL_DATASET
    path = Path(spec)
    if not path.is_absolute():
        path = (REPO_ROOT / path) if (REPO_ROOT / path).exists() else path
    if not path.is_file():
        raise ConfigError(f"dataset {spec!r}: not 'embedded:<preset>', 'cms-open-data-2015', or an existing JSON file")
    return path


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
    params: RunParameters,
    config: AnalysisConfig | None = None,
    classifier=None,
    luminosity: float | None = None,
) -> ProcessingResult:
    """Run the processor over a fileset with the executor the parameters choose.

    Input files are checked first (:func:`utils.inputs.preflight`); with ``on_bad_input="skip"``
    bad files and unreadable chunks are left out, reported in ``input_report``, and the
    normalisation uses the events actually processed. ``luminosity`` overrides the configured
    luminosity for the MC normalisation (e.g. a data sample's, see ``fileset.data_luminosity``).
    """
    config = config or load_analysis_config()
    expected = {p: n for e in fileset.values() for p, n in e.get("file_nevts", {}).items()}
    fileset, report = preflight(fileset, params.on_bad_input, expected)
    proc = TtbarAnalysis(
        config,
        classifier=classifier,
        disable_processing=params.disable_processing,
        io_file_percent=params.io_file_percent,
        systematics=params.systematics == "all",
        on_bad_input=params.on_bad_input,
    )
    # every worker runs the processor on a few events before the clock starts: numba kernels,
    # torch and the ML models are loaded then, not inside the first chunk's processtime
    warm = functools.partial(warm_processor, proc, fileset, AGCSchema) if fileset else None
    with make_executor(
        params.executor_name, params.num_cores, params.scheduler_address, params.af_name, warm=warm
    ) as ex:
        runner = processor.Runner(
            executor=ex.executor,
            schema=AGCSchema,
            savemetrics=True,
            chunksize=params.chunksize,
            metadata_cache={},
        )
        t0 = time.monotonic()
        try:
            output, metrics = runner(fileset, processor_instance=proc, treename="events")
        except Exception as err:
            raise _project_error(err) from None
        walltime = time.monotonic() - t0
        workers = ex.workers
        startup = ex.startup_s
    metrics = dict(metrics)
    worker_peak = output.get("peak_memory")
    metrics.update(
        {
            "walltime": walltime,
            "executor_startup_s": startup,
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
    if not params.disable_processing:
        accumulators: dict[str, HistogramAccumulator] = output.get("hists", {})
        histograms = AnalysisHistograms.from_accumulators(
            accumulators, normalisation(fileset, config, luminosity), config
        )
    metrics["input_report"] = report.to_dict()
    return ProcessingResult(histograms, metrics, dict(output.get("nevents", {})), dict(output.get("selected", {})),
                            report, fileset)  # fmt: skip


def _project_error(err: BaseException) -> BaseException:
    """The project error inside coffea's wrapping (``Failed processing file: ...``), if any;
    else an :class:`AGCError` that keeps coffea's message (which names the file and chunk)."""
    seen = err
    while seen is not None:
        if isinstance(seen, AGCError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return AGCError(f"processing failed: {err}")


def run_metrics(params: RunParameters, result: ProcessingResult, stage_times: dict[str, float],
                dataset_path: Path, fileset: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The metrics JSON of a run: the reference's fields plus stages, versions and machine."""
    from utils.benchmark import input_size_metrics

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
        "chunksize": params.chunksize,
        "cores_per_worker": params.cores_per_worker,
        "systematics": params.systematics,
        "disable_processing": params.disable_processing,
        "io_file_percent": params.io_file_percent,
        "entries_per_processtime_hz": entries / processtime,
        "entries_per_walltime_hz": entries / walltime,
        "stage_walltime_s": dict(stage_times),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "peak_memory_per_worker_mb": m.get("peak_memory_per_worker_mb"),
        "executor_startup_s": m.get("executor_startup_s"),
        "input_report": m.get("input_report"),
        "n_files": sum(len(v["files"]) for v in fileset.values()),
        **input_size_metrics(fileset),
        "parameters": asdict(params),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "machine": machine(),
    }


def fileset_for(params: RunParameters) -> tuple[Path, dict[str, Any]]:
    dataset_path = resolve_dataset(params.dataset, workers=params.num_cores)
    return dataset_path, build_fileset(dataset_path, params.n_files_max_per_sample)


def new_output_dir(params: RunParameters, base: str | Path | None = None) -> Path:
    """A fresh output folder for one run: ``<output_dir>/<timestamp>-<dataset tag>``."""
    from utils.metrics import timestamp

    root = Path(base if base is not None else params.output_dir)
    if not root.is_absolute():
        root = REPO_ROOT / root
    tag = params.dataset.replace("embedded:", "").replace("/", "_").replace(".json", "")
    path = root / f"{timestamp()}-{tag}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{timestamp()}-{tag}-{n}"
    path.mkdir(parents=True)
    return path


def make_classifier(use_ml: bool, models_dir: str | Path | None = None):
    """The per-region ML classifier from ``models/`` (``None`` when ML is off)."""
    if not use_ml:
        return None
    from utils.ml.inference import MLClassifier

    return MLClassifier.from_directory(models_dir)


def fileset_summary(fileset: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sample: files, events and cross-section (for display)."""
    return [
        {"sample": name, "files": len(entry["files"]), "events": entry["metadata"]["nevts"],
         "xsec [pb]": entry["metadata"]["xsec"]}
        for name, entry in fileset.items()
    ]  # fmt: skip


MANIFEST_NAME = "manifest.json"


def finish_run(
    output_dir: Path,
    params: RunParameters,
    result: ProcessingResult,
    stage_times: dict[str, float],
    dataset_path: Path,
    fileset: dict[str, Any],
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run's metrics JSON, its input report (when inputs were left out), and, last,
    the run manifest that marks the output folder complete. Returns the metrics."""
    from utils.io import write_json_atomic
    from utils.metrics import write_metrics

    output_dir = Path(output_dir)
    fileset = result.fileset if result.fileset is not None else fileset
    metrics = run_metrics(params, result, stage_times, dataset_path, fileset)
    metrics.update(extra_metrics or {})
    write_metrics(output_dir / "metrics.json", metrics)
    if result.input_report is not None and result.input_report.bad:
        write_json_atomic(output_dir / "input_report.json", result.input_report.to_dict())
    outputs = {
        str(p.relative_to(output_dir)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(output_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".tmp-") and p.name != MANIFEST_NAME and p.suffix != ".ipynb"
    }
    config_path = Path(load_analysis_config().source)
    manifest = {
        "complete": True,
        "outputs": outputs,
        "inputs": {
            "dataset_description": {"path": str(dataset_path), "sha256": sha256_file(dataset_path)},
            "samples": {s: {"files": len(e["files"]), "nevts": e["metadata"]["nevts"]} for s, e in fileset.items()},
            "analysis_config": {"path": str(config_path), "sha256": sha256_file(config_path)},
        },
        "parameters": asdict(params),
        "git_commit": metrics.get("git_commit"),
        "packages": metrics.get("packages"),
    }
    write_json_atomic(output_dir / MANIFEST_NAME, manifest)
    return metrics


def is_complete(output_dir: str | Path) -> bool:
    """Whether a run's output folder is complete: its manifest exists and every output it lists
    is present with the recorded checksum."""
    import json

    path = Path(output_dir) / MANIFEST_NAME
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    return bool(manifest.get("complete")) and all(
        (Path(output_dir) / name).is_file() and sha256_file(Path(output_dir) / name) == entry["sha256"]
        for name, entry in manifest["outputs"].items()
    )
