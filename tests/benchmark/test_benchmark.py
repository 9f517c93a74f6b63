"""The benchmark runner (grid files, metrics schema, summary) and the committed grids."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from utils.benchmark.grid import grid_parameter_names, load_grid
from utils.benchmark.runner import GridPoint, MetricsError, RunRecord, summarize, validate_metrics
from utils.benchmark.summary import markdown_summary, summary_rows
from utils.config import REPO_ROOT
from utils.errors import ConfigError

BENCHMARKS = REPO_ROOT / "benchmarks"
GRIDS = sorted(BENCHMARKS.glob("*.yml"))


# --- grid files ------------------------------------------------------------------------------------


def _write_grid(tmp_path: Path, data) -> Path:
    path = tmp_path / "grid.yml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_committed_grids_load(path):
    grid = load_grid(path)
    assert grid.name == path.stem
    points = grid.points()
    assert len({p.name for p in points}) == len(points) >= 1
    for p in points:
        assert p.parameters["RUN_FIT"] is False or "RUN_FIT" in {**grid.base, **grid.grid}


def test_tiny_grid_is_two_points_processing_and_io_only():
    points = load_grid(BENCHMARKS / "tiny.yml").points()
    assert [p.varied for p in points] == [{"DISABLE_PROCESSING": False}, {"DISABLE_PROCESSING": True}]
    assert all(p.parameters["DATASET"] == "embedded:tiny" for p in points)


def test_grid_is_cartesian_product_with_runner_defaults(tmp_path):
    grid = load_grid(_write_grid(tmp_path, {
        "name": "g", "base": {"DATASET": "embedded:tiny"},
        "grid": {"NUM_CORES": [1, 2], "USE_DASK": [False, True], "USE_ML": [False]},
    }))  # fmt: skip
    points = grid.points()
    assert len(points) == 4
    assert {(p.varied["NUM_CORES"], p.varied["USE_DASK"]) for p in points} == {
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    }
    assert points[0].parameters == {"RUN_FIT": False, "RUN_RANKING": False, "DATASET": "embedded:tiny",
                                    "NUM_CORES": 1, "USE_DASK": False, "USE_ML": False}  # fmt: skip
    assert points[3].name == "03-num_cores=2-use_dask=true-use_ml=false"


def test_grid_exclude_drops_matching_points(tmp_path):
    grid = load_grid(_write_grid(tmp_path, {
        "name": "g", "grid": {"DISABLE_PROCESSING": [False, True], "USE_ML": [False, True]},
        "exclude": [{"DISABLE_PROCESSING": True, "USE_ML": True}],
    }))  # fmt: skip
    assert [p.varied for p in grid.points()] == [
        {"DISABLE_PROCESSING": False, "USE_ML": False},
        {"DISABLE_PROCESSING": False, "USE_ML": True},
        {"DISABLE_PROCESSING": True, "USE_ML": False},
    ]
    assert [p.index for p in grid.points()] == [0, 1, 2]


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"name": "g", "grid": {"NUM_CORE": [1, 2]}}, ["'NUM_CORE' was unexpected", "['grid']"]),
        ({"name": "g", "base": {"CHUNKSIZE": "big"}}, ["['base']['CHUNKSIZE']", "not of type 'integer'"]),
        ({"name": "g", "grid": {"NUM_CORES": ["two"]}}, ["['grid']['NUM_CORES'][0]", "'two'"]),
        ({"name": "g", "grid": {"NUM_CORES": 2}}, ["['grid']['NUM_CORES']", "not of type 'array'"]),
        ({"name": "g", "grid": {"EXECUTOR": []}}, ["['grid']['EXECUTOR']", "should be non-empty"]),
        ({"name": "g", "grid": {"IO_FILE_PERCENT": [4, 7]}}, ["['grid']['IO_FILE_PERCENT'][1]", "7"]),
        ({"grid": {"NUM_CORES": [1]}}, ["'name' is a required property"]),
        ({"name": "g", "repaet": 3}, ["'repaet' was unexpected"]),
        ({"name": "g", "base": {"OUTPUT_DIR": "x"}}, ["['base']['OUTPUT_DIR']", "set by the runner"]),
        ({"name": "g", "base": {"NUM_CORES": 1}, "grid": {"NUM_CORES": [1, 2]}}, ["['NUM_CORES']", "both"]),
        ({"name": "g", "base": {"N_FILES_MAX_PER_SAMPLE": 0}}, ["['base']['N_FILES_MAX_PER_SAMPLE']"]),
        ({"name": "g", "grid": {"USE_ML": [True]}, "exclude": [{"USE_DASK": True}]}, ["['exclude'][0]", "USE_DASK"]),
        ({"name": "g", "grid": {"USE_ML": [True]}, "exclude": [{"USE_ML": True}]}, ["leaves no point"]),
    ],
    ids=lambda v: None if isinstance(v, dict) else v[0][:30],
)
def test_malformed_grid_fails_naming_the_key(tmp_path, data, names):
    path = _write_grid(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    message = str(err.value)
    assert str(path) in message
    for name in names:
        assert name in message, message


def test_grid_that_is_not_a_mapping_fails(tmp_path):
    with pytest.raises(ConfigError, match="not of type 'object'"):
        load_grid(_write_grid(tmp_path, "- NUM_CORES\n- 2\n"))


def test_grid_parameters_are_the_notebook_parameters():
    """The grid schema knows every knob of the notebook's parameters cell, and nothing else."""
    import papermill

    from utils.cli.run import MAIN_NOTEBOOK

    notebook = set(papermill.inspect_notebook(str(MAIN_NOTEBOOK))) - {"OUTPUT_DIR"}
    assert set(grid_parameter_names()) == notebook


