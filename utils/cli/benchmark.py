"""``agc benchmark``: the main notebook over a parameter grid, and its summary."""

from __future__ import annotations

import json
from pathlib import Path

import click

from utils.benchmark.grid import load_grid
from utils.benchmark.runner import (
    NOISY_RETRIES,
    collect_records,
    copy_summary,
    default_output,
    run_benchmark,
    write_summary,
)
from utils.benchmark.summary import markdown_table
from utils.errors import AGCError


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
@click.option(
    "--noisy-retries",
    type=click.IntRange(min=0),
    default=NOISY_RETRIES,
    show_default=True,
    help="Repeat a run whose 1-minute load average was above the core count at most this often.",
)
def benchmark(grid_file: Path, output: Path | None, repeat: int | None, summary_to: Path | None,
              dry_run: bool, summarize_only: bool, keep_going: bool, resume: bool,
              noisy_retries: int) -> None:  # fmt: skip
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
        result = run_benchmark(grid, output, repeat, keep_going=keep_going, resume=resume, noisy_retries=noisy_retries)
    click.echo(markdown_table(result.summaries))
    if summary_to is not None:
        for f in copy_summary(result, summary_to):
            click.echo(f"  {f}")
    click.echo(f"summary: {output / 'summary.md'}")
    if result.failures:
        raise AGCError(f"{len(result.failures)} run(s) failed:\n  " + "\n  ".join(result.failures))


@click.command("benchmark-remote")
@click.argument("grid_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                default="benchmarks/remote/remote.yml")  # fmt: skip
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("benchmarks/results/remote"),
    show_default=True,
    help="Folder of summary.md and results.json.",
)
def benchmark_remote(grid_file: Path, output: Path) -> None:
    """Read the same files locally, over root://, HTTP and HTTPS from xrootd on loopback, and with
    added latency (network namespace + tc netem, as root; else a delaying proxy); write the table
    of rates relative to local."""
    import os

    from utils.benchmark.remote import load_remote_grid, run_remote_benchmark, write_remote_results

    grid = load_remote_grid(grid_file)
    before = os.getloadavg()
    path = write_remote_results(grid, run_remote_benchmark(grid), output, before)
    click.echo(path.read_text())
