"""Reproducible training of the per-region classifiers, and what it writes to ``models/``.

Data: a training dataset generated apart from the analysis datasets by the same generator (preset
``ml_training`` of ``utils/ml/training_data.yml``: nominal MC only, backgrounds oversampled, its
own seed 72015 against the analysis datasets' 2015, under ``data/training/``), so no event that a
model was trained or evaluated on reaches the analysis histograms. Its samples go through the
processor's own selection (:func:`utils.ml.features.build_feature_table`) and are split into
train / validation / test by event content.

Weighting (decided, recorded in each card): inside each class events carry their physics weight
xsec x lumi / nevts, so the background class is the mixture of W+jets and single top that the
analysis sees; the two classes are then scaled to equal total weight (and the weights to mean 1),
so the network neither ignores the signal nor learns the prior. Training with raw physics
weights would let W+jets dominate the loss by its cross-section; balancing per process would
train for a background mixture the analysis never has.

Reproducibility: one thread, ``torch.use_deterministic_algorithms(True)``, ``torch.manual_seed``
before the weights are initialised, and a seeded generator for the batch order; the saved files
are serialised in memory (fixed archive names), so the same inputs give bitwise the same files
for the same torch version. Early stopping keeps the epoch with the lowest validation loss.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from utils.config import REPO_ROOT, AnalysisConfig, load_analysis_config
from utils.errors import ModelError
from utils.io import atomic_path, write_json_atomic
from utils.ml.card import (
    CARD_SUFFIX,
    CARD_VERSION,
    DEFAULT_MODELS_DIR,
    EXPORT_SUFFIX,
    STATE_DICT_SUFFIX,
    ModelCard,
    load_card,
    sha256_bytes,
)
from utils.ml.features import SPLIT_FRACTIONS, SPLIT_METHOD, SPLITS, FeatureTable, build_feature_table, display_path
from utils.ml.model import ARCHITECTURES, Normalisation, ScoreModel

if TYPE_CHECKING:
    from utils.ml.evaluation import RegionEvaluation

log = logging.getLogger(__name__)

#: the training dataset: a preset of this presets file (schema of datasets/embedded/presets.yml) ...
TRAINING_PRESETS = Path(__file__).resolve().parent / "training_data.yml"
TRAINING_DATA_PRESET = "ml_training"
#: ... generated under this folder (data/embedded/ holds the analysis datasets), with the seed
#: the preset names (72015; the analysis datasets use 2015)
TRAINING_DATA_ROOT = REPO_ROOT / "data" / "training"

WEIGHTING = (
    "physics weights (xsec*lumi/nevts) within each class, classes scaled to equal total weight, "
    "weights scaled to mean 1 per split"
)


@dataclass(frozen=True)
class TrainingSettings:
    """Hyper-parameters of one training (the same for every region)."""

    architecture: str = "reference"
    seed: int = 1234
    learning_rate: float = 2e-3
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.architecture!r}; allowed: {sorted(ARCHITECTURES)}")

    @property
    def hidden(self) -> tuple[int, ...]:
        return ARCHITECTURES[self.architecture]


@dataclass
class TrainedModel:
    """A trained region model before it is written."""

    region: str
    features: tuple[str, ...]
    model: ScoreModel
    normalisation: Normalisation
    settings: TrainingSettings
    history: dict[str, list[float]]
    best_epoch: int
    counts: dict[str, dict[str, int]]
    seconds: float


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[torch.Generator]:
    """One thread, deterministic algorithms, seeded global and batch-order generators;
    the previous torch settings are restored afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def class_balanced_weights(labels: np.ndarray, physics_weights: np.ndarray) -> np.ndarray:
    """Physics weights normalised to equal total weight per class, then to mean 1."""
    labels = np.asarray(labels).astype(bool)
    w = np.asarray(physics_weights, dtype=np.float64)
    out = np.empty_like(w)
    for cls in (True, False):
        m = labels == cls
        total = w[m].sum()
        if not m.any() or total <= 0:
            raise ModelError(f"no {'signal' if cls else 'background'} events with positive weight to train on")
        out[m] = w[m] / total
    return out * (len(out) / out.sum())


def input_normalisation(x: np.ndarray) -> Normalisation:
    """Mean and standard deviation of each column (float32, unweighted, training split)."""
    mean = x.astype(np.float64).mean(axis=0)
    std = x.astype(np.float64).std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return Normalisation(
        tuple(float(v) for v in mean.astype(np.float32)), tuple(float(v) for v in std.astype(np.float32))
    )


