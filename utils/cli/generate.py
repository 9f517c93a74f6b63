"""``agc generate``: build (or find in the cache) an embedded dataset from a preset."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--preset",
    default="quickstart",
    show_default=True,
    help="Preset of datasets/embedded/presets.yml: tiny (seconds; tests, Binder), quickstart (the README's "
    "run), benchmark (timings), or signal (the Z' -> ttbar signal family of docs/preservation.md; signal "
    "descriptions: python -m utils.cli.workflow describe-signal).",
)
@click.option(
    "--output",
    "output_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Root folder of generated datasets [default: <repo>/data/embedded].",
)
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["ntuple", "nanoaod"]),
    default="ntuple",
    show_default=True,
    help="File format: the 2015 POET ntuples, or CMS NanoAOD (the AGC main line; written into "
    "<preset>-nanoaod, used as DATASET='embedded:<preset>-nanoaod'). The events are the same.",
)
@click.option("--seed", type=int, default=None, help="Base random seed [default: the preset's].")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes generating files in parallel.",
)
@click.option(
    "--with-data/--no-data",
    "with_data",
    default=None,
    help="Also generate the 'data' sample [default: the preset's data.enabled].",
)
@click.option(
    "--mu",
    type=click.FloatRange(min=0.0),
    default=None,
    help="True ttbar signal strength in the generated data [default: the preset's, 1].",
)
@click.option("--force", is_flag=True, help="Regenerate even if the cached dataset is complete.")
@click.option(
    "--presets",
    "presets_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Another presets file.",
)
def generate(
    preset: str,
    output_root: Path | None,
    seed: int | None,
    workers: int,
    with_data: bool | None,
    mu: float | None,
    force: bool,
    presets_path: Path | None,
    input_format: str,
) -> None:
    """Generate the embedded stand-in for the 2015 CMS ttbar ntuples (or NanoAOD)."""
    from utils.datasets.embedded.dataset import build_dataset

    def progress(result) -> None:
        click.echo(
            f"  {result.process}__{result.variation} {result.path.name}: {result.n_events:,} events, "
            f"{result.n_bytes / 1e6:.1f} MB, {result.n_events / max(result.cpu_seconds, 1e-9):,.0f} events/s per core"
        )

    res = build_dataset(
        preset, output_root, seed, workers, with_data, mu, force, presets_path, progress, input_format=input_format
    )
    click.echo(f"dataset JSON: {res.fileset_path}")
    if not res.generated:
        click.echo(f"cached and complete: {res.n_files} files, {res.n_events:,} events, {res.n_bytes / 1e9:.2f} GB")
        return
    click.echo(
        f"generated {res.files_generated} of {res.n_files} files, {res.events_generated:,} events, "
        f"{res.n_bytes / 1e9:.2f} GB in all ({res.n_bytes / max(res.n_events, 1):,.0f} bytes/event); "
        f"{res.seconds:.1f} s wall, {res.events_per_second:,.0f} events/s, "
        f"{res.events_per_cpu_second:,.0f} events/s per core (CPU time)"
    )
