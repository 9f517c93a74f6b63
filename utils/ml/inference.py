"""Inference in the processor: :class:`MLClassifier`.

The handle carries only paths, hashes, feature names and the threshold, so it pickles cheaply
to futures (loky/process pool) and Dask workers. Each worker process loads a TorchScript export
once, lazily, on its first chunk, into a module-level cache keyed by (path, sha256); the hash is
checked when loading. Inference is one batched call per region and chunk, under
``torch.inference_mode``, on the float32 matrix the processor passes (no Python loop over events,
no lists); the export applies the input normalisation itself, so it takes raw features.

torch is imported only when a model is first used.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import AnalysisConfig, load_analysis_config
from utils.errors import ModelError
from utils.ml.card import DEFAULT_MODELS_DIR, RETRAIN_HINT, ModelCard, card_path, load_card, sha256_file, verify_file

log = logging.getLogger(__name__)

# (export path, sha256) -> loaded TorchScript module, one per worker process
_LOADED: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _load_export(path: str, sha256: str, num_threads: int | None) -> Any:
    key = (path, sha256)
    module = _LOADED.get(key)
    if module is not None:
        return module
    with _LOCK:
        module = _LOADED.get(key)
        if module is None:
            import torch

            if num_threads is not None and torch.get_num_threads() != num_threads:
                torch.set_num_threads(num_threads)
            if not Path(path).is_file():
                raise ModelError(f"{path}: model export not found on this worker; {RETRAIN_HINT}")
            found = sha256_file(path)
            if found != sha256:
                raise ModelError(f"{path}: sha256 {found} differs from the model card's {sha256}; {RETRAIN_HINT}")
            try:
                module = torch.jit.load(path, map_location="cpu")
            except Exception as err:  # truncated or foreign file: the model, not the data, is at fault
                raise ModelError(
                    f"{path}: the model export does not load as TorchScript ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); {RETRAIN_HINT}"
                ) from None
            module.eval()
            _LOADED[key] = module
            log.debug("loaded %s", path)
    return module


def clear_cache() -> None:
    """Forget the loaded models of this process (tests)."""
    with _LOCK:
        _LOADED.clear()


@dataclass(frozen=True)
class RegionModel:
    """Where one region's model is and what it expects."""

    region: str
    export_path: str
    export_sha256: str
    features: tuple[str, ...]
    card_path: str


@dataclass(frozen=True)
class MLClassifier:
    """Per-region ttbar classifier for :class:`utils.processing.processor.TtbarAnalysis`.

    ``classify(region, X)`` returns 1 where the score exceeds ``threshold`` (the analysis
    configuration's ``ml.score_threshold``), 0 elsewhere. ``num_threads``: the torch intra-op
    threads set in a process when it loads its first model (1: workers do not oversubscribe
    the cores; ``None`` leaves torch's setting alone).
    """

    models: tuple[RegionModel, ...]
    threshold: float
    num_threads: int | None = 1

    @classmethod
    def from_directory(
        cls, models_dir: str | Path | None = None, config: AnalysisConfig | None = None, num_threads: int | None = 1
    ) -> MLClassifier:
        """Load the cards of every region with configured ML features from ``models_dir``
        (default: the repository's ``models/``), check them against the analysis configuration
        and verify the sha256 of each export."""
        config = config or load_analysis_config()
        models_dir = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
        models = []
        for region in config.ml_features:
            card = load_card(card_path(models_dir, region))
            check_card(card, config, region)
            verify_file(card, "export")
            models.append(
                RegionModel(region, str(card.export_path.resolve()), card.export_sha256, card.features, str(card.path))
            )
        log.info("ML classifier: %s from %s", ", ".join(m.region for m in models), models_dir)
        return cls(tuple(models), config.ml_score_threshold, num_threads)

    def _model(self, region: str) -> RegionModel | None:
        for m in self.models:
            if m.region == region:
                return m
        return None

    def warm(self) -> None:
        """Import torch and load every region's export in this process (and run each once, so the
        TorchScript executor's first-call optimisation is done too). Picklable as a bound method:
        pass it as ``make_executor(..., warm=classifier.warm)`` so workers load before the clock runs."""
        for m in self.models:
            self.scores(m.region, np.zeros((2, len(m.features)), dtype=np.float32))

    def feature_names(self, region: str) -> tuple[str, ...] | None:
        m = self._model(region)
        return None if m is None else m.features

    def scores(self, region: str, features: np.ndarray) -> np.ndarray:
        """Signal scores (float32 ``[n]``) of raw features ``[n, k]`` in the card's order."""
        m = self._model(region)
        if m is None:
            raise ModelError(f"no ML model for region {region!r}; models for: {[x.region for x in self.models]}")
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(m.features):
            raise ModelError(
                f"{m.card_path}: the model of {region} takes {len(m.features)} features {list(m.features)}, "
                f"got an array of shape {x.shape}"
            )
        if len(x) == 0:
            return np.empty(0, dtype=np.float32)
        import torch

        module = _load_export(m.export_path, m.export_sha256, self.num_threads)
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy().copy()

    def classify(self, region: str, features: np.ndarray) -> np.ndarray:
        """0 (background-like) or 1 (signal-like) per event (int64)."""
        return (self.scores(region, features) > self.threshold).astype(np.int64)


def check_card(card: ModelCard, config: AnalysisConfig, region: str) -> None:
    """The card must be the one of ``region`` and list the configuration's features in order."""
    expected = config.ml_features.get(region)
    if expected is None:
        raise ModelError(
            f"{card.path}: region {region!r} has no ML features in {config.source}; configured: {list(config.ml_features)}"
        )
    if card.region != region:
        raise ModelError(f"{card.path}: card is for region {card.region!r}, expected {region!r}; {RETRAIN_HINT}")
    if tuple(card.features) != tuple(expected):
        raise ModelError(
            f"{card.path}: feature mismatch for region {region}: {config.source} expects {list(expected)}, "
            f"the model card has {list(card.features)}; {RETRAIN_HINT}"
        )
    if card.signal_process != config.ml_signal_process:
        raise ModelError(
            f"{card.path}: trained for signal {card.signal_process!r}, {config.source} says "
            f"{config.ml_signal_process!r}; {RETRAIN_HINT}"
        )
    if card.score_threshold != config.ml_score_threshold:
        log.warning(
            "%s: metrics were computed at score threshold %s, the analysis uses %s",
            card.path,
            card.score_threshold,
            config.ml_score_threshold,
        )
