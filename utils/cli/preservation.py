"""``agc publish`` and ``agc reinterpret``: the preserved likelihood and its reuse."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from utils.processing.run import ProcessingOptions

_CORES = click.option(
    "--cores", type=click.IntRange(min=1), default=1, show_default=True, help="Cores for processing a signal."
)


def processing_options(cores: int) -> ProcessingOptions:
    """Processing options of a signal: every systematic, ``cores`` workers (the signal's own
    files: no notebook parameters, no dataset to resolve; ML is the processor's classifier
    argument, which signals never get)."""
    from utils.processing.run import ProcessingOptions

    return ProcessingOptions(executor="iterative" if cores == 1 else "futures", workers=cores, systematics=True)


def _echo_point(point) -> None:
    cls = point.cls
    click.echo(f"{point.name}: CLs({cls.poi_name} = 1) observed {cls.cls_obs:.4g}, expected {cls.cls_exp[2]:.4g}")
    if point.limit is not None:
        lim = point.limit
        exp = lim.expected_limit
        click.echo(
            f"  95% CL upper limit on {cls.poi_name}: observed {lim.observed_limit:.3f}, expected {exp[2]:.3f} "
            f"(-1 sigma {exp[1]:.3f}, +1 sigma {exp[3]:.3f})"
        )
    if point.failure:
        click.secho(f"  limit failed: {point.failure}", fg="yellow", err=True)


@click.command()
@click.option(
    "--histograms",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="histograms.root of the backgrounds (an `agc run` output or the workflow's merge step).",
)
@click.option(
    "--signal",
    "signals",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signal point of the patchset: a signal description (.json, processed now) or its processed "
    "histograms (.root with the .json record beside it). Repeatable.",
)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-c", "--config", "cabinetry_config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="cabinetry configuration of the analysis [default: cabinetry_config.yml].")  # fmt: skip
@click.option("--signal-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The signal model [default: cabinetry_config_signal.yml].")  # fmt: skip
@click.option("--limits", is_flag=True, help="Also compute CLs and upper limits of every signal point.")
@click.option("--inspire", "inspire_id", default="ins0000000", show_default=True,
              help="INSPIRE id of the publication (the patchset's HEPData reference); the default means none.")  # fmt: skip
@click.option("--analysis-id", default="AGC-CMS-ttbar-2015", show_default=True,
              help="Identifier of the analysis (patchset metadata, HEPData record, provenance).")  # fmt: skip
@_CORES
def publish(
    histograms: Path,
    signals: tuple[Path, ...],
    output: Path,
    cabinetry_config: Path | None,
    signal_config: Path | None,
    limits: bool,
    inspire_id: str,
    analysis_id: str,
    cores: int,
) -> None:
    """Publish the background-only likelihood, a signal patchset, HEPData tables and provenance."""
    from utils.preservation.publish import publish_analysis

    result = publish_analysis(
        histograms,
        output,
        signals,
        cabinetry_config=cabinetry_config,
        signal_config=signal_config,
        limits=limits,
        params=processing_options(cores),
        inspire_id=inspire_id,
        analysis_id=analysis_id,
    )
    click.echo(f"background-only likelihood: {result.background_ws}")
    if signals:
        click.echo(f"patchset ({len(signals)} signal points): {result.patchset}")
    for point in result.points:
        _echo_point(point)
    click.echo(
        f"check with: pyhf patchset apply {result.background_ws} {result.patchset} --name POINT "
        "| pyhf cls --optimizer minuit"
    )


@click.command()
@click.argument("signal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--published", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder written by `agc publish`.")  # fmt: skip
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-limit", is_flag=True, help="Only CLs at signal strength 1, no upper-limit search.")
@_CORES
def reinterpret(signal: Path, published: Path, output: Path, no_limit: bool, cores: int) -> None:
    """Reinterpret the published analysis with the signal of SIGNAL (a signal description JSON:
    one process, its files and its cross-section "xsec" in pb)."""
    from utils.preservation.publish import reinterpret_signal as run

    result = run(signal, published, output, limit=not no_limit, params=processing_options(cores))
    _echo_point(result.point)
    click.echo(f"results: {output}")
