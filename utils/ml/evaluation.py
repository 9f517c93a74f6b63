"""Honest evaluation of the classifiers on held-out events, and its figures.

Every number comes from the *test* split of the training table (events the model saw neither in
training nor in early stopping; the split is by event content, see :mod:`utils.ml.features`),
scored through the exported TorchScript model, i.e. through the same code path as the processor.
Each model is compared, on the same events, with a one-variable baseline: the region's fit
observable (HT in 4j1b, m_bjj in 4j2b) used directly as the score.

ROC curves and AUCs weight events with their physics weight (xsec x lumi / nevts), so the
background is the mixture the analysis sees; the AUC does not depend on the relative
normalisation of signal and background. Accuracy is given per process (one number per sample:
all events of a process have the same weight), and overall both physics-weighted and balanced
(mean of the signal and the background accuracy).

Figures are functions that take evaluations (the score figures of a run: its score histograms,
:mod:`utils.ml.scores`) and an optional output path and return the figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.config import AnalysisConfig  # noqa: E402
from utils.histograms.figures import cms_style  # noqa: E402
from utils.io import save_figure  # noqa: E402
from utils.ml.features import FeatureTable  # noqa: E402
from utils.ml.inference import MLClassifier  # noqa: E402
from utils.ml.scores import SCORE_BINS, RegionScores, RocCurve, ScoreHistograms  # noqa: E402

log = logging.getLogger(__name__)

FEATURE_LABELS = {
    "ht": r"$H_T$ [GeV]",
    "m_bjj": r"$m_{bjj}$ [GeV]",
    "trijet_mean_delta_r": r"mean $\Delta R$ in trijet",
    "aplanarity": "aplanarity",
    "lepton_pt": r"lepton $p_T$ [GeV]",
    "leading_jet_pt": r"leading jet $p_T$ [GeV]",
}


def roc_curve(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> RocCurve:
    """Weighted ROC curve of ``scores`` for binary ``labels`` (ties share one point, so a tie
    counts one half in the AUC, as in the Mann-Whitney statistic)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not labels.any() or labels.all():
        raise ValueError("a ROC curve needs events of both classes")
    order = np.argsort(-scores, kind="stable")
    s, lab, w = scores[order], labels[order], w[order]
    tp = np.cumsum(np.where(lab, w, 0.0))
    fp = np.cumsum(np.where(lab, 0.0, w))
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tpr = np.r_[0.0, tp[last_of_tie] / tp[-1]]
    fpr = np.r_[0.0, fp[last_of_tie] / fp[-1]]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return RocCurve(fpr, tpr, auc)


@dataclass(frozen=True)
class RegionEvaluation:
    """Scores and figures of merit of one region's model on one split."""

    region: str
    split: str
    signal_process: str
    threshold: float
    processes: tuple[str, ...]
    process: np.ndarray  # process name per event (object array)
    labels: np.ndarray
    weights: np.ndarray
    scores: np.ndarray
    baseline_variable: str
    baseline_values: np.ndarray
    roc: RocCurve
    baseline_roc: RocCurve

    @property
    def predicted(self) -> np.ndarray:
        return (self.scores > self.threshold).astype(np.int8)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def accuracy_per_process(self) -> dict[str, float]:
        """Fraction of each process's events classified as what they are."""
        correct = self.correct
        out = {}
        for p in self.processes:
            m = self.process == p
            if m.any():
                out[p] = float(np.mean(correct[m]))
        return out

    def events_per_process(self) -> dict[str, int]:
        return {p: int(np.count_nonzero(self.process == p)) for p in self.processes}

    @property
    def accuracy(self) -> float:
        """Physics-weighted fraction of correctly classified events."""
        return float(np.sum(self.weights * self.correct) / np.sum(self.weights))

    @property
    def balanced_accuracy(self) -> float:
        sig = self.labels == 1
        bkg = ~sig
        acc_s = np.sum(self.weights[sig] * self.correct[sig]) / np.sum(self.weights[sig])
        acc_b = np.sum(self.weights[bkg] * self.correct[bkg]) / np.sum(self.weights[bkg])
        return float(0.5 * (acc_s + acc_b))

    def summary(self) -> dict[str, Any]:
        """The numbers the model card records."""
        return {
            "split": self.split,
            "events": self.events_per_process(),
            "auc": round(self.roc.auc, 6),
            "baseline": {"variable": self.baseline_variable, "auc": round(self.baseline_roc.auc, 6)},
            "score_threshold": self.threshold,
            "accuracy_per_process": {p: round(a, 6) for p, a in self.accuracy_per_process().items()},
            "accuracy_physics_weighted": round(self.accuracy, 6),
            "accuracy_balanced": round(self.balanced_accuracy, 6),
            "weighting": "physics weights xsec*lumi/nevts (background mixture as in the analysis)",
        }