# --- metrics schema ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_metrics(poet_file, config):
    """The metrics dict run_metrics builds for a real processing run (1000 real POET events)."""
    from utils.processing.run import process_fileset
    from utils.run.metrics import run_metrics
    from utils.run.parameters import RunParameters

    fileset = {"ttbar__nominal": {"files": {str(poet_file): "events"},
                                  "metadata": {"process": "ttbar", "variation": "nominal", "nevts": 1000, "xsec": 729.84}}}  # fmt: skip
    params = RunParameters(executor="iterative", chunksize=500)
    result = process_fileset(fileset, params.processing_options(), config)
    metrics = run_metrics(params, result, {"dataset": 0.1, "processing": 1.0}, poet_file, fileset)
    return json.loads(json.dumps(metrics))  # as it is read back from metrics.json


def test_run_metrics_validate_against_schema(real_metrics):
    validate_metrics(real_metrics)
    assert real_metrics["entries"] == 1000 and real_metrics["chunks"] == 2


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.pop("walltime"), "'walltime' is a required property"),
        (lambda m: m.update(entries="1000"), "['entries']"),
        (lambda m: m.update(pipeline="spark"), "['pipeline']"),
        (lambda m: m.update(io_file_percent=7), "['io_file_percent']"),
        (lambda m: m["stage_walltime_s"].update(procesing=1.0), "['stage_walltime_s']"),
        (lambda m: m.update(bytes_read=5), "'bytes_read' was unexpected"),
        (lambda m: m["machine"].pop("cores"), "['machine']"),
    ],
    ids=["missing", "type", "enum", "io-percent", "stage-typo", "unknown-field", "nested"],
)
def test_invalid_metrics_fail_naming_the_field(real_metrics, edit, field):
    bad = copy.deepcopy(real_metrics)
    edit(bad)
    with pytest.raises(MetricsError) as err:
        validate_metrics(bad, "run/metrics.json")
    assert "run/metrics.json" in str(err.value) and field in str(err.value), str(err.value)


def test_input_size_sums_compressed_bytes_of_the_analysis_branches(tiny_dataset):
    import uproot

    from utils.datasets.fileset import build_fileset
    from utils.processing.selection import READ_BRANCHES
    from utils.run.metrics import input_size, input_size_metrics

    fileset = build_fileset(tiny_dataset, 1)
    size = input_size(fileset)
    paths = [p for e in fileset.values() for p in e["files"]]
    expected = 0
    for path in paths:
        with uproot.open(path) as f:
            expected += sum(f["events"][b].compressed_bytes for b in READ_BRANCHES)
    assert size.n_files == len(paths) and size.needed_branch_bytes == expected
    assert set(size.branch_bytes) == set(READ_BRANCHES) and all(v > 0 for v in size.branch_bytes.values())
    assert size.needed_branch_bytes < size.dataset_bytes / 5  # the analysis reads a few per cent of a file
    assert 0 < size.needed_bytes_per_event < 1000
    assert input_size_metrics(fileset) == {"dataset_bytes": size.dataset_bytes, "needed_branch_bytes": expected}
    remote = {"s": {"files": {"root://eos.example//f.root": "events"}, "metadata": {}}}
    assert input_size(remote) is None
    assert input_size_metrics(remote) == {"dataset_bytes": None, "needed_branch_bytes": None}


