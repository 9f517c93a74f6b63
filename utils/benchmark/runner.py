"""Benchmarks: ``agc benchmark GRID.yml`` runs the main notebook with papermill over a grid of
parameters, validates every run's ``metrics.json`` against ``utils/schemas/metrics.schema.json``,
and writes a summary (Markdown, CSV, plots) with medians over repeats, parallel efficiency and the
ratio of the processing rate to the I/O-only rate on the same files.

Grid file (YAML, validated by ``utils/schemas/benchmark_grid.schema.json``)::

    name: quickstart
    description: free text
    repeat: 3                 # optional, --repeat overrides
    base: {DATASET: "embedded:quickstart", USE_ML: false}
    grid: {NUM_CORES: [1, 2], DISABLE_PROCESSING: [false, true]}   # cartesian product

Keys are the notebook's parameters. ``RUN_FIT`` and ``RUN_RANKING`` are off unless the grid sets
them. Repeats are interleaved (every point once, then again), so that slow phases of a shared
machine spread over all points.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.benchmark.grid import BenchmarkGrid, GridPoint, RunRecord, run_parameters
from utils.benchmark.plots import PLOTS, plot_io_comparison, plot_scaling, plot_stage_times
from utils.benchmark.summary import PointSummary, markdown_summary, summarize, write_csv
from utils.config import REPO_ROOT
from utils.errors import AGCError, ConfigError
from utils.io import write_json_atomic, write_text_atomic
from utils.run.metrics import METRICS_FILE, MetricsError, validate_metrics

log = logging.getLogger(__name__)

RUNNER_FILE = "runner.json"


# --- running ------------------------------------------------------------------------------------------


def _rep_dir(output: Path, point: GridPoint, repeat: int) -> Path:
    return output / "points" / point.name / f"rep{repeat}"


def prepare_grid(grid: BenchmarkGrid) -> None:
    """Generate the embedded datasets and load the ML models before any timed run, so that
    neither lands in the first point's figures; fail early if the models are missing."""
    from utils.run.pipeline import make_classifier, resolve_dataset

    points = grid.points()
    workers = max(run_parameters(p.parameters).num_cores for p in points)
    for dataset in sorted({run_parameters(p.parameters).dataset for p in points}):
        log.info("dataset %s: %s", dataset, resolve_dataset(dataset, workers=workers))
    if any(run_parameters(p.parameters).use_ml for p in points):
        try:
            make_classifier(True)
        except (ImportError, AGCError) as err:
            raise ConfigError(
                f"{grid.source}: USE_ML is on (explicitly or by the notebook's default) but the ML models cannot be "
                f"loaded: {err}; set USE_ML: false in 'base' or train the models (agc train)"
            ) from None


NotebookRunner = Callable[[dict[str, Any], Path], Path]


def _papermill(parameters: dict[str, Any], output_dir: Path) -> Path:
    from utils.run.papermill import execute_notebook

    return execute_notebook(parameters, output_dir, progress=False)


@dataclass
class GridRun:
    """The records of the runs that succeeded and the failures (``point (repeat k): error``)."""

    records: list[RunRecord]
    failures: list[str] = field(default_factory=list)


