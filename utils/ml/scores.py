"""The classifier's score histograms of a run, filled by the processor, and the score
distributions and ROC curves taken from them.

The processor (:class:`utils.processing.processor.TtbarAnalysis`) scores every selected event
once per chunk, and classifies it from that score. For the nominal jets of the nominal MC
samples it also counts the scores per region in :data:`FINE_BINS` bins on [0, 1]
(:class:`ScoreAccumulator`). Nominal events carry unit weight, so the counts are integers and
their sums do not depend on chunking or executor. After the run, :class:`ScoreHistograms`
scales each sample's counts by the analysis histograms' per-sample normalisation (xsec x lumi /
nevts) and adds them per process.

The figures' :data:`SCORE_BINS` (25 bins) are exact rebinnings of the fine bins (40 fine bins
each). The binned ROC curve has one point per fine-bin edge, so two events in the same fine bin
count as a tie (one half in the AUC, as :func:`utils.ml.evaluation.roc_curve` counts equal
scores). That moves the AUC by at most half the weight of the signal-background pairs in the
same bin, about 1e-3 or less for these distributions.

No matplotlib and no torch here: the processor's workers import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: fine score bins on [0, 1] that the processor fills
FINE_BINS = 1000
#: score bins of the distributions that a model card records (train and test splits) and that the figures draw
SCORE_BINS = np.linspace(0.0, 1.0, 26)
assert FINE_BINS % (len(SCORE_BINS) - 1) == 0, "SCORE_BINS must be a rebinning of the fine bins"


@dataclass(frozen=True)
class RocCurve:
    """False and true positive rates for decreasing thresholds, from (0, 0) to (1, 1)."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def fine_bin(scores: np.ndarray) -> np.ndarray:
    """The fine bin (0 to ``FINE_BINS - 1``) of each score: [k, k + 1) / FINE_BINS, the last bin
    closed (a score of exactly 1 goes in it, as in ``np.histogram``). Scores outside [0, 1] go in
    the first or last bin, and so does NaN (in the last one), which a sigmoid never gives."""
    z = np.floor(np.asarray(scores, dtype=np.float64) * FINE_BINS)
    z = np.where(np.isnan(z), FINE_BINS - 1, z)
    return np.clip(z, 0, FINE_BINS - 1).astype(np.int64)


def binned_roc(signal: np.ndarray, background: np.ndarray) -> RocCurve:
    """The ROC curve of weighted score histograms that share their bins (lowest score first). The
    thresholds are the bin edges, highest first. The AUC is the trapezoid sum, so a signal and a
    background event in one bin count one half."""
    s, b = np.asarray(signal, dtype=np.float64), np.asarray(background, dtype=np.float64)
    if s.shape != b.shape or s.ndim != 1:
        raise ValueError(f"signal and background histograms of different shapes: {s.shape} and {b.shape}")
    if not s.sum() > 0 or not b.sum() > 0:
        raise ValueError("a ROC curve needs events of both classes")
    tp = np.r_[0.0, np.cumsum(s[::-1])]
    fp = np.r_[0.0, np.cumsum(b[::-1])]
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return RocCurve(fpr, tpr, auc)


@dataclass
class ScoreAccumulator:
    """Counts of the scores of one sample's nominal events: ``counts[region, fine bin]`` (int64),
    the regions in the order of the analysis configuration (a region without a model stays empty)."""

    process: str
    counts: np.ndarray

    @classmethod
    def empty(cls, process: str, n_regions: int) -> ScoreAccumulator:
        return cls(process, np.zeros((n_regions, FINE_BINS), np.int64))

    def fill(self, region: np.ndarray, scores: np.ndarray) -> None:
        """Count ``scores`` of events in regions ``region`` (indices into the configuration's regions)."""
        flat = np.asarray(region, dtype=np.int64) * FINE_BINS + fine_bin(scores)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def __add__(self, other: ScoreAccumulator) -> ScoreAccumulator:
        out = ScoreAccumulator(self.process, self.counts.copy())
        out += other
        return out

    def __iadd__(self, other: ScoreAccumulator) -> ScoreAccumulator:
        if other.process != self.process or other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot add score histograms of {self.process} and {other.process} "
                             f"of shapes {self.counts.shape} and {other.counts.shape}")  # fmt: skip
        self.counts += other.counts
        return self