def _tensors(table: FeatureTable, region: str, split: str, features: tuple[str, ...], signal: str):
    mask = table.mask(region, split)
    x = torch.from_numpy(table.matrix(features, mask))
    y = torch.from_numpy(table.labels(signal, mask).astype(np.float32))
    w = torch.from_numpy(class_balanced_weights(table.labels(signal, mask), table.weight[mask]).astype(np.float32))
    return x, y, w


def _weighted_bce(model: ScoreModel, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(model.logits(x), y, reduction="none")
    return (loss * w).sum() / w.sum()


def train_region(
    table: FeatureTable, region: str, config: AnalysisConfig, settings: TrainingSettings | None = None
) -> TrainedModel:
    """Train the classifier of one region on its train split, early-stopped on its validation split."""
    settings = settings or TrainingSettings()
    features = tuple(config.ml_features[region])
    signal = config.ml_signal_process
    t0 = time.perf_counter()
    x_train, y_train, w_train = _tensors(table, region, "train", features, signal)
    x_val, y_val, w_val = _tensors(table, region, "validation", features, signal)
    norm = input_normalisation(x_train.numpy())
    history: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}
    with deterministic_torch(settings.seed) as generator:
        model = ScoreModel(len(features), settings.hidden, norm)
        optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
        n = len(y_train)
        for epoch in range(1, settings.max_epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, settings.batch_size):
                idx = order[start : start + settings.batch_size]
                optimiser.zero_grad()
                loss = _weighted_bce(model, x_train[idx], y_train[idx], w_train[idx])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * float(w_train[idx].sum())
            model.eval()
            with torch.no_grad():
                val_loss = float(_weighted_bce(model, x_val, y_val, w_val))
            history["train_loss"].append(total / float(w_train.sum()))
            history["validation_loss"].append(val_loss)
            if val_loss < best_loss:
                best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= settings.patience:
                break
        model.load_state_dict(best_state)
        model.eval()
    seconds = time.perf_counter() - t0
    log.info(
        "%s: %d training events, best epoch %d of %d (validation loss %.4f), %.1f s",
        region,
        n,
        best_epoch,
        len(history["train_loss"]),
        best_loss,
        seconds,
    )
    return TrainedModel(region, features, model, norm, settings, history, best_epoch, table.counts(region), seconds)


def serialise(model: ScoreModel) -> tuple[bytes, bytes]:
    """(state_dict file, TorchScript export) as bytes; in-memory archives have fixed names, so
    identical weights give identical bytes."""
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    export = io.BytesIO()
    torch.jit.save(torch.jit.script(model.eval()), export)
    return state.getvalue(), export.getvalue()


def file_names(region: str) -> dict[str, str]:
    return {
        "card": f"{region}{CARD_SUFFIX}",
        "state_dict": f"{region}{STATE_DICT_SUFFIX}",
        "export": f"{region}{EXPORT_SUFFIX}",
    }


def write_model_files(trained: TrainedModel, models_dir: str | Path) -> dict[str, dict[str, str]]:
    """Write the weights and the export of a trained model; return names and sha256."""
    models_dir = Path(models_dir)
    names = file_names(trained.region)
    out = {}
    for kind, data in zip(("state_dict", "export"), serialise(trained.model), strict=True):
        with atomic_path(models_dir / names[kind]) as tmp:
            tmp.write_bytes(data)
        out[kind] = {"name": names[kind], "sha256": sha256_bytes(data)}
    return out


def library_versions() -> dict[str, str]:
    from utils.runinfo import package_versions

    installed = package_versions(("numpy", "numba", "awkward", "uproot", "coffea"))
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{k: v for k, v in installed.items() if v is not None},
    }


