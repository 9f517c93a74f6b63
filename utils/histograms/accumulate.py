"""Histogram accumulation, conversion to ``hist``, and ``histograms.root`` with pseudo-data.

Bit-identical results whatever the chunking or executor: events are accumulated with weights
quantised to fixed point (2**-24) in int64, whose sums do not depend on the order of
additions. The sample normalisation (xsec x lumi / nevts_total) is applied once, when the
accumulators are converted to a :class:`hist.Hist`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import hist
import numpy as np
import uproot

from utils.config import AnalysisConfig
from utils.errors import AGCError
from utils.io import atomic_path

log = logging.getLogger(__name__)

FIXED_POINT_SCALE = float(2**24)
# a chunk's quantised sums are exact in float64 below 2**53 and must leave room in int64 for the
# sum over many chunks: a fill whose |w| x 2**24 (or w**2 x 2**24) sums past this is refused
MAX_FILL_SUM = float(2**52)
N_CLASSES = 2  # ML classification: 0 predicted background, 1 predicted signal


@dataclass
class HistogramAccumulator:
    """Per-sample histograms of one process: (variation, region, class, bin incl. flow).

    ``sumw`` and ``sumw2`` are int64 in units of 2**-24 (exactly associative); ``variations``
    is the ordered list of variation names this sample fills.
    """

    process: str
    variations: tuple[str, ...]
    n_regions: int
    n_bins: int
    low: float
    high: float
    sumw: np.ndarray
    sumw2: np.ndarray

    @classmethod
    def empty(cls, config: AnalysisConfig, process: str, variations: tuple[str, ...]) -> HistogramAccumulator:
        shape = (len(variations), len(config.regions), N_CLASSES, config.hist_bins + 2)
        return cls(process, tuple(variations), len(config.regions), config.hist_bins, config.hist_low,
                   config.hist_high, np.zeros(shape, np.int64), np.zeros(shape, np.int64))  # fmt: skip

    def bin_index(self, x: np.ndarray) -> np.ndarray:
        """Bin index with flow: 0 underflow, 1..n regular, n+1 overflow (NaN goes to overflow)."""
        z = (np.asarray(x, dtype=np.float64) - self.low) / (self.high - self.low) * self.n_bins
        idx = np.floor(z)
        idx = np.where(np.isnan(idx), self.n_bins, idx)
        return (np.clip(idx, -1, self.n_bins) + 1).astype(np.int64)

    def fill(
        self,
        variation: str,
        region: np.ndarray,
        observable: np.ndarray,
        classification: np.ndarray,
        weight: np.ndarray | None = None,
    ) -> None:
        v = self.variations.index(variation)
        flat = ((region * N_CLASSES + classification) * (self.n_bins + 2) + self.bin_index(observable)).astype(np.int64)
        size = self.n_regions * N_CLASSES * (self.n_bins + 2)
        if weight is None:
            counts = np.bincount(flat, minlength=size).astype(np.int64) * np.int64(FIXED_POINT_SCALE)
            self.sumw[v] += counts.reshape(self.sumw.shape[1:])
            self.sumw2[v] += counts.reshape(self.sumw.shape[1:])
            return
        w = np.asarray(weight, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            qw = np.rint(w * FIXED_POINT_SCALE)
            qw2 = np.rint(w * w * FIXED_POINT_SCALE)
            total = float(np.abs(qw2).sum()) + float(np.abs(qw).sum())
        if not np.isfinite(total) or total >= MAX_FILL_SUM:
            finite = np.isfinite(w)
            worst = "non-finite" if not finite.all() else f"up to {np.abs(w).max():.3g}"
            raise AGCError(
                f"{self.process}/{variation}: event weights {worst} cannot be held by the fixed-point "
                f"accumulator (limit: sum of w**2 below {MAX_FILL_SUM / FIXED_POINT_SCALE:.3g} per chunk); "
                "check the inputs' kinematics (objects.jet_pt_max in the analysis configuration)"
            )
        # integer-valued float64 sums are exact below 2**53 (a chunk never gets near it)
        self.sumw[v] += np.bincount(flat, weights=qw, minlength=size).astype(np.int64).reshape(self.sumw.shape[1:])
        self.sumw2[v] += np.bincount(flat, weights=qw2, minlength=size).astype(np.int64).reshape(self.sumw.shape[1:])

    def __add__(self, other: HistogramAccumulator) -> HistogramAccumulator:
        out = HistogramAccumulator(self.process, self.variations, self.n_regions, self.n_bins, self.low, self.high,
                                   self.sumw.copy(), self.sumw2.copy())  # fmt: skip
        out += other
        return out

    def __iadd__(self, other: HistogramAccumulator) -> HistogramAccumulator:
        if other.variations != self.variations or other.sumw.shape != self.sumw.shape:
            raise ValueError(f"cannot add histograms of {self.process} with different variations or binning")
        self.sumw += other.sumw
        self.sumw2 += other.sumw2
        return self


def empty_hist(
    config: AnalysisConfig, processes: list[str] | None = None, variations: list[str] | None = None
) -> hist.Hist:
    """The analysis histogram: observable x region x process x variation x classification."""
    return (
        hist.Hist.new.Reg(config.hist_bins, config.hist_low, config.hist_high, name="observable",
                          label="observable [GeV]")
        .StrCat(list(config.region_names), name="region", label="Region")
        .StrCat(processes or [], name="process", label="Process", growth=True)
        .StrCat(variations or [], name="variation", label="Systematic variation", growth=True)
        .IntCat(list(range(N_CLASSES)), name="classification", label="ML classification (0 bkg, 1 sig)")
        .Weight()
    )  # fmt: skip


def to_hist(
    accumulators: Mapping[str, HistogramAccumulator], normalisation: Mapping[str, float], config: AnalysisConfig
) -> hist.Hist:
    """Convert per-sample accumulators to one weighted ``hist.Hist``.

    ``normalisation`` maps each sample (``process__variation``) to its per-event weight
    (xsec x lumi / nevts_total, or 1 for data). Samples are added in sorted order.
    """
    processes = sorted({a.process for a in accumulators.values()})
    variations: list[str] = []
    for sample in sorted(accumulators):
        variations += [v for v in accumulators[sample].variations if v not in variations]
    variations.sort(key=lambda v: (v != "nominal", v))
    h = empty_hist(config, processes, variations)
    view = h.view(flow=True)
    for sample in sorted(accumulators):
        acc = accumulators[sample]
        norm = float(normalisation[sample])
        ip = h.axes["process"].index(acc.process)
        for v, variation in enumerate(acc.variations):
            iv = h.axes["variation"].index(variation)
            sumw = acc.sumw[v] / FIXED_POINT_SCALE * norm
            sumw2 = acc.sumw2[v] / FIXED_POINT_SCALE * norm * norm
            # hist view axes: (observable+flow, region, process, variation, classification)
            view.value[:, : acc.n_regions, ip, iv, :N_CLASSES] += np.transpose(sumw, (2, 0, 1))  # type: ignore[attr-defined]
            view.variance[:, : acc.n_regions, ip, iv, :N_CLASSES] += np.transpose(sumw2, (2, 0, 1))  # type: ignore[attr-defined]
    return h


def histogram_name(region: str, process: str, variation: str) -> str:
    """The name a template has in ``histograms.root``: ``{region}_{process}[_{variation}]``."""
    return f"{region}_{process}" if variation == "nominal" else f"{region}_{process}_{variation}"


def category_name(classification: int) -> str:
    """ML-score category tag in histogram names: ``{region}_ML{c}_{process}[_{variation}]``."""
    return f"ML{classification}"


def _project(h: hist.Hist, region: str, process: str, variation: str, classification=sum) -> hist.Hist:
    cls = sum if classification is sum else hist.loc(classification)
    return cast(hist.Hist, h[{"region": region, "process": process, "variation": variation, "classification": cls}])


@dataclass(frozen=True)
class AnalysisHistograms:
    """The filled analysis histogram and which (process, variation) cells were filled
    (a cell of the category product that no sample filled is not a template)."""

    hist: hist.Hist
    filled: frozenset[tuple[str, str]]

    @classmethod
    def from_accumulators(
        cls, accumulators: Mapping[str, HistogramAccumulator], normalisation: Mapping[str, float],
        config: AnalysisConfig,
    ) -> AnalysisHistograms:  # fmt: skip
        filled = frozenset((a.process, v) for a in accumulators.values() for v in a.variations)
        return cls(to_hist(accumulators, normalisation, config), filled)

    def __getitem__(self, key):
        return self.hist[key]


def template_histograms(
    histograms: AnalysisHistograms, config: AnalysisConfig, ml_categories: bool = False
) -> dict[str, hist.Hist]:
    """All 1D templates by their ``histograms.root`` name, plus ``{region}_pseudodata``.

    With ``ml_categories``, also every template split by ML classification, named
    ``{region}_ML{c}_{process}[_{variation}]`` (and ``{region}_ML{c}_pseudodata``).
    """
    out: dict[str, hist.Hist] = {}
    categories: list = [sum] + (list(range(N_CLASSES)) if ml_categories else [])
    for region in config.region_names:
        for cls in categories:
            tag = region if cls is sum else f"{region}_{category_name(cls)}"
            for process, variation in sorted(histograms.filled):
                out[histogram_name(tag, process, variation)] = _project(
                    histograms.hist, region, process, variation, cls
                )
            out[f"{tag}_pseudodata"] = pseudodata(histograms, region, config, cls)
    return out


def pseudodata(histograms: AnalysisHistograms, region: str, config: AnalysisConfig, classification=sum) -> hist.Hist:
    """Pseudo-data of a region as configured (sum of weight x template)."""
    out = None
    missing = []
    for process, variation, weight in config.pseudodata:
        if (process, variation) not in histograms.filled:
            missing.append(f"{process}/{variation}")
            continue
        part = _project(histograms.hist, region, process, variation, classification) * weight
        out = part if out is None else out + part
    if missing:
        raise AGCError(
            f"pseudo-data needs samples that were not processed: {missing}; process them "
            f"or change 'pseudodata' in {config.source}"
        )
    if out is None:
        raise AGCError(f"{config.source}: 'pseudodata' lists no sample")
    return out


def save_histograms(
    histograms: AnalysisHistograms, path: str | Path, config: AnalysisConfig, ml_categories: bool = False
) -> list[str]:
    """Write every template and the pseudo-data to ``path`` (atomically); return the names."""
    templates = template_histograms(histograms, config, ml_categories)
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for name in sorted(templates):
            f[name] = templates[name]
    log.info("wrote %d histograms to %s", len(templates), path)
    return sorted(templates)
