"""The steps of the preservation workflow (``workflow/Snakefile``) as small entry points:
``python -m utils.cli.workflow STEP ...``. Each reads its declared inputs and writes its
declared outputs; ``agc publish`` and ``agc reinterpret`` are the other two steps."""

from __future__ import annotations

import json
from pathlib import Path

import click

from utils.cli.preservation import processing_options

_PATH = click.Path(path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True)
def steps(verbose: bool) -> None:
    """Workflow steps of the analysis preservation (see docs/preservation.md)."""
    from utils.cli import configure_logging

    configure_logging(verbose)


@steps.command("describe")
@click.option("--dataset", required=True, help="embedded:<preset> (generated if missing), cms-open-data-2015, or JSON.")
@click.option("-o", "--output", required=True, type=_PATH)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
def describe_step(dataset: str, output: Path, workers: int) -> None:
    """Deliver a dataset (generate an embedded one) and write its description, paths absolute."""
    from utils.io import write_json_atomic
    from utils.preservation.signal import standalone_description
    from utils.run.pipeline import resolve_dataset

    write_json_atomic(output, standalone_description(resolve_dataset(dataset, workers=workers)))


@steps.command("describe-signal")
@click.option("--dataset", required=True, help="The dataset holding the signal family, e.g. embedded:signal.")
@click.option("--process", required=True)
@click.option("--variation", required=True)
@click.option("--name", required=True, help="Name of the signal point.")
@click.option("--xsec", required=True, type=float, help="Cross-section of the signal point in pb.")
@click.option("--parameter", "parameters", multiple=True, metavar="NAME=VALUE", help="Model parameter, e.g. mass=500.")
@click.option("-o", "--output", required=True, type=_PATH)
def describe_signal_step(
    dataset: str, process: str, variation: str, name: str, xsec: float, parameters: tuple[str, ...], output: Path
) -> None:
    """Write the signal description of one sample of a dataset (one point of a signal family)."""
    from utils.preservation.signal import describe_signal as write
    from utils.run.pipeline import resolve_dataset

    values = {}
    for item in parameters:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--parameter")
        values[key] = float(value)
    write(resolve_dataset(dataset), process, variation, name, xsec, output, values)


@steps.command("process")
@click.argument("description", type=_FILE)
@click.option("--sample", required=True, help="process__variation of the sample to process.")
@click.option("-o", "--output", required=True, type=_PATH)
@click.option("--cores", type=click.IntRange(min=1), default=1, show_default=True)
def process_step(description: Path, sample: str, output: Path, cores: int) -> None:
    """Process one sample of a dataset description into per-sample histograms (+ record)."""
    from utils.config import load_analysis_config
    from utils.datasets.fileset import build_fileset, load_dataset_description
    from utils.errors import ConfigError
    from utils.preservation.provenance import generator_entries
    from utils.preservation.samples import process_samples, write_sample_histograms

    config = load_analysis_config()
    fileset = build_fileset(description)
    if sample not in fileset:
        raise ConfigError(f"{description}: no sample {sample!r}; samples: {sorted(fileset)}")
    generators = generator_entries(load_dataset_description(description))
    result = process_samples({sample: fileset[sample]}, config, processing_options(cores), generators)
    write_sample_histograms(result, output, config)


@steps.command("process-signal")
@click.argument("signal", type=_FILE)
@click.option("-o", "--output", required=True, type=_PATH)
@click.option("-c", "--signal-config", type=_FILE, default=None, help="[default: cabinetry_config_signal.yml]")
@click.option("--cores", type=click.IntRange(min=1), default=1, show_default=True)
def process_signal_step(signal: Path, output: Path, signal_config: Path | None, cores: int) -> None:
    """Process a signal description as the signal sample of the signal model."""
    from utils.config import load_analysis_config
    from utils.preservation.model import load_signal_model
    from utils.preservation.signal import load_signal
    from utils.preservation.signal import process_signal as run

    sample = load_signal_model(signal_config).sample_path
    run(load_signal(signal), output, load_analysis_config(), sample, processing_options(cores))


@steps.command()
@click.argument("parts", nargs=-1, required=True, type=_FILE)
@click.option("-o", "--output", required=True, type=_PATH)
def merge(parts: tuple[Path, ...], output: Path) -> None:
    """Merge per-sample histograms into histograms.root (with pseudo-data)."""
    from utils.config import load_analysis_config
    from utils.preservation.samples import merge_histograms

    merge_histograms(parts, output, load_analysis_config())


@steps.command()
@click.option("--published", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--point", required=True, help="A signal point of the published patchset.")
@click.option("-o", "--output", required=True, type=_PATH)
@click.option("--no-limit", is_flag=True, help="Only CLs at signal strength 1, no upper-limit search.")
def limit(published: Path, point: str, output: Path, no_limit: bool) -> None:
    """CLs and the upper limit of one published signal point (BkgOnly.json + its patch)."""
    from utils.io import write_json_atomic
    from utils.preservation.evaluation import evaluate
    from utils.preservation.publish import PublishedAnalysis

    analysis = PublishedAnalysis.load(published)
    patch = analysis.patch(point)
    result = evaluate(patch.apply(analysis.background_ws), point, patch.parameters, patch.xsec, with_limit=not no_limit)
    write_json_atomic(output, result.to_dict())


@steps.command()
@click.argument("results", nargs=-1, required=True, type=_FILE)
@click.option("--label", default="mass", show_default=True, help="The model parameter the limits are shown against.")
@click.option("-o", "--output", required=True, type=_PATH, help="Folder for limits.json and the HEPData table.")
def summary(results: tuple[Path, ...], label: str, output: Path) -> None:
    """Collect per-point results (limit step, reinterpretations) into one JSON and a HEPData table."""
    from utils.io import write_json_atomic
    from utils.preservation import hepdata

    points = [json.loads(p.read_text()) for p in results]
    for p, path in zip(points, results, strict=True):
        p["source"] = str(path)
    write_json_atomic(output / "limits.json", points)
    pois = {p["poi"] for p in points}
    hepdata.write_submission(output / "hepdata", [hepdata.limits_table(points, label, "/".join(sorted(pois)))])
    for p in sorted(points, key=lambda p: p["parameters"].get(label, 0)):
        lim = p["limit"] or {}
        click.echo(
            f"{p['name']} ({label} {p['parameters'].get(label)}, {p['xsec_pb']} pb): CLs(mu=1) {p['cls']['cls_obs']:.4g}; "
            f"limit observed {lim.get('observed_limit')}, expected {(lim.get('expected_limit') or [None] * 3)[2]}"
        )


if __name__ == "__main__":
    from utils.cli import run_command

    run_command(steps)