def evaluate_region(
    scores: np.ndarray, table: FeatureTable, region: str, config: AnalysisConfig, split: str | None = "test"
) -> RegionEvaluation:
    """Figures of merit of given scores (one per event of ``table.mask(region, split)``).
    ``split`` None: every event of the table (a table of events no model was trained on)."""
    mask = table.mask(region, split)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != np.count_nonzero(mask):
        raise ValueError(f"{len(scores)} scores for {np.count_nonzero(mask)} {split or 'all'} events of {region}")
    labels = table.labels(config.ml_signal_process, mask)
    weights = table.weight[mask]
    baseline = config.region(region).observable
    baseline_values = table.column(baseline, mask)
    return RegionEvaluation(
        region=region,
        split=split or "all",
        signal_process=config.ml_signal_process,
        threshold=config.ml_score_threshold,
        processes=table.processes,
        process=table.process_names(mask),
        labels=labels,
        weights=weights,
        scores=scores,
        baseline_variable=baseline,
        baseline_values=baseline_values,
        roc=roc_curve(labels, scores, weights),
        baseline_roc=roc_curve(labels, baseline_values, weights),
    )


def evaluate_classifier(
    classifier: MLClassifier, table: FeatureTable, config: AnalysisConfig, split: str | None = "test"
) -> dict[str, RegionEvaluation]:
    """Score the split's events of every region through the classifier's exports (``split``
    None: all events, for a table built from a dataset the models never saw)."""
    out = {}
    for region in config.ml_features:
        names = classifier.feature_names(region)
        if names is None:
            continue
        x = table.matrix(names, table.mask(region, split))
        out[region] = evaluate_region(classifier.scores(region, x), table, region, config, split)
    return out


# -- figures ---------------------------------------------------------------------------------------


