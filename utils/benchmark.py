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

import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import jsonschema

from utils.config import REPO_ROOT, _format_path, load_schema, read_yaml, validate_against_schema
from utils.errors import AGCError, ConfigError
from utils.io import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from utils.pipeline import RunParameters

log = logging.getLogger(__name__)

RUNNER_DEFAULTS: dict[str, Any] = {"RUN_FIT": False, "RUN_RANKING": False}
SET_BY_RUNNER = ("OUTPUT_DIR",)
# keys that do not change which files are read or how: an I/O-only point is the reference of
# every processing point that agrees with it on all other keys
IO_INDEPENDENT_KEYS = ("DISABLE_PROCESSING", "IO_FILE_PERCENT", "USE_ML", "SYSTEMATICS", "RUN_FIT", "RUN_RANKING")
EXECUTOR_KEYS = ("USE_DASK", "EXECUTOR")
METRICS_FILE = "metrics.json"
RUNNER_FILE = "runner.json"
PLOTS = ("scaling.png", "io_comparison.png", "stages.png")


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
    fileset: dict[str, dict[str, Any]], branches: Sequence[str] | None = None, open_remote: bool = False
) -> InputSize | None:
    """Sum of ``TBranch.compressed_bytes`` of ``branches`` (default: the processor's
    ``READ_BRANCHES``) over the fileset's files, their entries and their size on disk.
    ``None`` for a fileset with remote files unless ``open_remote`` (that opens every file)."""
    import uproot

    from utils.selection import READ_BRANCHES

    branches = tuple(branches if branches is not None else READ_BRANCHES)
    paths = [(p, tree) for entry in fileset.values() for p, tree in entry["files"].items()]
    remote = any("://" in p for p, _ in paths)
    if remote and not open_remote:
        return None
    per_branch = dict.fromkeys(branches, 0)
    entries = 0
    for path, tree_name in paths:
        with uproot.open(path) as f:
            tree = f[tree_name]
            entries += tree.num_entries
            for b in branches:
                if b in tree:
                    per_branch[b] += tree[b].compressed_bytes
    size = None if remote else sum(Path(p).stat().st_size for p, _ in paths)
    return InputSize(len(paths), entries, size, sum(per_branch.values()), per_branch)


def input_size_metrics(fileset: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    """The metrics fields ``dataset_bytes`` and ``needed_branch_bytes`` of a fileset (for
    run_metrics; null for remote files, which are not opened for this)."""
    size = input_size(fileset)
    if size is None:
        return {"dataset_bytes": None, "needed_branch_bytes": None}
    return {"dataset_bytes": size.dataset_bytes, "needed_branch_bytes": size.needed_branch_bytes}


# --- grid ---------------------------------------------------------------------------------------------


def _grid_schema() -> dict[str, Any]:
    schema = load_schema("benchmark_grid")
    values = schema["$defs"]["values"]
    schema["$defs"]["parameters"] = {"type": "object", "additionalProperties": False, "properties": values}
    schema["$defs"]["grid"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: {"type": "array", "minItems": 1, "uniqueItems": True, "items": v} for k, v in values.items()},
    }
    return schema


def grid_parameter_names() -> tuple[str, ...]:
    """The notebook parameters a grid may set."""
    return tuple(load_schema("benchmark_grid")["$defs"]["values"])


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: ``varied`` are its grid values, ``parameters`` what papermill gets."""

    index: int
    varied: dict[str, Any]
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        parts = [f"{k.lower()}={_fmt_value(v)}" for k, v in self.varied.items()] or ["base"]
        return re.sub(r"[^A-Za-z0-9=._-]+", "_", f"{self.index:02d}-" + "-".join(parts))


def _fmt_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) or v is None else str(v)


@dataclass(frozen=True)
class BenchmarkGrid:
    name: str
    source: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    repeat: int = 1
    description: str = ""
    exclude: tuple[dict[str, Any], ...] = ()

    def points(self) -> list[GridPoint]:
        """The cartesian product of the grid's values, less the excluded points, numbered."""
        keys = list(self.grid)
        combos = [dict(zip(keys, c, strict=True)) for c in itertools.product(*(self.grid[k] for k in keys))]
        kept = [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items()) for ex in self.exclude)]
        return [GridPoint(i, c, {**RUNNER_DEFAULTS, **self.base, **c}) for i, c in enumerate(kept)]