def test_input_size_of_nanoaod_counts_the_nanoaod_branches(tiny_nanoaod, real_metrics):
    """NanoAOD files (``Events`` trees): the branches the NanoAOD selection reads, in the run's
    metrics and in a benchmark summary's input sizes alike."""
    import uproot

    from utils.benchmark.summary import input_sizes
    from utils.datasets.fileset import build_fileset
    from utils.processing.nanoaod import READ_BRANCHES, TREE_NAME
    from utils.run.metrics import input_size

    fileset = build_fileset(tiny_nanoaod, 1, treename=TREE_NAME)
    size = input_size(fileset)
    paths = [p for e in fileset.values() for p in e["files"]]
    expected = 0
    for path in paths:
        with uproot.open(path) as f:
            expected += sum(f[TREE_NAME][b].compressed_bytes for b in READ_BRANCHES)
    assert set(size.branch_bytes) == set(READ_BRANCHES) and size.needed_branch_bytes == expected > 0
    assert size.needed_branch_bytes < size.dataset_bytes / 10  # the filler branches hold the rest
    metrics = {**real_metrics, "dataset_source": str(tiny_nanoaod), "n_files_max_per_sample": 1}
    record = RunRecord(GridPoint(0, {}, {}), 0, Path(), metrics)
    assert input_sizes([record])[(str(tiny_nanoaod), 1)] == size


# --- summary arithmetic (an oracle on hand-made metrics) ---------------------------------------------


def _record(template, index, varied, *, workers, io_only, wall_hz, core_hz, repeat=0, load=0.5):
    m = copy.deepcopy(template)
    m.update(num_workers=workers, disable_processing=io_only, entries_per_walltime_hz=wall_hz,
             entries_per_processtime_hz=core_hz, entries=1_000_000, use_dask=False)  # fmt: skip
    m["parameters"].update(executor="futures", use_ml=False)
    m["stage_walltime_s"] = {"dataset": 0.5, "processing": 1e6 / wall_hz}
    point = GridPoint(index, varied, dict(varied))
    return RunRecord(point, repeat, Path(), m, 10.0, (load, load), 2)


def test_summary_parallel_efficiency_and_io_ratio(real_metrics):
    t = real_metrics
    records = [
        _record(t, 0, {"NUM_CORES": 1, "DISABLE_PROCESSING": False}, workers=1, io_only=False, wall_hz=100e3, core_hz=110e3),
        _record(t, 0, {"NUM_CORES": 1, "DISABLE_PROCESSING": False}, workers=1, io_only=False, wall_hz=80e3, core_hz=90e3, repeat=1),
        _record(t, 0, {"NUM_CORES": 1, "DISABLE_PROCESSING": False}, workers=1, io_only=False, wall_hz=90e3, core_hz=100e3, repeat=2),
        _record(t, 1, {"NUM_CORES": 1, "DISABLE_PROCESSING": True}, workers=1, io_only=True, wall_hz=300e3, core_hz=400e3),
        _record(t, 2, {"NUM_CORES": 2, "DISABLE_PROCESSING": False}, workers=2, io_only=False, wall_hz=162e3, core_hz=95e3),
        _record(t, 3, {"NUM_CORES": 2, "DISABLE_PROCESSING": True}, workers=2, io_only=True, wall_hz=500e3, core_hz=380e3),
    ]  # fmt: skip
    s = summarize(records)
    assert [x.point.index for x in s] == [0, 1, 2, 3]
    assert s[0].runs == 3 and s[0].rate_wall_hz == 90e3 and s[0].rate_per_core_hz == 100e3  # medians
    assert s[0].rate_wall_spread == pytest.approx(20e3 / 90e3)
    assert s[2].parallel_efficiency == pytest.approx(162 / 90 / 2)  # 0.9
    assert s[3].parallel_efficiency == pytest.approx(500 / 300 / 2)
    assert s[0].parallel_efficiency is None and s[1].parallel_efficiency is None
    assert s[0].io_ratio_per_core == pytest.approx(100 / 400) and s[0].io_reference == s[1].point.name
    assert s[2].io_ratio_per_core == pytest.approx(95 / 380) and s[2].io_ratio_wall == pytest.approx(162 / 500)
    assert s[1].io_ratio_per_core is None


