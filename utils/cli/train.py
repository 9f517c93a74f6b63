"""``agc train``: train the per-region classifiers and write ``models/`` (the same function the
notebook ``notebooks/ml_training`` calls)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

log = logging.getLogger(__name__)


@click.command()
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write weights, exports and cards (default: the repository's models/).",
)
@click.option("--preset", default=None, help="Preset of utils/ml/training_data.yml (default: ml_training).")
@click.option(
    "--data-seed", type=int, default=None, help="Generator seed of the training dataset (default: the preset's)."
)
@click.option("--seed", type=int, default=None, help="Training seed (weights initialisation, batch order).")
@click.option("--architecture", type=click.Choice(["reference", "wide"]), default="reference", show_default=True)
@click.option("--max-epochs", type=int, default=None, help="Upper limit of epochs (early stopping ends sooner).")
@click.option("--workers", type=int, default=2, show_default=True, help="Processes for generating and selecting.")
@click.option(
    "--task",
    type=click.Choice(["classifier", "jet-assignment"]),
    default="classifier",
    show_default=True,
    help="classifier: the per-region ttbar classifiers; jet-assignment: the NanoAOD jet-parton assignment.",
)
@click.option(
    "--dataset",
    default=None,
    help="jet-assignment: NanoAOD dataset (name or JSON) with ttbar__nominal (default: the generated "
    "preset jet_assignment of utils/ml/training_data.yml).",
)
@click.option("--n-files", type=int, default=-1, show_default=True, help="jet-assignment: ttbar files (-1: all).")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="jet-assignment: a NanoAOD ttbar file with GenPart (repeatable; instead of --dataset).",
)
def train(
    models_dir, preset, data_seed, seed, architecture, max_epochs, workers, task, dataset, n_files, files
) -> None:
    """Train the ttbar classifiers of every region on the training dataset (generated apart from
    the analysis dataset), evaluate them on held-out events and write models/; with
    ``--task jet-assignment``, the jet-parton assignment models of both event parities."""
    from dataclasses import replace

    if task == "jet-assignment":
        _train_assignment(models_dir, dataset, n_files, files, seed, max_epochs, workers)
        return
    from utils.ml.card import DEFAULT_MODELS_DIR
    from utils.ml.training import TRAINING_DATA_PRESET, TrainingSettings, train_all

    settings = TrainingSettings(architecture=architecture)
    if seed is not None:
        settings = replace(settings, seed=seed)
    if max_epochs is not None:
        settings = replace(settings, max_epochs=max_epochs)
    run = train_all(
        models_dir or DEFAULT_MODELS_DIR,
        preset=preset or TRAINING_DATA_PRESET,
        data_seed=data_seed,
        settings=settings,
        workers=workers,
    )
    for region, ev in run.evaluations.items():
        card = run.cards[region]
        click.echo(
            f"{region}: test AUC {ev.roc.auc:.4f} (baseline {ev.baseline_variable}: {ev.baseline_roc.auc:.4f}), "
            f"accuracy {ev.accuracy:.4f}, export sha256 {card.export_sha256[:12]}, card {card.path}"
        )
    click.echo(f"trained in {run.seconds:.0f} s")


def _train_assignment(models_dir, dataset, n_files, files, seed, max_epochs, workers) -> None:
    from dataclasses import replace

    from utils.ml.assignment.training import (
        TRAINING_PRESET,
        AssignmentSettings,
        dataset_source,
        train_from_files,
        training_dataset,
        training_files,
    )
    from utils.ml.card import DEFAULT_MODELS_DIR

    root = None
    if files:
        paths, source = list(files), {"files": list(files)}
    else:
        if dataset is None:  # the generated training dataset (preset jet_assignment of utils/ml/training_data.yml)
            dataset = str(training_dataset(TRAINING_PRESET, workers))
        paths = training_files(dataset, n_files)
        source, root = dataset_source(dataset)
        source["n_files"] = n_files
    settings = AssignmentSettings()
    if seed is not None:
        settings = replace(settings, seed=seed)
    if max_epochs is not None:
        settings = replace(settings, max_epochs=max_epochs)
    run = train_from_files(paths, models_dir or DEFAULT_MODELS_DIR, settings=settings, source=source, root=root)
    for parity, per in run.metrics.items():
        line = ", ".join(
            f"{k}: {v['model']} (baseline {v['baseline']}, random {v['random']}, {v['events']} events)"
            for k, v in per.items()
        )
        click.echo(f"model trained on {parity} events, held-out accuracy: {line}")
    click.echo(f"trained in {run.seconds:.0f} s; cards: {', '.join(str(p) for p in run.cards.values())}")