def run_parameters(parameters: dict[str, Any]) -> RunParameters:
    """The :class:`~utils.pipeline.RunParameters` of notebook parameters (unset knobs: defaults)."""
    from utils.pipeline import RunParameters

    names = {f.name for f in dataclasses.fields(RunParameters)}
    return RunParameters(**{k.lower(): v for k, v in parameters.items() if k.lower() in names and k != "OUTPUT_DIR"})


def parse_grid(data: Any, source: str | Path = "<grid>") -> BenchmarkGrid:
    """Validate a grid (schema, then semantics); errors name the file and the key."""
    if isinstance(data, dict):
        for section in ("base", "grid"):
            for key in SET_BY_RUNNER:
                if isinstance(data.get(section), dict) and key in data[section]:
                    raise ConfigError(
                        f"{source}: at [{section!r}][{key!r}]: set by the runner (--output), not by the grid"
                    )
    validate_against_schema(data, _grid_schema(), str(source))
    base, grid = dict(data.get("base") or {}), dict(data.get("grid") or {})
    both = sorted(set(base) & set(grid))
    if both:
        raise ConfigError(f"{source}: {both} set in both 'base' and 'grid'; keep each key in one of them")
    exclude = tuple(dict(e) for e in data.get("exclude") or ())
    for i, ex in enumerate(exclude):
        unknown = sorted(set(ex) - set(grid))
        if unknown:
            raise ConfigError(f"{source}: at ['exclude'][{i}]: {unknown} not in 'grid'; exclude matches grid values")
    result = BenchmarkGrid(
        data["name"], Path(source), base, grid, int(data.get("repeat", 1)), data.get("description", ""), exclude
    )
    if not result.points():
        raise ConfigError(f"{source}: 'exclude' leaves no point of the grid")
    for point in result.points():
        try:
            run_parameters(point.parameters)
        except ConfigError as err:
            raise ConfigError(f"{source}: point {point.name}: {err}") from None
    return result


def load_grid(path: str | Path) -> BenchmarkGrid:
    return parse_grid(read_yaml(path), path)


# --- running ------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One execution of one grid point."""

    point: GridPoint
    repeat: int
    path: Path
    metrics: dict[str, Any]
    notebook_walltime_s: float | None = None
    loadavg: tuple[float, ...] = ()  # 1-minute load average of the machine before and after the run


def _rep_dir(output: Path, point: GridPoint, repeat: int) -> Path:
    return output / "points" / point.name / f"rep{repeat}"


def preflight(grid: BenchmarkGrid) -> None:
    """Generate the embedded datasets and load the ML models before any timed run, so that
    neither lands in the first point's figures; fail early if the models are missing."""
    from utils.pipeline import make_classifier, resolve_dataset

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
    from utils.pipeline_cli import execute_notebook

    return execute_notebook(parameters, output_dir, progress=False)


@dataclass
class GridRun:
    """The records of the runs that succeeded and the failures (``point (repeat k): error``)."""

    records: list[RunRecord]
    failures: list[str] = field(default_factory=list)