def card_content(
    trained: TrainedModel,
    files: dict[str, dict[str, str]],
    table: FeatureTable,
    config: AnalysisConfig,
    metrics: dict[str, Any] | None,
) -> dict[str, Any]:
    """The model card JSON of a written model."""
    used_files = sorted({int(i) for i in table.file_index[table.mask(trained.region)]})
    return {
        "card_version": CARD_VERSION,
        "region": trained.region,
        "task": f"{config.ml_signal_process} (1) against every other process (0), events selected in {trained.region}",
        "signal_process": config.ml_signal_process,
        "features": list(trained.features),
        "feature_source": "utils.processing.selection.select_events (nominal jet variation), columns of EventSelection.features",
        "normalisation": {
            "mean": list(trained.normalisation.mean),
            "std": list(trained.normalisation.std),
            "applied": "inside the export: score = sigmoid(net((x - mean) / std))",
        },
        "architecture": {
            "name": trained.settings.architecture,
            "hidden": list(trained.settings.hidden),
            "layers": f"Linear-ReLU x{len(trained.settings.hidden)} of widths {list(trained.settings.hidden)}, "
            "Linear(., 1), Sigmoid",
        },
        "score_threshold": config.ml_score_threshold,
        "files": files,
        "training": {
            "dataset": table.source,
            "files": [table.files[i].to_dict() for i in used_files],
            "split": {"method": SPLIT_METHOD, "fractions": dict(zip(SPLITS, SPLIT_FRACTIONS, strict=True))},
            "events": trained.counts,
            "weighting": WEIGHTING,
            "loss": "binary cross-entropy on logits, weighted",
            "optimiser": "Adam",
            "settings": asdict(trained.settings),
            "seed": trained.settings.seed,
            "deterministic": {"torch_threads": 1, "use_deterministic_algorithms": True},
            "best_epoch": trained.best_epoch,
            "epochs_run": len(trained.history["train_loss"]),
            "validation_loss": round(trained.history["validation_loss"][trained.best_epoch - 1], 6),
        },
        "metrics": metrics or {},
        "versions": library_versions(),
    }


@dataclass
class TrainingRun:
    """Everything one training produced."""

    dataset_path: Path | None
    table: FeatureTable
    models: dict[str, TrainedModel]
    cards: dict[str, ModelCard]
    evaluations: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def training_dataset(
    preset: str = TRAINING_DATA_PRESET,
    seed: int | None = None,
    output_root: Path = TRAINING_DATA_ROOT,
    workers: int = 1,
    presets_path: Path = TRAINING_PRESETS,
) -> Path:
    """The training dataset description (generated on first use, then cached).

    ``seed`` None: the preset's. The folder must not be the analysis datasets' folder.
    """
    from utils.datasets.embedded import DEFAULT_OUTPUT_ROOT, build_dataset

    if Path(output_root).resolve() == Path(DEFAULT_OUTPUT_ROOT).resolve():
        raise ModelError(f"{output_root}: the training dataset must not live beside the analysis datasets")
    result = build_dataset(preset, Path(output_root), seed, workers, with_data=False, presets_path=presets_path)
    return Path(result.fileset_path)


def _generator_info(dataset_path: Path, preset: str, presets_path: Path) -> dict[str, Any]:
    """What generated the training dataset: its description, preset, seed, generator version and
    physics-model fingerprint (from the generator's manifest beside the description)."""
    import json

    description = json.loads(Path(dataset_path).read_text())
    generators = {json.dumps(e.get("generator", {}), sort_keys=True) for v in description.values() for e in v.values()}
    manifest_path = Path(dataset_path).parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return {
        "description": display_path(dataset_path),
        "presets": display_path(presets_path),
        "preset": preset,
        "generator": [json.loads(g) for g in sorted(generators)],
        "generator_model_fingerprint": manifest.get("model_fingerprint"),
        "generator_cache_key": manifest.get("key"),
        "samples": "nominal MC samples only",
    }


def train_models(
    table: FeatureTable,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    config: AnalysisConfig | None = None,
    settings: TrainingSettings | None = None,
    regions: tuple[str, ...] | None = None,
) -> TrainingRun:
    """Train every region's model on ``table``, write weights, exports and cards to ``models_dir``
    and evaluate each export on the test split (the cards record those metrics)."""
    from utils.ml.evaluation import evaluate_classifier
    from utils.ml.inference import MLClassifier, RegionModel

    config = config or load_analysis_config()
    settings = settings or TrainingSettings()
    models_dir = Path(models_dir)
    regions = regions or tuple(config.ml_features)
    t0 = time.perf_counter()
    trained = {r: train_region(table, r, config, settings) for r in regions}
    files = {r: write_model_files(trained[r], models_dir) for r in regions}
    names = file_names
    classifier = MLClassifier(
        tuple(
            RegionModel(
                r,
                str((models_dir / files[r]["export"]["name"]).resolve()),
                files[r]["export"]["sha256"],
                trained[r].features,
                str(models_dir / names(r)["card"]),
            )
            for r in regions
        ),
        config.ml_score_threshold,
    )
    evaluations = evaluate_classifier(classifier, table, config, "test")
    on_train = evaluate_classifier(classifier, table, config, "train")
    cards = {}
    for r in regions:
        metrics = {
            "test": evaluations[r].summary(),
            "score_distributions": score_distributions(on_train[r], evaluations[r]),
        }
        path = models_dir / names(r)["card"]
        write_json_atomic(path, card_content(trained[r], files[r], table, config, metrics))
        cards[r] = load_card(path)
        log.info(
            "%s: test AUC %.4f (baseline %s %.4f); wrote %s",
            r,
            evaluations[r].roc.auc,
            evaluations[r].baseline_variable,
            evaluations[r].baseline_roc.auc,
            path,
        )
    return TrainingRun(None, table, trained, cards, evaluations, time.perf_counter() - t0)