@dataclass(frozen=True)
class RegionScores:
    """One region's score histograms on the fine bins: the signal process and the other
    processes together, physics-weighted, with their numbers of events."""

    region: str
    signal_process: str
    threshold: float
    signal: np.ndarray
    background: np.ndarray
    signal_events: int
    background_events: int

    @classmethod
    def from_events(cls, region: str, signal_process: str, threshold: float, labels: np.ndarray,
                    scores: np.ndarray, weights: np.ndarray) -> RegionScores:  # fmt: skip
        """The histograms of events given one by one (``labels`` 1: signal)."""
        sig = np.asarray(labels).astype(bool)
        idx, w = fine_bin(scores), np.asarray(weights, dtype=np.float64)
        return cls(region, signal_process, threshold,
                   np.bincount(idx[sig], weights=w[sig], minlength=FINE_BINS),
                   np.bincount(idx[~sig], weights=w[~sig], minlength=FINE_BINS),
                   int(np.count_nonzero(sig)), int(np.count_nonzero(~sig)))  # fmt: skip

    def densities(self, n_bins: int = len(SCORE_BINS) - 1) -> tuple[np.ndarray, np.ndarray]:
        """The signal and the background distributions in ``n_bins`` equal bins on [0, 1] (a
        divisor of :data:`FINE_BINS`; default: :data:`SCORE_BINS`), each normalised to unit area
        (zeros where a class has no event)."""
        if n_bins < 1 or FINE_BINS % n_bins:
            raise ValueError(f"{n_bins} score bins are not a rebinning of the {FINE_BINS} fine bins")
        out = []
        for fine in (self.signal, self.background):
            coarse = np.asarray(fine, dtype=np.float64).reshape(n_bins, -1).sum(axis=1)
            total = coarse.sum()
            out.append(coarse / total * n_bins if total > 0 else np.zeros(n_bins))
        return out[0], out[1]

    @property
    def roc(self) -> RocCurve:
        """The ROC curve of the fine-binned distributions (:func:`binned_roc`)."""
        return binned_roc(self.signal, self.background)


@dataclass(frozen=True)
class ScoreHistograms:
    """A run's score histograms per process, ``[region, fine bin]``: ``sumw`` scaled by each
    sample's normalisation, ``events`` the counts (the samples added in sorted order)."""

    regions: tuple[str, ...]
    sumw: dict[str, np.ndarray]
    events: dict[str, np.ndarray]

    @classmethod
    def from_accumulators(cls, accumulators: Mapping[str, ScoreAccumulator], normalisation: Mapping[str, float],
                          regions: tuple[str, ...]) -> ScoreHistograms:  # fmt: skip
        """``normalisation``: each sample's per-event weight, as for the analysis histograms."""
        sumw: dict[str, np.ndarray] = {}
        events: dict[str, np.ndarray] = {}
        for sample in sorted(accumulators):
            acc = accumulators[sample]
            if acc.counts.shape != (len(regions), FINE_BINS):
                raise ValueError(f"{sample}: score histograms of shape {acc.counts.shape}, expected "
                                 f"{(len(regions), FINE_BINS)} for regions {list(regions)}")  # fmt: skip
            sumw[acc.process] = sumw.get(acc.process, 0) + acc.counts * float(normalisation[sample])
            events[acc.process] = events.get(acc.process, 0) + acc.counts
        return cls(tuple(regions), sumw, events)

    def region(self, region: str, signal_process: str, threshold: float) -> RegionScores:
        """The region's signal process against every other process."""
        if region not in self.regions:
            raise KeyError(f"no score histograms of region {region!r}; regions: {list(self.regions)}")
        r = self.regions.index(region)
        zeros_w, zeros_n = np.zeros(FINE_BINS), np.zeros(FINE_BINS, np.int64)
        background = [p for p in sorted(self.sumw) if p != signal_process]
        sig = self.sumw.get(signal_process)
        return RegionScores(
            region, signal_process, threshold,
            zeros_w if sig is None else sig[r],
            sum((self.sumw[p][r] for p in background), zeros_w),
            int((self.events[signal_process][r] if signal_process in self.events else zeros_n).sum()),
            int(sum((self.events[p][r] for p in background), zeros_n).sum()),
        )  # fmt: skip