def _completed(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() and (path / RUNNER_FILE).is_file()


#: runs of a point repeated when the machine was busy (load average above the core count)
NOISY_RETRIES = 1


def run_grid(grid: BenchmarkGrid, output: Path, repeat: int | None = None, runner: NotebookRunner = _papermill,
             keep_going: bool = False, resume: bool = False, noisy_retries: int = NOISY_RETRIES,
             loadavg: Callable[[], float] = lambda: os.getloadavg()[0]) -> GridRun:  # fmt: skip
    """Execute every point ``repeat`` times (interleaved) into ``output/points/<point>/rep<k>``.

    The 1-minute load average is recorded before and after every run; a run whose load was
    above the machine's core count is repeated (at most ``noisy_retries`` times, the last one
    kept, its ``attempts`` recorded). ``keep_going``: a failed run is logged and recorded, the
    others go on (default: stop). ``resume``: runs that already completed in ``output`` are read
    back instead of repeated.
    """
    repeat = repeat or grid.repeat
    points = grid.points()
    cores = os.cpu_count() or 1
    prepare_grid(grid)
    result = GridRun([])
    for rep in range(repeat):
        for point in points:
            path = _rep_dir(output, point, rep)
            if resume and _completed(path):
                log.info("benchmark %s: point %s, repeat %d/%d done before", grid.name, point.name, rep + 1, repeat)
                result.records.append(_read_record(point, rep, path))
                continue
            log.info("benchmark %s: point %s, repeat %d/%d", grid.name, point.name, rep + 1, repeat)
            try:
                record = _run_point(point, rep, path, runner, cores, noisy_retries, loadavg, rerun=resume)
            except AGCError as err:
                message = f"{point.name} (repeat {rep}): {err}"
                if not keep_going:
                    raise AGCError(f"benchmark point {message}") from None
                log.error("benchmark point %s", message)
                result.failures.append(message)
                continue
            result.records.append(record)
    return result


def _run_point(point: GridPoint, rep: int, path: Path, runner: NotebookRunner, cores: int, noisy_retries: int,
               loadavg: Callable[[], float], rerun: bool = False) -> RunRecord:  # fmt: skip
    """One run of a point, repeated while the machine was busy (at most ``noisy_retries`` times).
    A repeat, and with ``rerun`` (``--resume``) any run, replaces what the runner's earlier
    attempt left in the folder (the notebook's OVERWRITE; it refuses a folder with outputs)."""
    for attempt in range(1 + max(0, noisy_retries)):
        for stale in (RUNNER_FILE, METRICS_FILE):  # of an earlier run into the same folder
            (path / stale).unlink(missing_ok=True)
        again = attempt > 0 or (rerun and path.is_dir() and any(path.iterdir()))
        load_before = loadavg()
        t0 = time.monotonic()
        runner({**point.parameters, "OVERWRITE": True} if again else point.parameters, path)
        elapsed = time.monotonic() - t0
        write_json_atomic(path / RUNNER_FILE, {"point": point.name, "varied": point.varied,
                                               "parameters": point.parameters, "repeat": rep,
                                               "notebook_walltime_s": elapsed, "cores": cores,
                                               "loadavg_1min_before": load_before,
                                               "loadavg_1min_after": loadavg(), "attempts": attempt + 1})  # fmt: skip
        record = _read_record(point, rep, path)
        if record.quiet:
            break
        log.warning("benchmark point %s: load average %s above %d cores (attempt %d)", point.name,
                    "/".join(f"{x:.1f}" for x in record.loadavg), cores, attempt + 1)  # fmt: skip
    return record


def _read_record(point: GridPoint, rep: int, path: Path) -> RunRecord:
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        raise MetricsError(f"{metrics_path}: the notebook wrote no metrics")
    metrics = json.loads(metrics_path.read_text())
    validate_metrics(metrics, str(metrics_path))
    runner_path = path / RUNNER_FILE
    info = json.loads(runner_path.read_text()) if runner_path.is_file() else {}
    loads = tuple(info[k] for k in ("loadavg_1min_before", "loadavg_1min_after") if k in info)
    cores = info.get("cores", (metrics.get("machine") or {}).get("cores"))
    return RunRecord(point, rep, path, metrics, info.get("notebook_walltime_s"), loads, cores)


def collect_records(grid: BenchmarkGrid, output: Path) -> GridRun:
    """The runs already in ``output``: every completed repeat found on disk; a point without
    one, or a run whose metrics are missing or invalid, is listed as a failure."""
    result = GridRun([])
    for point in grid.points():
        reps = sorted((output / "points" / point.name).glob("rep*"), key=lambda p: int(p.name[3:]))
        if not reps:
            result.failures.append(f"{point.name}: no run in {output}")
        for path in reps:
            try:
                result.records.append(_read_record(point, int(path.name[3:]), path))
            except MetricsError as err:
                result.failures.append(f"{point.name} ({path.name}): {err}")
    return result


# --- the whole benchmark ------------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    output: Path
    records: list[RunRecord]
    summaries: list[PointSummary]
    files: list[Path]
    failures: list[str] = field(default_factory=list)


def write_summary(grid: BenchmarkGrid, records: Sequence[RunRecord], output: Path,
                  failures: Sequence[str] = ()) -> BenchmarkResult:  # fmt: skip
    """summary.md, summary.csv and the plots in ``output`` (from validated records)."""
    import matplotlib.pyplot as plt

    if not records:
        raise AGCError(f"{output}: no successful run to summarize; failures:\n  " + "\n  ".join(failures))
    summaries = summarize(records)
    text = markdown_summary(grid, summaries, records)
    if failures:
        text += "\n## Failed runs (left out)\n\n" + "\n".join(f"- {f.splitlines()[0]}" for f in failures) + "\n"
    files = [
        write_text_atomic(output / "summary.md", text),
        write_csv(summaries, output / "summary.csv"),
    ]
    for name, plot in zip(PLOTS, (plot_scaling, plot_io_comparison, plot_stage_times), strict=True):
        plt.close(plot(summaries, output / name))
        files.append(output / name)
    log.info("benchmark summary in %s", output)
    return BenchmarkResult(output, list(records), summaries, files, list(failures))


def run_benchmark(grid: BenchmarkGrid, output: Path, repeat: int | None = None, runner: NotebookRunner = _papermill,
                  keep_going: bool = False, resume: bool = False,
                  noisy_retries: int = NOISY_RETRIES) -> BenchmarkResult:  # fmt: skip
    output = Path(output).resolve()  # the notebook runs in notebooks/: relative paths would land there
    output.mkdir(parents=True, exist_ok=True)
    if grid.source.is_file():
        shutil.copyfile(grid.source, output / "grid.yml")
    run = run_grid(grid, output, repeat, runner, keep_going, resume, noisy_retries)
    return write_summary(grid, run.records, output, run.failures)


def default_output(grid: BenchmarkGrid) -> Path:
    from utils.runinfo import timestamp

    return REPO_ROOT / "outputs" / "benchmarks" / f"{timestamp()}-{grid.name}"


def copy_summary(result: BenchmarkResult, target: Path) -> list[Path]:
    """Copy the summary and plots (small files only) to ``target``, e.g. benchmarks/results/<name>."""
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(f, target / f.name)) for f in result.files]