def _completed(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() and (path / RUNNER_FILE).is_file()


def run_grid(grid: BenchmarkGrid, output: Path, repeat: int | None = None, runner: NotebookRunner = _papermill,
             keep_going: bool = False, resume: bool = False) -> GridRun:  # fmt: skip
    """Execute every point ``repeat`` times (interleaved) into ``output/points/<point>/rep<k>``.

    ``keep_going``: a failed run is logged and recorded, the others go on (default: stop).
    ``resume``: runs that already completed in ``output`` are read back instead of repeated.
    """
    repeat = repeat or grid.repeat
    points = grid.points()
    preflight(grid)
    result = GridRun([])
    for rep in range(repeat):
        for point in points:
            path = _rep_dir(output, point, rep)
            if resume and _completed(path):
                log.info("benchmark %s: point %s, repeat %d/%d done before", grid.name, point.name, rep + 1, repeat)
                result.records.append(_read_record(point, rep, path))
                continue
            log.info("benchmark %s: point %s, repeat %d/%d", grid.name, point.name, rep + 1, repeat)
            for stale in (RUNNER_FILE, METRICS_FILE):  # of an earlier run into the same folder
                (path / stale).unlink(missing_ok=True)
            load_before = os.getloadavg()[0]
            t0 = time.monotonic()
            try:
                runner(point.parameters, path)
                elapsed = time.monotonic() - t0
                write_json_atomic(path / RUNNER_FILE, {"point": point.name, "varied": point.varied,
                                                       "parameters": point.parameters, "repeat": rep,
                                                       "notebook_walltime_s": elapsed,
                                                       "loadavg_1min_before": load_before,
                                                       "loadavg_1min_after": os.getloadavg()[0]})  # fmt: skip
                result.records.append(_read_record(point, rep, path))
            except AGCError as err:
                message = f"{point.name} (repeat {rep}): {err}"
                if not keep_going:
                    raise AGCError(f"benchmark point {message}") from None
                log.error("benchmark point %s", message)
                result.failures.append(message)
    return result


def _read_record(point: GridPoint, rep: int, path: Path) -> RunRecord:
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        raise MetricsError(f"{metrics_path}: the notebook wrote no metrics")
    metrics = json.loads(metrics_path.read_text())
    validate_metrics(metrics, str(metrics_path))
    runner_path = path / RUNNER_FILE
    info = json.loads(runner_path.read_text()) if runner_path.is_file() else {}
    loads = tuple(info[k] for k in ("loadavg_1min_before", "loadavg_1min_after") if k in info)
    return RunRecord(point, rep, path, metrics, info.get("notebook_walltime_s"), loads)


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


# --- summary ------------------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class PointSummary:
    """Medians over the repeats of one grid point, and its comparisons with other points."""

    point: GridPoint
    runs: int
    executor: str
    workers: int
    io_only: bool
    io_file_percent: int
    use_ml: bool
    entries: int
    walltime_s: float | None
    processtime_s: float | None
    rate_per_core_hz: float | None  # entries / processtime
    rate_wall_hz: float | None  # entries / walltime (processing stage)
    rate_wall_spread: float | None  # (max - min) / median over repeats
    peak_memory_per_worker_mb: float | None
    bytes_read_per_event: float | None
    columns: int
    stages_s: dict[str, float]
    notebook_walltime_s: float | None
    input: InputSize | None = None
    parallel_efficiency: float | None = None
    efficiency_reference: str | None = None
    io_ratio_per_core: float | None = None
    io_ratio_wall: float | None = None
    io_reference: str | None = None

    @property
    def mode(self) -> str:
        return f"I/O-only {self.io_file_percent}%" if self.io_only else "processing" + (" + ML" if self.use_ml else "")

    @property
    def label(self) -> str:
        skip = {*EXECUTOR_KEYS, "NUM_CORES", "DISABLE_PROCESSING", "IO_FILE_PERCENT", "USE_ML"}
        extra = [f"{k.lower()}={_fmt_value(v)}" for k, v in self.point.varied.items() if k not in skip]
        return " ".join([self.executor, f"{self.workers}w", self.mode, *extra])

    def group_key(self, drop: Sequence[str]) -> tuple:
        """The point's grid values without ``drop`` (the executor is compared by its effective name)."""
        kept = tuple((k, v) for k, v in self.point.varied.items() if k not in drop and k not in EXECUTOR_KEYS)
        return (self.executor, *kept)


def summarize_point(
    records: Sequence[RunRecord], sizes: dict[tuple[str, int], InputSize] | None = None
) -> PointSummary:
    """Medians over the repeats of one point (all records must share the point)."""
    point = records[0].point
    ms = [r.metrics for r in records]
    first = ms[0]
    wall_rates = [m["entries_per_walltime_hz"] for m in ms]
    med_wall = _median(wall_rates)
    finite = [r for r in wall_rates if r is not None and not math.isnan(r)]
    stage_names = sorted({s for m in ms for s in m["stage_walltime_s"]})
    entries = int(_median(m["entries"] for m in ms) or 0)
    bytes_read = _median(m["bytesread"] for m in ms)
    key = (first["dataset_source"], first["n_files_max_per_sample"])
    return PointSummary(
        point=point,
        runs=len(records),
        executor="dask" if first["use_dask"] else first["parameters"]["executor"],
        workers=int(first["num_workers"]),
        io_only=bool(first["disable_processing"]),
        io_file_percent=int(first["io_file_percent"]),
        use_ml=bool(first["parameters"]["use_ml"]),
        entries=entries,
        walltime_s=_median(m["walltime"] for m in ms),
        processtime_s=_median(m["processtime"] for m in ms),
        rate_per_core_hz=_median(m["entries_per_processtime_hz"] for m in ms),
        rate_wall_hz=med_wall,
        rate_wall_spread=(max(finite) - min(finite)) / med_wall if len(finite) > 1 and med_wall else None,
        peak_memory_per_worker_mb=_median(m.get("peak_memory_per_worker_mb") for m in ms),
        bytes_read_per_event=bytes_read / entries if bytes_read is not None and entries else None,
        columns=len(first["columns"]),
        stages_s={s: _median(m["stage_walltime_s"].get(s) for m in ms) for s in stage_names},
        notebook_walltime_s=_median(r.notebook_walltime_s for r in records),
        input=(sizes or {}).get(key),
    )


def compare_points(summaries: Sequence[PointSummary]) -> None:
    """Fill parallel efficiency (wall-time rate against the fewest-worker point that differs only
    in NUM_CORES) and the processing / I/O-only rate ratios (against the I/O-only point that
    differs only in the keys of :data:`IO_INDEPENDENT_KEYS`; 4% preferred)."""
    by_scaling: dict[tuple, list[PointSummary]] = {}
    for s in summaries:
        by_scaling.setdefault(s.group_key(["NUM_CORES"]), []).append(s)
    for group in by_scaling.values():
        ref = min(group, key=lambda s: s.workers)
        for s in group:
            if s is not ref and s.workers > ref.workers:
                speedup = _ratio(s.rate_wall_hz, ref.rate_wall_hz)
                s.parallel_efficiency = speedup / (s.workers / ref.workers) if speedup is not None else None
                s.efficiency_reference = ref.point.name
    io_points: dict[tuple, list[PointSummary]] = {}
    for s in summaries:
        if s.io_only:
            io_points.setdefault(s.group_key(IO_INDEPENDENT_KEYS), []).append(s)
    for s in summaries:
        candidates = io_points.get(s.group_key(IO_INDEPENDENT_KEYS)) if not s.io_only else None
        if candidates:
            ref = min(candidates, key=lambda c: (c.io_file_percent != 4, c.io_file_percent))
            s.io_ratio_per_core = _ratio(s.rate_per_core_hz, ref.rate_per_core_hz)
            s.io_ratio_wall = _ratio(s.rate_wall_hz, ref.rate_wall_hz)
            s.io_reference = ref.point.name


def input_sizes(records: Sequence[RunRecord]) -> dict[tuple[str, int], InputSize]:
    """:class:`InputSize` per (dataset description, files per sample) of the runs."""
    from utils.fileset import build_fileset

    out = {}
    for key in sorted({(r.metrics["dataset_source"], r.metrics["n_files_max_per_sample"]) for r in records}):
        try:
            size = input_size(build_fileset(key[0], key[1]))
        except (OSError, AGCError, ValueError) as err:
            log.warning("input size of %s not computed: %s", key[0], err)
            continue
        if size is not None:
            out[key] = size
    return out


def summarize(records: Sequence[RunRecord]) -> list[PointSummary]:
    sizes = input_sizes(records)
    by_point: dict[str, list[RunRecord]] = {}
    for r in records:
        by_point.setdefault(r.point.name, []).append(r)
    summaries = [summarize_point(rs, sizes) for rs in by_point.values()]
    summaries.sort(key=lambda s: s.point.index)
    compare_points(summaries)
    return summaries


# --- table --------------------------------------------------------------------------------------------

# (CSV name, Markdown header, value, Markdown format)
_COLUMNS: tuple[tuple[str, str, Callable[[PointSummary], Any], str], ...] = (
    ("point", "point", lambda s: s.point.name, "{}"),
    ("executor", "executor", lambda s: s.executor, "{}"),
    ("workers", "workers", lambda s: s.workers, "{}"),
    ("mode", "mode", lambda s: s.mode, "{}"),
    ("runs", "runs", lambda s: s.runs, "{}"),
    ("entries", "entries", lambda s: s.entries, "{:,}"),
    ("walltime_s", "processing wall [s]", lambda s: s.walltime_s, "{:.2f}"),
    ("processtime_s", "processtime [s]", lambda s: s.processtime_s, "{:.2f}"),
    ("khz_per_core", "kHz per core (entries/processtime)", lambda s: _khz(s.rate_per_core_hz), "{:.0f}"),
    ("khz_wall", "kHz wall (entries/walltime)", lambda s: _khz(s.rate_wall_hz), "{:.0f}"),
    ("wall_rate_spread", "spread", lambda s: s.rate_wall_spread, "{:.0%}"),
    ("parallel_efficiency", "parallel eff.", lambda s: s.parallel_efficiency, "{:.2f}"),
    ("over_io_per_core", "/ I/O-only per core", lambda s: s.io_ratio_per_core, "{:.2f}"),
    ("over_io_wall", "/ I/O-only wall", lambda s: s.io_ratio_wall, "{:.2f}"),
    ("peak_mb_per_worker", "peak MB / worker", lambda s: s.peak_memory_per_worker_mb, "{:.0f}"),
    ("bytes_read_per_event", "bytes read / event", lambda s: s.bytes_read_per_event, "{:.1f}"),
    (
        "needed_bytes_per_event",
        "needed compressed B / event",
        lambda s: s.input.needed_bytes_per_event if s.input else None,
        "{:.1f}",
    ),
    ("columns", "columns", lambda s: s.columns, "{}"),
    ("notebook_s", "notebook [s]", lambda s: s.notebook_walltime_s, "{:.1f}"),
)


def _khz(hz: float | None) -> float | None:
    return hz / 1e3 if hz is not None else None


def _stage_names(summaries: Sequence[PointSummary]) -> list[str]:
    return sorted({k for s in summaries for k in s.stages_s})


def summary_rows(summaries: Sequence[PointSummary]) -> list[dict[str, Any]]:
    """One flat dict per point (the CSV rows)."""
    stages = _stage_names(summaries)
    rows = []
    for s in summaries:
        row = {name: get(s) for name, _, get, _ in _COLUMNS}
        row.update({f"stage_{st}_s": s.stages_s.get(st) for st in stages})
        row.update({f"grid_{k}": v for k, v in s.point.varied.items()})
        rows.append(row)
    return rows


def write_csv(summaries: Sequence[PointSummary], path: Path) -> Path:
    rows = summary_rows(summaries)
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
    return write_text_atomic(path, buf.getvalue())


def markdown_table(summaries: Sequence[PointSummary]) -> str:
    stages = _stage_names(summaries)
    header = [h for _, h, _, _ in _COLUMNS] + [f"{st} [s]" for st in stages]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [_cell(get(s), fmt) for _, _, get, fmt in _COLUMNS]
        cells += [_cell(s.stages_s.get(st), "{:.2f}") for st in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def markdown_summary(grid: BenchmarkGrid, summaries: Sequence[PointSummary], records: Sequence[RunRecord]) -> str:
    m = records[0].metrics
    mach = m["machine"]
    pk = m["packages"]
    lines = [
        f"# Benchmark `{grid.name}`",
        "",
        grid.description.strip(),
        "",
        f"- grid: `{_display_path(grid.source)}`; {len(summaries)} points, medians over "
        f"{max(s.runs for s in summaries)} repeat(s) (interleaved)",
        f"- machine: {mach['cpu_model']}, {mach['cores']} cores, {mach['platform']}, Python {mach['python']}",
        f"- git {m['git_commit']}; coffea {pk.get('coffea')}, uproot {pk.get('uproot')}, awkward {pk.get('awkward')}, "
        f"numba {pk.get('numba')}, dask {pk.get('dask')}",
        f"- date: {time.strftime('%Y-%m-%d', time.localtime(min(r.path.stat().st_mtime for r in records)))}",
    ]
    loads = [x for r in records for x in r.loadavg]
    if loads:
        lines.append(
            f"- machine load (1-min load average around the runs, {mach['cores']} cores): median "
            f"{statistics.median(loads):.1f}, range {min(loads):.1f}-{max(loads):.1f}"
        )
    for size in {id(s.input): s.input for s in summaries if s.input}.values():
        mb = f"{size.dataset_bytes / 1e6:,.0f} MB" if size.dataset_bytes is not None else "remote"
        lines.append(
            f"- input: {size.n_files} files, {size.entries:,} events, {mb} on disk; the analysis branches "
            f"(compressed) {size.needed_branch_bytes / 1e6:,.1f} MB = {size.needed_bytes_per_event:.1f} B/event"
        )
    lines += [
        "",
        markdown_table(summaries),
        "",
        "Definitions: *kHz per core* = entries / processtime (processor time summed over chunks, excludes "
        "opening files and building events); *kHz wall* = entries / wall time of the processing stage; "
        "*spread* = (max - min) / median of the wall rate over repeats; *parallel eff.* = wall-rate speed-up "
        "over the fewest-worker point of the same series, divided by the worker ratio; *I/O-only* ratios compare "
        "with the I/O-only point on the same files and executor; *bytes read / event* = bytesread "
        "(includes file headers, read per chunk) / entries; *needed compressed B / event* = sum of "
        "`compressed_bytes` of the branches the processor reads / entries; stage columns are notebook stage "
        "wall times; *notebook* includes kernel start and imports.",
        "",
        *(f"![{p}]({p})" for p in PLOTS),
        "",
    ]
    return "\n".join(lines)


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# --- plots --------------------------------------------------------------------------------------------


def _save(fig, path: str | Path | None):
    """Write a figure (PNG at a modest resolution: summaries are committed) and return it."""
    if path is not None:
        from utils.io import atomic_path

        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=72)
    return fig


def _series(summaries: Sequence[PointSummary]) -> dict[str, list[PointSummary]]:
    out: dict[str, list[PointSummary]] = {}
    for s in summaries:
        label = " ".join(s.label.split(" ")[:1] + s.label.split(" ")[2:])  # without the worker count
        out.setdefault(label, []).append(s)
    return {k: sorted(v, key=lambda s: s.workers) for k, v in out.items()}


def plot_scaling(summaries: Sequence[PointSummary], path: str | Path | None = None):
    """Aggregate wall-time rate and per-core rate versus workers, per series, with the ideal
    (linear from the fewest-worker point) as a dashed line."""
    import matplotlib.pyplot as plt

    from utils.plotting import set_style

    set_style()
    fig, (ax_wall, ax_core) = plt.subplots(1, 2, figsize=(14, 7.5))
    for i, (label, pts) in enumerate(_series(summaries).items()):
        color = f"C{i % 10}"
        xs = [s.workers for s in pts]
        wall = [_khz(s.rate_wall_hz) for s in pts]
        ax_wall.plot(xs, wall, "o-", color=color, label=label)
        if wall[0] is not None:
            ax_wall.plot(xs, [wall[0] * x / xs[0] for x in xs], "--", color=color, alpha=0.6)
        ax_core.plot(xs, [_khz(s.rate_per_core_hz) for s in pts], "o-", color=color, label=label)
    ax_wall.plot([], [], "k--", alpha=0.6, label="ideal (linear)")
    workers = sorted({s.workers for s in summaries})
    for ax, ylabel in ((ax_wall, "entries / walltime [kHz]"), (ax_core, "entries / processtime [kHz per core]")):
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel, fontsize="small")
        ax.set_xticks(workers)
        ax.set_ylim(bottom=0)
    handles, labels = ax_wall.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 4), fontsize="x-small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
    return _save(fig, path)


