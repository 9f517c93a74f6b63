"""``agc fit`` and ``agc validate``: the inference stage and histogram validation from the shell."""

from __future__ import annotations

import math
from pathlib import Path

import click


class ValidationFailed(click.ClickException):
    """Histograms disagree with their reference (exit code 1)."""

    exit_code = 1


@click.command()
@click.argument("histograms", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for workspace.json, fit_results.json, templates/ and figures/.",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="cabinetry configuration (default: cabinetry_config.yml of the repository).",
)
@click.option("--ranking", is_flag=True, help="Compute the impact ranking of the nuisance parameters (slow).")
@click.option("--significance", is_flag=True, help="Compute the discovery significance of the POI.")
@click.option("--limit", is_flag=True, help="Compute the 95% CL upper limit on the POI.")
@click.option(
    "--strategy", type=click.IntRange(0, 2), default=None, help="MINUIT strategy (default: pyhf's choice, 1)."
)
@click.option(
    "--ml-categories",
    is_flag=True,
    help="Split every region into its ML-score categories (histograms of a run with the classifier).",
)
@click.option(
    "--fit-data",
    type=click.Choice(["pseudodata", "data"]),
    default="pseudodata",
    show_default=True,
    help="Observed data: the pseudo-data, or the dataset's data sample.",
)
@click.option("--no-figures", is_flag=True, help="Skip the figures.")
def fit(
    histograms: Path,
    output_dir: Path,
    config_path: Path | None,
    ranking: bool,
    significance: bool,
    limit: bool,
    strategy: int | None,
    ml_categories: bool,
    fit_data: str,
    no_figures: bool,
) -> None:
    """Fit the statistical model to HISTOGRAMS (a histograms.root) and print the POI."""
    from utils.inference.results import run_inference

    result = run_inference(
        histograms,
        output_dir,
        config_path,
        ranking=ranking,
        significance=significance,
        limit=limit,
        figures=not no_figures,
        strategy=strategy,
        ml_categories=ml_categories,
        fit_data=fit_data,
    )
    click.echo(f"{result.poi_name} = {result.bestfit:.3f} +/- {result.uncertainty:.3f}")
    click.echo(
        f"{result.n_parameters} parameters, -2lnL = {result.twice_nll:.3f}"
        + (f", goodness-of-fit p = {result.goodness_of_fit:.3f}" if result.goodness_of_fit is not None else "")
        + f", fit {result.timings.get('fit', float('nan')):.2f} s"
    )
    if result.significance is not None:
        s = result.significance
        click.echo(f"significance: observed {s.observed_significance:.2f}, expected {s.expected_significance:.2f}")
    if result.limit is not None:
        lim = result.limit
        click.echo(
            f"{lim.confidence_level:.0%} CL upper limit: observed {lim.observed_limit:.3f}, "
            f"expected {lim.expected_limit[2]:.3f}"
        )
    if result.ranking is not None:
        ranked = [i for i in result.ranking if not math.isnan(i.largest_postfit)]
        top = sorted(ranked, key=lambda i: -i.largest_postfit)[:5]
        click.echo(
            "largest impacts: " + ", ".join(f"{i.parameter} ({i.postfit_up:+.3f}/{i.postfit_down:+.3f})" for i in top)
        )
    for line in result.problems:
        click.secho(line, fg="yellow", err=True)
    if result.template_treatment:
        click.echo(f"template treatment: {len(result.template_treatment)} decision(s), listed in fit_results.json")
    for step, why in result.failures.items():
        click.secho(f"{step} failed: {why}", fg="yellow", err=True)
    click.echo(f"results: {result.results_path}")


@click.command()
@click.argument("histograms", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("reference", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dump-json",
    "dump_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the reference JSON of HISTOGRAMS to this path instead of comparing.",
)
@click.option(
    "--allow-migrations",
    "migrations",
    multiple=True,
    metavar="PATTERN=N",
    help="Tolerate up to N migrated events in histograms matching PATTERN (fnmatch), e.g. '*_pt_res_up=1'. "
    "With --dump-json the rule is written into the reference.",
)
@click.option("--rtol", type=float, default=None, help="Relative tolerance written with --dump-json (default 1e-9).")
def validate(
    histograms: Path, reference: Path | None, dump_path: Path | None, migrations: tuple[str, ...], rtol: float | None
) -> None:
    """Compare HISTOGRAMS (a histograms.root) bin by bin with REFERENCE (a JSON), or write one.

    Exit code 1 lists every mismatch: histogram, bin, expected and got.
    """
    from utils.histograms import validation

    rules = tuple(validation.parse_migration_rule(m) for m in migrations)
    if (reference is None) == (dump_path is None):
        raise click.UsageError("give either REFERENCE to compare with or --dump-json PATH to write one")
    if dump_path is not None:
        content = validation.dump_reference(
            histograms, dump_path, migrations=rules, rtol=rtol if rtol is not None else validation.DEFAULT_RTOL
        )
        click.echo(f"wrote the reference of {len(content['histograms'])} histograms to {dump_path}")
        return
    assert reference is not None  # checked above: exactly one of REFERENCE and --dump-json
    report = validation.validate_histograms(histograms, reference, extra_migrations=rules)
    for mismatch in report.mismatches:
        click.echo(str(mismatch))
    click.echo(report.summary())
    if not report.ok:
        raise ValidationFailed(f"{len(report.mismatches)} mismatch(es) between {histograms} and {reference}")
