"""The stage sequence the notebook, ``agc run`` and the benchmarks share:
dataset -> fileset -> delivery -> processing -> histograms -> inference -> metrics and manifest.

Each function is one stage, takes :class:`~utils.run.parameters.RunParameters` and hands the
stage the options it needs; the notebook calls them in order and tells the story around them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.config import AnalysisConfig
from utils.datasets.fileset import TREE_NAME, build_fileset
from utils.datasets.resolve import resolve_dataset
from utils.datasets.urls import load_url_rules, rewrite_fileset
from utils.processing.nanoaod import TREE_NAME as NANOAOD_TREE
from utils.processing.processor import Classifier
from utils.processing.run import ProcessingResult, process_fileset
from utils.run.outputs import new_output_dir, prepare_output_dir
from utils.run.parameters import RunParameters

if TYPE_CHECKING:
    from utils.delivery.deliver import DeliveryResult

log = logging.getLogger(__name__)


def output_dir_for(params: RunParameters) -> Path:
    """The run's output folder: ``OUTPUT_DIR`` when given (created if missing; one holding an
    earlier run is refused unless ``OVERWRITE``, which clears it), else a new
    ``outputs/<timestamp>-<dataset>``."""
    if params.output_dir:
        return prepare_output_dir(params.output_dir, params.overwrite)
    return new_output_dir(params)


def start_workers(params: RunParameters) -> None:
    """Start the processing workers in the background (futures executor), so that they import
    while the dataset and fileset are prepared; the processing stage then takes them (and shuts
    them down when it ends)."""
    options = params.processing_options()
    if options.executor == "futures":
        from utils.processing.executors import start_workers as start_pool

        start_pool(options.workers)


def fileset_for(params: RunParameters) -> tuple[Path, dict[str, Any]]:
    """The dataset description of ``DATASET`` (the embedded one generated on first use) and its
    fileset, limited to ``N_FILES_MAX_PER_SAMPLE`` and ``MAX_EVENTS_PER_SAMPLE``, with the
    ``INPUT_URLS`` rules applied to its paths."""
    dataset_path = resolve_dataset(params.dataset, workers=params.num_cores)
    treename = NANOAOD_TREE if params.resolved_input_format == "nanoaod" else TREE_NAME
    fileset = build_fileset(
        dataset_path,
        params.n_files_max_per_sample,
        treename=treename,
        max_events_per_sample=params.max_events_per_sample,
    )
    return dataset_path, rewrite_fileset(fileset, load_url_rules(params.input_urls))


@dataclass
class Delivered:
    """What the processing stage reads: the fileset itself (direct), or what ServiceX delivered."""

    fileset: dict[str, Any]
    delivery: DeliveryResult | None = None

    def metrics(self) -> dict[str, Any]:
        return self.delivery.metrics() if self.delivery is not None else {}

    def summary(self) -> str:
        if self.delivery is None:
            return f"direct: the processor reads the {sum(len(e['files']) for e in self.fileset.values())} files"
        s = self.delivery.stats
        return (f"delivered {s.n_files} files, {s.events:,d} events, {s.bytes_delivered / 1e6:.1f} MB "
                f"in {s.wall_time_s:.1f} s")  # fmt: skip


def deliver(params: RunParameters, fileset: dict[str, Any], config: AnalysisConfig | None = None) -> Delivered:
    """The delivery stage: with ``PIPELINE="servicex"`` every sample goes into one ServiceX
    request (the local endpoint unless a facility is configured); else the files are read as
    they are."""
    if params.pipeline != "servicex":
        return Delivered(fileset)
    from utils.delivery import deliver_fileset

    result = deliver_fileset(
        fileset,
        query_language=params.servicex_query_language,
        ignore_cache=params.servicex_ignore_cache,
        analysis_config=config,
        input_format=params.resolved_input_format,
    )
    return Delivered(result.fileset, result)


def make_classifier(use_ml: bool, models_dir: str | Path | None = None) -> Classifier | None:
    """The per-region ML classifier from ``models/`` (``None`` when ML is off)."""
    if not use_ml:
        return None
    from utils.ml.inference import MLClassifier

    return MLClassifier.from_directory(models_dir)


def make_jet_assigner(params: RunParameters, models_dir: str | Path | None = None) -> Any:
    """The NanoAOD jet-parton assignment (:class:`utils.ml.assignment.model.JetAssigner`) or
    ``None``: ``USE_JET_ASSIGNMENT="on"`` loads the models (a missing one is an error), ``"auto"``
    when the input is NanoAOD and ``models/jet_assignment_*`` exist, ``"off"`` never."""
    if params.use_jet_assignment == "off" or params.resolved_input_format != "nanoaod":
        return None
    from utils.ml.assignment.model import JetAssigner, models_available

    if params.use_jet_assignment == "auto" and not models_available(models_dir):
        log.info("USE_JET_ASSIGNMENT='auto': no jet-assignment models in models/, the assignment is off")
        return None
    return JetAssigner.from_directory(models_dir)


def process(
    params: RunParameters,
    fileset: dict[str, Any],
    config: AnalysisConfig,
    classifier: Classifier | None = None,
    luminosity: float | None = None,
    jet_assigner: Any = None,
) -> ProcessingResult:
    """The processing stage with the options of ``params`` (``jet_assigner``: see
    :func:`make_jet_assigner`). With ``FIT_DATA = "data"`` the MC is
    normalised to the luminosity of the data actually processed (the files the subset and the
    input checks kept, see :func:`utils.datasets.fileset.data_luminosity`; a data sample that
    records none stands for the analysis luminosity), unless ``luminosity`` is given. With a
    classifier the result holds its score histograms too (:func:`score_figures`)."""
    return process_fileset(
        fileset,
        params.processing_options(),
        config,
        classifier,
        luminosity,
        jet_assigner,
        luminosity_from_data=params.fit_data == "data",
    )


def score_figures(result: ProcessingResult, classifier: Any, config: AnalysisConfig, folder: Path) -> dict[str, Any]:
    """The classifier's score figures of the run's nominal MC events
    (:func:`utils.ml.evaluation.score_figures`), from the score histograms the processing stage
    filled; none without a classifier or without histograms (I/O-only mode)."""
    if classifier is None or result.score_histograms is None:
        return {}
    from utils.ml.evaluation import score_figures as draw

    return draw(classifier, result.score_histograms, config, folder)


def start_ml_category_fit(params: RunParameters, result: ProcessingResult, config: AnalysisConfig, output_dir: Path,
                          classifier: Classifier | None) -> Any:  # fmt: skip
    """The fit of this run's histograms with ML-score categories (USE_ML, with a fit), started
    now in a worker process (:func:`utils.run.measurement.start_ml_category_fit`) with the run's
    ``FIT_DATA``; None where the run has no such fit."""
    if classifier is None or result.histograms is None or not params.runs_fit:
        return None
    from utils.run.measurement import start_ml_category_fit as start

    return start(result.histograms, config, output_dir, fit_data=params.fit_data)