def plot_io_comparison(summaries: Sequence[PointSummary], path: str | Path | None = None):
    """Rates of each processing point beside its I/O-only reference on the same files (per core
    and in wall time), the ratio written on the processing bar."""
    import matplotlib.pyplot as plt
    import numpy as np

    from utils.plotting import set_style

    set_style()
    by_name = {s.point.name: s for s in summaries}
    pairs = [(s, by_name[s.io_reference]) for s in summaries if s.io_reference]
    fig, axes = plt.subplots(1, 2, figsize=(max(12, 2.4 * len(pairs) + 6), 6.5))
    if not pairs:
        for ax in axes:
            ax.text(0.5, 0.5, "no I/O-only reference in this grid", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, path)
    x = np.arange(len(pairs))
    panels = (
        (axes[0], "rate_per_core_hz", "io_ratio_per_core", "entries / processtime [kHz per core]"),
        (axes[1], "rate_wall_hz", "io_ratio_wall", "entries / walltime [kHz]"),
    )
    for ax, rate, ratio, ylabel in panels:
        proc = [_khz(getattr(p, rate)) or 0.0 for p, _ in pairs]
        ref = [_khz(getattr(r, rate)) or 0.0 for _, r in pairs]
        ax.bar(x - 0.2, proc, 0.4, label="processing")
        ax.bar(x + 0.2, ref, 0.4, label="I/O-only, same files")
        for xi, (p, _), h in zip(x, pairs, proc, strict=True):
            if getattr(p, ratio) is not None:
                ax.annotate(f"{getattr(p, ratio):.2f}", (xi - 0.2, h), ha="center", va="bottom", fontsize="x-small")
        ax.set_xticks(
            x,
            [f"{p.executor} {p.workers}w\n{p.mode.replace(' + ', chr(10) + '+ ')}" for p, _ in pairs],
            fontsize="xx-small",
        )
        ax.set_ylabel(ylabel, fontsize="small")
        ax.legend(fontsize="xx-small")
    fig.tight_layout()
    return _save(fig, path)