@cms_style()
def plot_roc(evaluations: Sequence[RegionEvaluation], path: str | Path | None = None) -> plt.Figure:
    """ROC curves of each region's model and its one-variable baseline, AUCs in the legend."""
    fig, axes = plt.subplots(1, len(evaluations), figsize=(7 * len(evaluations), 6.5), squeeze=False)
    for ax, ev in zip(axes[0], evaluations, strict=True):
        ax.plot(ev.roc.fpr, ev.roc.tpr, lw=2, label=f"network (AUC = {ev.roc.auc:.3f})")
        ax.plot(
            ev.baseline_roc.fpr,
            ev.baseline_roc.tpr,
            lw=2,
            ls="--",
            label=f"{ev.baseline_variable} only (AUC = {ev.baseline_roc.auc:.3f})",
        )
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
        ax.set_xlabel("background efficiency (physics-weighted)")
        ax.set_ylabel(f"{ev.signal_process} efficiency")
        ax.set_title(f"{ev.region}, {ev.split} events", fontsize=16)
        ax.legend(frameon=False, loc="lower right", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


@cms_style()
def plot_score_distributions(evaluation: RegionEvaluation, path: str | Path | None = None) -> plt.Figure:
    """Normalised score distribution of each process in a region, the threshold marked."""
    fig, ax = plt.subplots(figsize=(8, 6.5))
    bins = np.linspace(0.0, 1.0, 26)
    for p in evaluation.processes:
        m = evaluation.process == p
        if m.any():
            ax.hist(
                evaluation.scores[m], bins=list(bins), density=True, histtype="step", lw=2, label=f"{p} ({m.sum()})"
            )
    ax.axvline(evaluation.threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set_xlabel("network score")
    ax.set_ylabel("normalised events")
    ax.set_yscale("log")
    ax.set_title(f"{evaluation.region}, {evaluation.split} events", fontsize=16)
    ax.legend(frameon=False, fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


@cms_style()
def plot_accuracy(evaluations: Sequence[RegionEvaluation], path: str | Path | None = None) -> plt.Figure:
    """Accuracy per process (bars) in each region."""
    fig, ax = plt.subplots(figsize=(9, 6))
    processes = sorted({p for ev in evaluations for p in ev.accuracy_per_process()})
    width = 0.8 / max(1, len(evaluations))
    x = np.arange(len(processes))
    for i, ev in enumerate(evaluations):
        acc = ev.accuracy_per_process()
        values = [acc.get(p, np.nan) for p in processes]
        ax.bar(
            x + (i - (len(evaluations) - 1) / 2) * width,
            values,
            width,
            label=f"{ev.region} (weighted {ev.accuracy:.3f}, balanced {ev.balanced_accuracy:.3f})",
        )
    ax.set_xticks(x, processes, rotation=20, ha="right", fontsize=12)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction classified correctly")
    ax.legend(frameon=False, fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


@cms_style()
def plot_training_history(histories: dict[str, dict[str, list[float]]], path: str | Path | None = None) -> plt.Figure:
    """Training and validation loss per epoch of each region's model."""
    fig, axes = plt.subplots(1, len(histories), figsize=(7 * len(histories), 5.5), squeeze=False)
    for ax, (region, h) in zip(axes[0], histories.items(), strict=True):
        epochs = np.arange(1, len(h["train_loss"]) + 1)
        ax.plot(epochs, h["train_loss"], label="training")
        ax.plot(epochs, h["validation_loss"], label="validation")
        best = int(np.argmin(h["validation_loss"])) + 1
        ax.axvline(best, color="grey", ls=":", label=f"kept (epoch {best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("weighted BCE loss")
        ax.set_title(region, fontsize=16)
        ax.legend(frameon=False, fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


@cms_style()
def plot_feature_distributions(
    table: FeatureTable, region: str, features: Sequence[str], signal_process: str, path: str | Path | None = None
) -> plt.Figure:
    """Normalised training-split distribution of each input feature, signal against background."""
    fig, axes = plt.subplots(1, len(features), figsize=(4.5 * len(features), 4.5), squeeze=False)
    mask = table.mask(region, "train")
    labels = table.labels(signal_process, mask)
    weights = table.weight[mask]
    for ax, name in zip(axes[0], features, strict=True):
        values = table.column(name, mask)
        low, high = np.nanpercentile(values, [0.5, 99.5])
        bins = np.linspace(low, high, 31)
        for lab, text in ((1, signal_process), (0, "background")):
            m = labels == lab
            ax.hist(values[m], bins=bins, weights=weights[m], density=True, histtype="step", lw=2, label=text)
        ax.set_xlabel(FEATURE_LABELS.get(name, name), fontsize=13)
        ax.tick_params(labelsize=11)
    axes[0][0].legend(frameon=False, fontsize=11)
    fig.suptitle(f"{region}: input features (training split, physics-weighted)", fontsize=15)
    fig.tight_layout()
    return save_figure(fig, path)


# -- tables ----------------------------------------------------------------------------------------


def text_table(columns: dict[str, dict[str, Any]], float_format: str = "{:.4f}") -> str:
    """A plain-text table: one column per key of ``columns``, one row per inner key."""
    rows: list[str] = []
    for col in columns.values():
        rows += [k for k in col if k not in rows]

    def cell(v: Any) -> str:
        return float_format.format(v) if isinstance(v, float) else ("" if v is None else str(v))

    body = [[row, *(cell(col.get(row)) for col in columns.values())] for row in rows]
    header = ["", *columns]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *body]
    ]
    return "\n".join(lines)


def summary_columns(evaluations: Sequence[RegionEvaluation]) -> dict[str, dict[str, Any]]:
    """Per region: AUC against the baseline, accuracies overall and per process, test events."""
    return {
        ev.region: {
            "AUC network": ev.roc.auc,
            "AUC baseline": ev.baseline_roc.auc,
            "baseline variable": ev.baseline_variable,
            "accuracy (physics-weighted)": ev.accuracy,
            "accuracy (balanced)": ev.balanced_accuracy,
            **{f"accuracy {p}": a for p, a in ev.accuracy_per_process().items()},
            **{f"events {p}": n for p, n in ev.events_per_process().items()},
        }
        for ev in evaluations
    }


#: how a card's recorded split is drawn
_SPLIT_STYLE = {"train": "--", "test": ":"}


def score_distribution(evaluation: RegionEvaluation) -> dict[str, Any]:
    """The score distributions of the signal process and of the other processes together
    (physics-weighted, normalised to unit area) on :data:`SCORE_BINS`: what a model card records
    for its train and test splits (``metrics.score_distributions``)."""
    out: dict[str, Any] = {"split": evaluation.split, "bins": [round(float(b), 6) for b in SCORE_BINS]}
    for name, is_signal in ((evaluation.signal_process, True), ("background", False)):
        m = evaluation.labels.astype(bool) == is_signal
        density = np.zeros(len(SCORE_BINS) - 1)
        if m.any():
            density, _ = np.histogram(
                evaluation.scores[m], bins=SCORE_BINS, weights=evaluation.weights[m], density=True
            )
        out[name] = [round(float(x), 6) for x in density]
    return out


@cms_style()
def plot_signal_vs_background(
    scores: RegionScores,
    reference_auc: float | None = None,
    path: str | Path | None = None,
    card_distributions: Mapping[str, Mapping[str, Any]] | None = None,
) -> plt.Figure:
    """A region's score distributions of the signal process and of the other processes together
    (physics-weighted, normalised, on :data:`SCORE_BINS`), the threshold marked; their AUC beside
    the model card's held-out (test) AUC. ``card_distributions``: the card's train and test
    distributions (:func:`score_distribution`), drawn as lines over them."""
    fig, ax = plt.subplots(figsize=(8, 6.5), layout="constrained")
    signal, background = scores.densities(len(SCORE_BINS) - 1)
    for density, n, label, color in ((signal, scores.signal_events, _pretty(scores.signal_process), "C0"),
                                     (background, scores.background_events, "background", "C3")):  # fmt: skip
        if n:
            ax.stairs(density, SCORE_BINS, lw=2, color=color, label=f"{label} ({n:,d} events)")
    for split, dist in (card_distributions or {}).items():
        for key, label, color in ((scores.signal_process, _pretty(scores.signal_process), "C0"),
                                  ("background", "background", "C3")):  # fmt: skip
            if key in dist:
                ax.stairs(dist[key], dist["bins"], color=color, ls=_SPLIT_STYLE.get(split, "-."), lw=1.5,
                          label=f"{label}, {split} (model card)")  # fmt: skip
    ax.axvline(scores.threshold, color="black", ls="--", lw=1, label=f"threshold {scores.threshold:g}")
    ax.set_xlabel("network score")
    ax.set_ylabel("normalised events")
    ax.set_xlim(0, 1)
    top = ax.get_ylim()[1]
    ax.set_ylim(0, top * (1.5 if not card_distributions else 1.9))
    auc = f"AUC {scores.roc.auc:.3f} here" + ("" if reference_auc is None else f", {reference_auc:.3f} on test")
    ax.legend(frameon=False, fontsize=12, loc="upper center", title=f"{scores.region}: {auc}", title_fontsize=13,
              ncol=2 if card_distributions else 1)  # fmt: skip
    return save_figure(fig, path)


def _pretty(process: str) -> str:
    return r"$t\bar{t}$" if process == "ttbar" else process


def score_figures(
    classifier: MLClassifier, histograms: ScoreHistograms, config: AnalysisConfig, folder: str | Path | None = None
) -> dict[str, plt.Figure]:
    """The signal against the background in each region with a model
    (:func:`plot_signal_vs_background`, ``ml_scores_<region>.png`` in ``folder``), from a run's
    score histograms (the processor's, :attr:`utils.processing.run.ProcessingResult.score_histograms`),
    with each model card's test AUC and its train and test score distributions (where the card
    records them) for comparison. The events are those of the analysis dataset, which the models
    were not trained on."""
    from utils.ml.card import load_card

    figures = {}
    for model in classifier.models:
        scores = histograms.region(model.region, config.ml_signal_process, classifier.threshold)
        if not scores.signal_events or not scores.background_events:
            log.info("no score figure of %s: the run has no %s events there", model.region,
                     "signal" if not scores.signal_events else "background")  # fmt: skip
            continue
        metrics = load_card(Path(model.card_path)).metrics
        path = None if folder is None else Path(folder) / f"ml_scores_{model.region}.png"
        figures[model.region] = plot_signal_vs_background(
            scores, metrics.get("test", {}).get("auc"), path, metrics.get("score_distributions")
        )
    return figures
