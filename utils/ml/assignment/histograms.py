"""The 20 feature histograms of the chosen assignments, and ``histograms_ml.root``.

The processor fills a :class:`FeatureAccumulator` per sample (fixed-point sums as
:class:`utils.histograms.accumulate.HistogramAccumulator`, so the result does not depend on
chunking or executor), for the same variations as the analysis histograms: jet variations
recompute the features, weight variations reweight them. :class:`FeatureHistograms` applies the
sample normalisation; :func:`save_feature_histograms` writes ``histograms_ml.root`` with the AGC's
keys ``<feature>_<process>[_<variation>]`` and ``<feature>_pseudodata`` (the analysis
configuration's pseudo-data), 25 bins each over the feature's range
(:data:`utils.ml.assignment.features.FEATURES`). As the AGC, ``offset`` (1e-6) is added to every
bin, flow bins included, so that no template bin is exactly empty in a fit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import hist
import numpy as np
import uproot

from utils.config import AnalysisConfig
from utils.errors import AGCError
from utils.histograms.accumulate import FIXED_POINT_SCALE, MAX_FILL_SUM, histogram_name
from utils.io import atomic_path
from utils.ml.assignment.features import FEATURES, N_BINS

log = logging.getLogger(__name__)

OFFSET = 1e-6
_LOW = np.array([f.low for f in FEATURES])
_HIGH = np.array([f.high for f in FEATURES])


def bin_indices(features: np.ndarray) -> np.ndarray:
    """Bin index with flow per feature ``[n, 20]``: 0 underflow, 1..25, 26 overflow (NaN: overflow)."""
    z = np.floor((np.asarray(features, dtype=np.float64) - _LOW) / (_HIGH - _LOW) * N_BINS)
    z = np.where(np.isnan(z), N_BINS, z)
    return (np.clip(z, -1, N_BINS) + 1).astype(np.int64)


@dataclass
class FeatureAccumulator:
    """Fixed-point sums ``[variation, feature, bin incl. flow]`` (int64, units of 2**-24)."""

    process: str
    variations: tuple[str, ...]
    sumw: np.ndarray
    sumw2: np.ndarray

    @classmethod
    def empty(cls, process: str, variations: tuple[str, ...]) -> FeatureAccumulator:
        shape = (len(variations), len(FEATURES), N_BINS + 2)
        return cls(process, tuple(variations), np.zeros(shape, np.int64), np.zeros(shape, np.int64))

    def fill(self, variation: str, features: np.ndarray, weight: np.ndarray | None = None) -> None:
        v = self.variations.index(variation)
        n_cells = len(FEATURES) * (N_BINS + 2)
        flat = (np.arange(len(FEATURES)) * (N_BINS + 2) + bin_indices(features)).ravel()
        w = np.ones(len(features)) if weight is None else np.asarray(weight, dtype=np.float64)
        qw, qw2 = np.rint(w * FIXED_POINT_SCALE), np.rint(w * w * FIXED_POINT_SCALE)
        if not np.isfinite(qw2).all() or float(np.abs(qw2).sum() + np.abs(qw).sum()) >= MAX_FILL_SUM:
            raise AGCError(f"{self.process}/{variation}: jet-assignment weights cannot be held by the accumulator")
        per_cell = np.repeat(qw, len(FEATURES)), np.repeat(qw2, len(FEATURES))
        self.sumw[v] += np.bincount(flat, per_cell[0], n_cells).astype(np.int64).reshape(self.sumw.shape[1:])
        self.sumw2[v] += np.bincount(flat, per_cell[1], n_cells).astype(np.int64).reshape(self.sumw.shape[1:])

    def __add__(self, other: FeatureAccumulator) -> FeatureAccumulator:
        out = FeatureAccumulator(self.process, self.variations, self.sumw.copy(), self.sumw2.copy())
        out += other
        return out

    def __iadd__(self, other: FeatureAccumulator) -> FeatureAccumulator:
        if other.variations != self.variations or other.sumw.shape != self.sumw.shape:
            raise ValueError(f"cannot add jet-assignment histograms of {self.process} with different variations")
        self.sumw += other.sumw
        self.sumw2 += other.sumw2
        return self


@dataclass(frozen=True)
class FeatureHistograms:
    """Normalised sums and variances ``[feature, bin incl. flow]`` per (process, variation)."""

    values: dict[tuple[str, str], np.ndarray]
    variances: dict[tuple[str, str], np.ndarray]

    @classmethod
    def from_accumulators(
        cls, accumulators: Mapping[str, FeatureAccumulator], normalisation: Mapping[str, float]
    ) -> FeatureHistograms:
        values: dict[tuple[str, str], np.ndarray] = {}
        variances: dict[tuple[str, str], np.ndarray] = {}
        for sample in sorted(accumulators):
            acc, norm = accumulators[sample], float(normalisation[sample])
            for v, variation in enumerate(acc.variations):
                key = (acc.process, variation)
                values[key] = values.get(key, 0) + acc.sumw[v] / FIXED_POINT_SCALE * norm
                variances[key] = variances.get(key, 0) + acc.sumw2[v] / FIXED_POINT_SCALE * norm * norm
        return cls(values, variances)

    def histogram(self, feature: int, values: np.ndarray, variances: np.ndarray, offset: float = 0.0) -> hist.Hist:
        f = FEATURES[feature]
        h = hist.Hist.new.Reg(N_BINS, f.low, f.high, name="observable", label=f.label).Weight()
        view = h.view(flow=True)
        view.value[...] = values[feature] + offset
        view.variance[...] = variances[feature]
        return h

    def templates(
        self, config: AnalysisConfig, offset: float = OFFSET, pseudodata: bool = True
    ) -> dict[str, hist.Hist]:
        """Every histogram of ``histograms_ml.root`` by name."""
        out: dict[str, hist.Hist] = {}
        for i, feature in enumerate(FEATURES):
            for process, variation in sorted(self.values):
                out[histogram_name(feature.name, process, variation)] = self.histogram(
                    i, self.values[(process, variation)], self.variances[(process, variation)], offset
                )
            if pseudodata:
                out[f"{feature.name}_pseudodata"] = self.pseudodata(i, config, offset)
        return out

    def pseudodata(self, feature: int, config: AnalysisConfig, offset: float) -> hist.Hist:
        missing = [f"{p}/{v}" for p, v, _ in config.pseudodata if (p, v) not in self.values]
        if missing:
            raise AGCError(f"jet-assignment pseudo-data needs samples that were not processed: {missing}")
        values = sum(w * self.values[(p, v)] for p, v, w in config.pseudodata)
        variances = sum(w * w * self.variances[(p, v)] for p, v, w in config.pseudodata)
        return self.histogram(feature, np.asarray(values), np.asarray(variances), offset)


def save_feature_histograms(
    histograms: FeatureHistograms,
    path: str | Path,
    config: AnalysisConfig,
    offset: float = OFFSET,
    pseudodata: bool = True,
) -> list[str]:
    """Write ``histograms_ml.root`` atomically; return the names."""
    templates = histograms.templates(config, offset, pseudodata)
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for name in sorted(templates):
            f[name] = templates[name]
    log.info("wrote %d jet-assignment histograms to %s", len(templates), path)
    return sorted(templates)
