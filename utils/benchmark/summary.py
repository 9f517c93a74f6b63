"""Benchmark summaries: medians per point, parallel efficiency, ratios to I/O-only, tables."""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.benchmark.grid import EXECUTOR_KEYS, IO_INDEPENDENT_KEYS, BenchmarkGrid, GridPoint, RunRecord, _fmt_value
from utils.config import REPO_ROOT
from utils.errors import AGCError
from utils.io import write_text_atomic
from utils.run.metrics import InputSize, input_size

log = logging.getLogger(__name__)

PLOTS = ("scaling.png", "io_comparison.png", "stages.png")

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
    stages_s: dict[str, float | None]
    notebook_walltime_s: float | None
    input: InputSize | None = None
    parallel_efficiency: float | None = None
    efficiency_reference: str | None = None
    io_ratio_per_core: float | None = None
    io_ratio_wall: float | None = None
    io_reference: str | None = None
    quiet_runs: int = 0  # repeats with the load average at most the core count
    rate_wall_quiet_hz: float | None = None  # median wall rate over the quiet repeats only
    time_to_result_s: dict[str, float | None] = field(default_factory=dict)  # medians of each part
    processor: str = "fused"  # PROCESSOR: fused | reference (the reference-style baseline)
    #: fused processing point: its rates over the reference-style point's on the same files,
    #: executor and workers (and the same grid values otherwise, USE_ML among them)
    reference_ratio_per_core: float | None = None
    reference_ratio_wall: float | None = None
    reference_point: str | None = None

    @property
    def mode(self) -> str:
        if self.io_only:
            return f"I/O-only {self.io_file_percent}%"
        if self.processor == "reference":
            return "processing (reference-style)"
        return "processing" + (" + ML" if self.use_ml else "")

    @property
    def label(self) -> str:
        skip = {*EXECUTOR_KEYS, "NUM_CORES", "DISABLE_PROCESSING", "IO_FILE_PERCENT", "USE_ML", "PROCESSOR"}
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
    quiet = [r.metrics["entries_per_walltime_hz"] for r in records if r.quiet]
    ttr_parts = list(dict.fromkeys(k for m in ms for k in m.get("time_to_result_s", {})))
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
        quiet_runs=len(quiet),
        rate_wall_quiet_hz=_median(quiet),
        time_to_result_s={k: _median(m.get("time_to_result_s", {}).get(k) for m in ms) for k in ttr_parts},
        processor=first.get("processor") or first["parameters"].get("processor") or "fused",
    )


def compare_points(summaries: Sequence[PointSummary]) -> None:
    """Fill parallel efficiency (wall-time rate over the quiet repeats only, against the
    fewest-worker point that differs only in NUM_CORES; none where either point had no quiet
    repeat) and the processing / I/O-only rate ratios (against the I/O-only point that
    differs only in the keys of :data:`IO_INDEPENDENT_KEYS`; 4% preferred), and for each fused
    processing point its rates over the reference-style point's that differs only in
    ``PROCESSOR`` (same files, executor, workers; ``USE_ML`` too: the reference has no ML)."""
    by_scaling: dict[tuple, list[PointSummary]] = {}
    for s in summaries:
        by_scaling.setdefault(s.group_key(["NUM_CORES"]), []).append(s)
    for group in by_scaling.values():
        ref = min(group, key=lambda s: s.workers)
        for s in group:
            if s is not ref and s.workers > ref.workers:
                speedup = _ratio(s.rate_wall_quiet_hz, ref.rate_wall_quiet_hz)
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
    references = {s.group_key(["PROCESSOR"]): s for s in summaries if s.processor == "reference" and not s.io_only}
    for s in summaries:
        baseline = references.get(s.group_key(["PROCESSOR"])) if s.processor == "fused" and not s.io_only else None
        if baseline is not None:
            s.reference_ratio_per_core = _ratio(s.rate_per_core_hz, baseline.rate_per_core_hz)
            s.reference_ratio_wall = _ratio(s.rate_wall_hz, baseline.rate_wall_hz)
            s.reference_point = baseline.point.name


def input_sizes(records: Sequence[RunRecord]) -> dict[tuple[str, int], InputSize]:
    """:class:`InputSize` per (dataset description, files per sample) of the runs."""
    from utils.datasets.fileset import TREE_NAME, build_fileset
    from utils.datasets.resolve import dataset_input_format
    from utils.processing.nanoaod import TREE_NAME as NANOAOD_TREE

    out = {}
    for key in sorted({(r.metrics["dataset_source"], r.metrics["n_files_max_per_sample"]) for r in records}):
        tree = NANOAOD_TREE if dataset_input_format(key[0]) == "nanoaod" else TREE_NAME
        try:
            size = input_size(build_fileset(key[0], key[1], treename=tree))
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
    (
        "fused_over_reference_per_core",
        "fused / reference-style per core",
        lambda s: s.reference_ratio_per_core,
        "{:.1f}",
    ),
    ("fused_over_reference_wall", "fused / reference-style wall", lambda s: s.reference_ratio_wall, "{:.1f}"),
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
    ("time_to_result_s", "time to result [s]", lambda s: s.time_to_result_s.get("total"), "{:.1f}"),
    ("quiet_runs", "quiet runs", lambda s: s.quiet_runs, "{}"),
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
        "over the fewest-worker point of the same series, divided by the worker ratio, from quiet runs only "
        "(1-minute load average before and after the run at most the core count; *quiet runs* counts them, "
        "a busy run is repeated once); *time to result* = kernel start to the metrics (its parts in "
        "stages.png); *I/O-only* ratios compare "
        "with the I/O-only point on the same files and executor; *fused / reference-style* = the rate of a "
        "fused processing point over that of the reference-style point (`PROCESSOR: reference`, "
        "benchmarks/reference_processor.py, written like the AGC notebook's) on the same files, executor and "
        "workers, without ML; *bytes read / event* = bytesread "
        "(includes file headers, read per chunk) / entries; *needed compressed B / event* = sum of "
        "`compressed_bytes` of the branches the processor reads / entries; stage columns are notebook stage "
        "wall times; *notebook* includes kernel start and imports.",
        "",
        *reference_comparison(summaries),
        *(f"![{p}]({p})" for p in PLOTS),
        "",
    ]
    return "\n".join(lines)


def reference_comparison(summaries: Sequence[PointSummary]) -> list[str]:
    """Markdown lines: each fused point beside its reference-style point (none without pairs)."""
    by_name = {s.point.name: s for s in summaries}
    pairs = [(s, by_name[s.reference_point]) for s in summaries if s.reference_point]
    if not pairs:
        return []
    lines = [
        "## Fused against the reference-style processor",
        "",
        "| fused point | reference-style point | executor | workers | fused kHz per core | reference-style kHz per "
        "core | fused / reference-style per core | fused / reference-style wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fused, ref in pairs:
        cells = [fused.point.name, ref.point.name, fused.executor, str(fused.workers),
                 _cell(_khz(fused.rate_per_core_hz), "{:.0f}"), _cell(_khz(ref.rate_per_core_hz), "{:.0f}"),
                 _cell(fused.reference_ratio_per_core, "{:.1f}"), _cell(fused.reference_ratio_wall, "{:.1f}")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
