"""``agc run``: execute the main notebook with papermill into a fresh output folder."""

from __future__ import annotations

import ast
import json
import logging
import time
from pathlib import Path

import click

from utils.config import REPO_ROOT
from utils.errors import AGCError
from utils.pipeline import RunParameters, new_output_dir

log = logging.getLogger(__name__)

MAIN_NOTEBOOK = REPO_ROOT / "notebooks" / "ttbar_analysis_pipeline.ipynb"


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def execute_notebook(
    parameters: dict, output_dir: Path, notebook: Path = MAIN_NOTEBOOK, kernel_name: str = "python3",
    progress: bool = True,
) -> Path:  # fmt: skip
    """Execute a notebook with papermill; the executed copy goes into ``output_dir``."""
    import papermill

    output_dir = Path(output_dir).resolve()  # the kernel runs in notebooks/: never a relative path
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / notebook.name
    parameters = {**parameters, "OUTPUT_DIR": str(output_dir)}
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, cwd=str(notebook.parent),
            kernel_name=kernel_name, progress_bar=progress, log_output=False,
        )  # fmt: skip
    except papermill.PapermillExecutionError as err:
        raise AGCError(
            f"notebook cell {err.exec_count} failed with {err.ename}: {err.evalue}\n"
            f"the executed notebook with the error is {executed}"
        ) from None
    return executed


@click.command()
@click.option(
    "--dataset",
    default="embedded:quickstart",
    show_default=True,
    help="embedded:<preset>, cms-open-data-2015, or a dataset JSON path",
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
    params = {"DATASET": dataset, **{k: _parse_value(v) for k, v in parameters}}
    run_params = RunParameters(dataset=dataset)
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
        from utils.validation import validate_histograms

        report = validate_histograms(output / "histograms.root", reference)
        click.echo(report.summary())
        if not report.ok:
            for m in report.mismatches[:20]:
                click.echo(f"  {m}")
            raise AGCError(f"histograms differ from the reference {reference}")