def test_parallel_efficiency_comes_from_quiet_runs_only(real_metrics):
    t = real_metrics
    one = {"NUM_CORES": 1, "DISABLE_PROCESSING": False}
    two = {"NUM_CORES": 2, "DISABLE_PROCESSING": False}
    records = [
        _record(t, 0, one, workers=1, io_only=False, wall_hz=100e3, core_hz=100e3),
        _record(t, 0, one, workers=1, io_only=False, wall_hz=50e3, core_hz=60e3, repeat=1, load=7.5),
        _record(t, 1, two, workers=2, io_only=False, wall_hz=180e3, core_hz=95e3),
        _record(t, 1, two, workers=2, io_only=False, wall_hz=60e3, core_hz=40e3, repeat=1, load=2.5),
    ]
    s = summarize(records)
    assert s[0].quiet_runs == 1 and s[0].rate_wall_quiet_hz == 100e3 and s[0].rate_wall_hz == 75e3
    assert s[1].parallel_efficiency == pytest.approx(180 / 100 / 2)
    busy = summarize([r for r in records if r.repeat == 1])
    assert busy[1].parallel_efficiency is None  # no quiet run: no efficiency claimed


def test_fused_over_reference_style_on_the_same_files_executor_and_workers(real_metrics):
    t = real_metrics

    def point(index, workers, processor, use_ml=False, io_only=False, core_hz=1e5, wall_hz=1e5):
        varied = {"NUM_CORES": workers, "DISABLE_PROCESSING": io_only, "USE_ML": use_ml, "PROCESSOR": processor}
        r = _record(t, index, varied, workers=workers, io_only=io_only, wall_hz=wall_hz, core_hz=core_hz)
        r.metrics["processor"] = processor
        r.metrics["parameters"].update(use_ml=use_ml, processor=processor)
        return r

    records = [
        point(0, 1, "fused", core_hz=600e3, wall_hz=400e3),
        point(1, 1, "reference", core_hz=75e3, wall_hz=50e3),
        point(2, 1, "fused", use_ml=True, core_hz=450e3),
        point(3, 1, "fused", io_only=True, core_hz=900e3, wall_hz=800e3),
        point(4, 2, "fused", core_hz=580e3, wall_hz=700e3),
        point(5, 2, "reference", core_hz=80e3, wall_hz=140e3),
    ]
    s = summarize(records)
    assert s[0].reference_ratio_per_core == pytest.approx(8.0) and s[0].reference_ratio_wall == pytest.approx(8.0)
    assert s[0].reference_point == s[1].point.name
    assert s[4].reference_ratio_per_core == pytest.approx(580 / 80) and s[4].reference_point == s[5].point.name
    # the ML point, the I/O-only point and the reference points themselves get no ratio
    assert [x.reference_ratio_per_core for x in (s[1], s[2], s[3], s[5])] == [None] * 4
    assert s[1].mode == "processing (reference-style)" and s[0].mode == "processing" and s[2].mode == "processing + ML"
    assert s[1].io_reference == s[3].point.name and s[1].io_ratio_per_core == pytest.approx(75 / 900)
    assert s[5].parallel_efficiency is not None and s[5].efficiency_reference == s[1].point.name
    rows = {r["point"]: r for r in summary_rows(s)}
    assert rows[s[0].point.name]["fused_over_reference_per_core"] == pytest.approx(8.0)
    grid = load_grid(BENCHMARKS / "tiny.yml")
    md = markdown_summary(grid, s, records)
    assert "fused / reference-style per core" in md and "## Fused against the reference-style processor" in md
    assert f"| {s[0].point.name} | {s[1].point.name} | futures | 1 | 600 | 75 | 8.0 | 8.0 |" in md


@pytest.mark.parametrize("name", ["quickstart.yml", "benchmark_subset.yml"])
def test_committed_grids_pair_every_reference_point_with_a_fused_one_without_ml(name):
    points = load_grid(BENCHMARKS / name).points()
    refs = [p for p in points if p.parameters.get("PROCESSOR") == "reference"]
    assert {p.parameters["NUM_CORES"] for p in refs} == {1, 2}
    for ref in refs:
        assert ref.parameters["USE_ML"] is False and ref.parameters["DISABLE_PROCESSING"] is False
        twin = {**ref.varied, "PROCESSOR": "fused"}
        assert any(p.varied == twin for p in points), ref.name


