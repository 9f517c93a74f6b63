"""``agc run``: execute the main notebook with papermill into a fresh output folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from utils.errors import AGCError
from utils.run.outputs import new_output_dir, prepare_output_dir
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
@click.option("--overwrite", is_flag=True, help="Clear an output folder that holds an earlier run (else refused).")
@click.option("--notebook", type=click.Path(path_type=Path, exists=True), default=MAIN_NOTEBOOK, show_default=True)
@click.option(
    "--validate",
    "reference",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Compare the run's histograms.root with this reference JSON (agc validate).",
)
def run(dataset: str, parameters: tuple[tuple[str, str], ...], output: Path | None, overwrite: bool, notebook: Path,
        reference: Path | None) -> None:  # fmt: skip
    """Run the analysis notebook end to end (papermill) and print the fitted ttbar_norm."""
    given = {k: parse_value(v) for k, v in parameters}
    params = _resolve_parameters(given, dataset, output, overwrite)
    run_params = RunParameters.from_notebook(params, strict=True)  # bad names and values, before any work
    if run_params.output_dir is not None:
        output = prepare_output_dir(run_params.output_dir, run_params.overwrite)
    else:
        output = new_output_dir(run_params)
    params = {
        **params,
        "DATASET": run_params.dataset,
        "OVERWRITE": False,
    }  # DATASET "auto" resolved  # the folder is ready; the notebook must not clear it again
    click.echo(f"running {notebook.name} on {run_params.dataset}; outputs in {output}")
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


def _resolve_parameters(given: dict, dataset: str, output: Path | None, overwrite: bool) -> dict:
    """The notebook parameters of the command line: ``--dataset``/``--output``/``--overwrite``
    and their ``-p`` twins are one setting each; given both ways with different values, refused."""
    params = dict(given)
    for name, value, flag in (("DATASET", dataset, "--dataset"), ("OUTPUT_DIR", output, "--output")):
        if name in given and value is not None and flag in _explicit_options() and str(given[name]) != str(value):
            raise AGCError(f"{flag} {value} and -p {name} {given[name]} disagree; give one of them")
        if name not in given and value is not None:
            params[name] = str(value)
    if overwrite:
        params["OVERWRITE"] = True
    return params


def _explicit_options() -> set[str]:
    """The long options given on the command line (not defaults)."""
    ctx = click.get_current_context()
    return {f"--{name.replace('_', '-')}" for name in ctx.params
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}  # fmt: skip
