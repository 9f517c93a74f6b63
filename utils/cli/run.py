"""``agc run``: execute the main notebook with papermill into a fresh output folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from utils.errors import AGCError
from utils.run.outputs import new_output_dir
from utils.run.papermill import MAIN_NOTEBOOK, execute_notebook, parse_value
from utils.run.parameters import RunParameters

log = logging.getLogger(__name__)


@click.command()
@click.option(
    "--dataset",
    default="auto",
    show_default=True,
    help="embedded:<preset>, cms-open-data-2015, or a dataset JSON path; auto: embedded:quickstart, or "
    "embedded:tiny on Binder/JupyterHub or with under 6 GiB of memory.",
)
@click.option(
    "-p",
    "--parameter",
    "parameters",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="A notebook parameter, e.g. -p NUM_CORES 2 -p USE_DASK True (repeatable).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: outputs/<timestamp>-<dataset>).",
)
@click.option("--notebook", type=click.Path(path_type=Path, exists=True), default=MAIN_NOTEBOOK, show_default=True)
@click.option(
    "--validate",
    "reference",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Compare the run's histograms.root with this reference JSON (agc validate).",
)
def run(dataset: str, parameters: tuple[tuple[str, str], ...], output: Path | None, notebook: Path,
        reference: Path | None) -> None:  # fmt: skip
    """Run the analysis notebook end to end (papermill) and print the fitted ttbar_norm."""
    run_params = RunParameters(dataset=dataset)
    dataset = run_params.dataset  # auto resolved here, so that the output folder is named after it
    params = {"DATASET": dataset, **{k: parse_value(v) for k, v in parameters}}
    output = output if output is not None else new_output_dir(run_params)
    click.echo(f"running {notebook.name} on {dataset}; outputs in {output}")
    t0 = time.monotonic()
    execute_notebook(params, output, notebook)
    elapsed = time.monotonic() - t0
    results = output / "fit_results.json"
    if results.is_file():
        poi = json.loads(results.read_text())["poi"]
        click.echo(f"fit result for {poi['name']}: {poi['bestfit']:.3f} +/- {poi['uncertainty']:.3f}")
    click.echo(f"done in {elapsed:.0f} s; outputs in {output}:")
    for path in sorted(p for p in output.iterdir() if not p.name.startswith(".tmp-")):
        n = sum(1 for _ in path.rglob("*")) if path.is_dir() else 0
        click.echo(f"  {path.name}/ ({n} files)" if path.is_dir() else f"  {path.name}")
    if reference is not None:
        from utils.histograms.validation import validate_histograms

        report = validate_histograms(output / "histograms.root", reference)
        click.echo(report.summary())
        if not report.ok:
            for m in report.mismatches[:20]:
                click.echo(f"  {m}")
            raise AGCError(f"histograms differ from the reference {reference}")