def plot_stage_times(summaries: Sequence[PointSummary], path: str | Path | None = None):
    """Median wall time per notebook stage, stacked per point (the rest of the notebook's wall
    time, kernel start and imports, as 'other')."""
    import matplotlib.pyplot as plt

    from utils.plotting import set_style

    set_style()
    stages = _stage_names(summaries)
    fig, ax = plt.subplots(figsize=(12, max(5, 0.6 * len(summaries) + 3)))
    y = list(range(len(summaries)))
    left = [0.0] * len(summaries)
    for i, stage in enumerate([*stages, "other"]):
        if stage == "other":
            widths = [max((s.notebook_walltime_s or 0.0) - sum(v or 0.0 for v in s.stages_s.values()), 0.0)
                      for s in summaries]  # fmt: skip
        else:
            widths = [s.stages_s.get(stage) or 0.0 for s in summaries]
        ax.barh(y, widths, left=left, label=stage, color="lightgrey" if stage == "other" else f"C{i % 10}")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(y, [s.label for s in summaries], fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("wall time [s] (median)")
    ax.legend(fontsize="x-small", ncols=min(len(stages) + 1, 5), loc="lower left", bbox_to_anchor=(0.0, 1.01))
    fig.tight_layout()
    return _save(fig, path)


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
                  keep_going: bool = False, resume: bool = False) -> BenchmarkResult:  # fmt: skip
    output = Path(output).resolve()  # the notebook runs in notebooks/: relative paths would land there
    output.mkdir(parents=True, exist_ok=True)
    if grid.source.is_file():
        shutil.copyfile(grid.source, output / "grid.yml")
    run = run_grid(grid, output, repeat, runner, keep_going, resume)
    return write_summary(grid, run.records, output, run.failures)