def test_summary_carries_the_time_to_result_medians(real_metrics):
    t = real_metrics
    rs = [
        _record(t, 0, {"NUM_CORES": 1}, workers=1, io_only=False, wall_hz=1e5, core_hz=1e5, repeat=i) for i in range(3)
    ]
    for r, total in zip(rs, (9.0, 12.0, 30.0), strict=True):
        r.metrics["time_to_result_s"] = {**r.metrics["time_to_result_s"], "total": total}
    assert summarize(rs)[0].time_to_result_s["total"] == 12.0


# --- failures and resuming (a fake notebook runner that writes metrics) ------------------------------


def test_keep_going_records_failures_and_resume_reruns_only_those(real_metrics, tiny_dataset, tmp_path):
    from utils.benchmark.runner import run_grid
    from utils.errors import AGCError

    grid = load_grid(BENCHMARKS / "tiny.yml")
    calls: list[dict] = []

    def runner(failing):
        def run(parameters, path):
            calls.append(parameters)
            if parameters["DISABLE_PROCESSING"] in failing:
                raise AGCError("notebook cell 6 failed with ModelError: boom")
            path.mkdir(parents=True, exist_ok=True)
            metrics = {**real_metrics, "disable_processing": parameters["DISABLE_PROCESSING"]}
            (path / "metrics.json").write_text(json.dumps(metrics))
            return path

        return run

    quiet = {"loadavg": lambda: 0.0}
    with pytest.raises(AGCError, match=r"00-disable_processing=false \(repeat 0\).*boom"):
        run_grid(grid, tmp_path, runner=runner({False}), **quiet)
    first = run_grid(grid, tmp_path, runner=runner({False}), keep_going=True, **quiet)
    assert [r.point.index for r in first.records] == [1] and len(first.failures) == 1
    assert "00-disable_processing=false (repeat 0)" in first.failures[0]
    calls.clear()
    second = run_grid(grid, tmp_path, runner=runner(set()), resume=True, **quiet)
    assert [c["DISABLE_PROCESSING"] for c in calls] == [False]  # only the failed run again
    assert [r.point.index for r in second.records] == [0, 1] and not second.failures


def test_a_run_on_a_busy_machine_is_repeated_and_its_load_recorded(real_metrics, tiny_dataset, tmp_path):
    from utils.benchmark.runner import run_grid

    grid = load_grid(BENCHMARKS / "tiny.yml")
    loads = iter([9.0, 9.0, 0.5, 0.5] + [0.5] * 4)  # the first point's first run is busy
    calls = []

    def run(parameters, path):
        calls.append(parameters["DISABLE_PROCESSING"])
        # as the notebook does: a folder holding an earlier run's outputs is refused
        assert not (path.exists() and any(path.iterdir())), f"{path} is not empty"
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.json").write_text(json.dumps(real_metrics))
        (path / "histograms.root").write_bytes(b"")
        return path

    result = run_grid(grid, tmp_path, repeat=1, runner=run, loadavg=lambda: next(loads))
    assert calls == [False, False, True]
    first = json.loads((result.records[0].path / "runner.json").read_text())
    assert first["attempts"] == 2 and first["loadavg_1min_before"] == 0.5 and first["cores"] >= 1
    assert all(r.quiet for r in result.records)


# --- the runner end to end ---------------------------------------------------------------------------