def score_distributions(train: RegionEvaluation, test: RegionEvaluation) -> dict[str, Any]:
    """A card's ``metrics.score_distributions``: the train and test splits' signal and background
    score distributions (:func:`utils.ml.evaluation.score_distribution`), to compare with any
    dataset's (overtraining shows as train and test disagreeing)."""
    from utils.ml.evaluation import score_distribution

    return {"train": score_distribution(train), "test": score_distribution(test)}


def record_score_distributions(
    models_dir: str | Path = DEFAULT_MODELS_DIR, workers: int = 1, config: AnalysisConfig | None = None
) -> dict[str, Path]:
    """Add the train and test score distributions to the cards of models trained before cards
    recorded them, without retraining: the card's training dataset is regenerated (or found),
    its events selected and split as in training and scored through the exports. The test AUC
    must equal the card's (the same events), else nothing is written."""
    from utils.datasets.fileset import build_fileset
    from utils.ml.evaluation import evaluate_classifier
    from utils.ml.inference import MLClassifier

    config = config or load_analysis_config()
    models_dir = Path(models_dir)
    classifier = MLClassifier.from_directory(models_dir, config)
    cards = {m.region: load_card(m.card_path) for m in classifier.models}
    presets = {c.content["training"]["dataset"]["preset"] for c in cards.values()}
    if len(presets) != 1:
        raise ModelError(f"the cards in {models_dir} name different training datasets: {sorted(presets)}")
    preset = presets.pop()
    table = build_feature_table(build_fileset(training_dataset(preset, workers=workers)), config, workers=workers)
    test = evaluate_classifier(classifier, table, config, "test")
    train = evaluate_classifier(classifier, table, config, "train")
    written = {}
    for region, card in cards.items():
        recorded = card.metrics.get("test", {}).get("auc")
        if recorded is None or round(test[region].roc.auc, 6) != recorded:
            raise ModelError(
                f"{card.path}: test AUC {test[region].roc.auc:.6f} of the regenerated training events, the card "
                f"records {recorded}: not the events the model was evaluated on; retrain (agc train)"
            )
        content = dict(card.content)
        content["metrics"] = {**card.metrics, "score_distributions": score_distributions(train[region], test[region])}
        write_json_atomic(card.path, content)
        written[region] = card.path
        log.info("%s: train and test score distributions recorded in %s", region, card.path)
    return written


def train_all(
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    *,
    preset: str = TRAINING_DATA_PRESET,
    data_seed: int | None = None,
    data_root: Path = TRAINING_DATA_ROOT,
    presets_path: Path = TRAINING_PRESETS,
    settings: TrainingSettings | None = None,
    workers: int = 1,
    config: AnalysisConfig | None = None,
) -> TrainingRun:
    """The whole training: dataset (generated if needed), selection, training, export, cards.
    ``agc train`` and ``notebooks/ml_training`` both call this."""
    from utils.datasets.fileset import build_fileset

    config = config or load_analysis_config()
    t0 = time.perf_counter()
    dataset_path = training_dataset(preset, data_seed, data_root, workers, presets_path)
    table = build_feature_table(
        build_fileset(dataset_path), config, workers=workers, source=_generator_info(dataset_path, preset, presets_path)
    )
    run = train_models(table, models_dir, config, settings)
    run.dataset_path = dataset_path
    run.seconds = time.perf_counter() - t0
    log.info("training done in %.1f s", run.seconds)
    return run