def default_output(grid: BenchmarkGrid) -> Path:
    from utils.metrics import timestamp

    return REPO_ROOT / "outputs" / "benchmarks" / f"{timestamp()}-{grid.name}"


def publish(result: BenchmarkResult, target: Path) -> list[Path]:
    """Copy the summary and plots (small files only) to ``target``, e.g. benchmarks/results/<name>."""
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(f, target / f.name)) for f in result.files]


@click.command()
@click.argument("grid_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: outputs/benchmarks/<timestamp>-<grid name>).",
)
@click.option("--repeat", type=click.IntRange(min=1), default=None, help="Repeats per point (default: the grid's).")
@click.option(
    "--summary-to",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also copy summary.md, summary.csv and plots here (e.g. benchmarks/results/<name>).",
)
@click.option("--dry-run", is_flag=True, help="List the points and exit.")
@click.option("--summarize-only", is_flag=True, help="Run nothing; summarize the runs already in --output.")
@click.option("--keep-going", is_flag=True, help="Go on after a failed run; failures are listed in the summary.")
@click.option("--resume", is_flag=True, help="Keep the runs already completed in --output; run only the others.")
def benchmark(grid_file: Path, output: Path | None, repeat: int | None, summary_to: Path | None,
              dry_run: bool, summarize_only: bool, keep_going: bool, resume: bool) -> None:  # fmt: skip
    """Run the main notebook over the parameter grid GRID_FILE and summarize the metrics."""
    grid = load_grid(grid_file)
    points = grid.points()
    if dry_run:
        for p in points:
            click.echo(f"{p.name}: {json.dumps(p.parameters)}")
        click.echo(f"{len(points)} points x {repeat or grid.repeat} repeat(s)")
        return
    if summarize_only:
        if output is None:
            raise click.UsageError("--summarize-only needs --output (the folder of an earlier run)")
        run = collect_records(grid, output)
        result = write_summary(grid, run.records, output, run.failures)
    else:
        output = output if output is not None else default_output(grid)
        click.echo(f"benchmark {grid.name}: {len(points)} points x {repeat or grid.repeat} repeat(s) into {output}")
        result = run_benchmark(grid, output, repeat, keep_going=keep_going, resume=resume)
    click.echo(markdown_table(result.summaries))
    if summary_to is not None:
        for f in publish(result, summary_to):
            click.echo(f"  {f}")
    click.echo(f"summary: {output / 'summary.md'}")
    if result.failures:
        raise AGCError(f"{len(result.failures)} run(s) failed:\n  " + "\n  ".join(result.failures))


__all__ = [
    "BenchmarkGrid", "BenchmarkResult", "GridPoint", "InputSize", "MetricsError", "PointSummary", "RunRecord",
    "benchmark", "collect_records", "input_size", "input_size_metrics", "load_grid", "parse_grid", "run_benchmark",
    "validate_metrics", "write_summary",
]  # fmt: skip