@pytest.mark.slow
def test_runner_executes_tiny_grid(tiny_dataset, tmp_path, monkeypatch):
    from utils.cli import cli

    monkeypatch.chdir(tmp_path)  # relative --output: the notebook runs elsewhere (notebooks/)
    out = tmp_path / "bench"
    published = tmp_path / "results"
    args = ["benchmark", str(BENCHMARKS / "tiny.yml"), "--output", "bench", "--summary-to", "results"]
    result = CliRunner().invoke(cli, [*args, "--noisy-retries", "0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    points = load_grid(BENCHMARKS / "tiny.yml").points()
    for p in points:
        metrics_path = out / "points" / p.name / "rep0" / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        validate_metrics(metrics, str(metrics_path))
        assert metrics["disable_processing"] is p.varied["DISABLE_PROCESSING"]
        assert metrics["parameters"]["use_ml"] is False and metrics["entries"] > 0
        assert not (metrics_path.parent / "fit_results.json").exists()  # RUN_FIT off by default
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["point"] for r in rows] == [p.name for p in points]
    assert [r["mode"] for r in rows] == ["processing", "I/O-only 4%"]
    assert rows[0]["entries"] == rows[1]["entries"]  # same files
    assert 0 < float(rows[0]["over_io_per_core"]) < 10 and rows[1]["over_io_per_core"] == ""
    assert float(rows[0]["needed_bytes_per_event"]) > 0 and float(rows[0]["bytes_read_per_event"]) > 0
    md = (out / "summary.md").read_text()
    assert "| point |" in md and points[0].name in md and "kHz per core" in md
    for name in ("scaling.png", "io_comparison.png", "stages.png"):
        assert (out / name).stat().st_size > 5_000, name
        assert (published / name).is_file()
    assert {f.name for f in published.iterdir()} == {
        "summary.md",
        "summary.csv",
        "scaling.png",
        "io_comparison.png",
        "stages.png",
    }
    assert "kHz per core" in result.output


@pytest.mark.slow
def test_runner_executes_a_grid_with_a_reference_style_point(tiny_dataset, tmp_path):
    """The reference-style processor as a point of a grid: the same notebook, runner and metrics,
    histograms.root written, and the summary's fused / reference-style ratio."""
    import numpy as np
    import uproot

    from utils.cli import cli

    grid_path = _write_grid(tmp_path, {
        "name": "tiny_reference", "repeat": 1,
        "base": {"DATASET": "embedded:tiny", "EXECUTOR": "iterative", "NUM_CORES": 1, "USE_ML": False,
                 "N_FILES_MAX_PER_SAMPLE": 1},
        "grid": {"PROCESSOR": ["fused", "reference"]},
    })  # fmt: skip
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["benchmark", str(grid_path), "--output", str(out), "--noisy-retries", "0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    fused, reference = (out / "points" / p.name / "rep0" for p in load_grid(grid_path).points())
    metrics = {}
    for name, path in (("fused", fused), ("reference", reference)):
        metrics[name] = json.loads((path / "metrics.json").read_text())
        validate_metrics(metrics[name], str(path))
        assert metrics[name]["processor"] == metrics[name]["parameters"]["processor"] == name
        assert metrics[name]["processtime"] > 0 and metrics[name]["peak_memory_per_worker_mb"] > 0
    assert metrics["reference"]["entries"] == metrics["fused"]["entries"] > 0
    with uproot.open(fused / "histograms.root") as f, uproot.open(reference / "histograms.root") as r:
        names = set(f.keys(cycle=False))
        assert names == set(r.keys(cycle=False)) and "4j2b_pseudodata" in names
        for name in sorted(n for n in names if "pt_scale" not in n and "pt_res" not in n):
            np.testing.assert_allclose(r[name].values(flow=True), f[name].values(flow=True), rtol=1e-6, err_msg=name)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["mode"] for r in rows] == ["processing", "processing (reference-style)"]
    ratio = float(rows[0]["fused_over_reference_per_core"])
    core = [float(r["khz_per_core"]) for r in rows]
    assert ratio == pytest.approx(core[0] / core[1], rel=0.01) and ratio > 0
    assert rows[1]["fused_over_reference_per_core"] == ""
    md = (out / "summary.md").read_text()
    assert "fused / reference-style per core" in md and "## Fused against the reference-style processor" in md


def test_input_size_from_the_input_check_opens_no_file(tiny_dataset, monkeypatch):
    import uproot

    from utils.datasets.fileset import build_fileset
    from utils.datasets.inputs import preflight
    from utils.run.metrics import input_size

    fileset, report = preflight(build_fileset(tiny_dataset, 1))
    opened = input_size(fileset)
    monkeypatch.setattr(uproot, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("opened")))
    assert input_size(fileset, files=report.files) == opened


def test_run_metrics_record_the_time_to_result(real_metrics):
    ttr = real_metrics["time_to_result_s"]
    assert ttr["preflight"] == pytest.approx(real_metrics["preflight_s"], abs=1e-4)
    assert ttr["worker_start"] == pytest.approx(real_metrics["executor_startup_s"], abs=1e-4)
    assert ttr["processing"] + ttr["preprocessing"] == pytest.approx(real_metrics["walltime"], abs=1e-3)
    assert sum(v for k, v in ttr.items() if k != "total") == pytest.approx(ttr["total"], abs=1e-3)
