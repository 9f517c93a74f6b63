"""ML-score figures of a run: signal against background per region on the analysis events,
from the score histograms the processor fills, with the model card's test AUC and its train and
test score distributions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import StepPatch

from utils.datasets.fileset import build_fileset
from utils.ml.card import DEFAULT_MODELS_DIR, card_path, load_card
from utils.ml.evaluation import RegionEvaluation, evaluate_classifier, roc_curve, score_distribution, score_figures
from utils.ml.inference import MLClassifier
from utils.ml.scores import (
    FINE_BINS,
    SCORE_BINS,
    RegionScores,
    RocCurve,
    ScoreAccumulator,
    ScoreHistograms,
    binned_roc,
    fine_bin,
)


@pytest.fixture(scope="module")
def tiny_ml_run(tiny_dataset, config):
    """The tiny dataset processed with the classifier (one chunk per file, one process)."""
    from utils.processing.run import ProcessingOptions, process_fileset

    fileset = build_fileset(tiny_dataset)
    classifier = MLClassifier.from_directory(config=config)
    return fileset, classifier, process_fileset(fileset, ProcessingOptions(executor="iterative"), config, classifier)


def test_score_figures_of_the_tiny_dataset(tiny_ml_run, config, tmp_path):
    _, classifier, result = tiny_ml_run
    figures = score_figures(classifier, result.score_histograms, config, tmp_path)
    assert set(figures) == set(config.ml_features)
    for region, fig in figures.items():
        assert (tmp_path / f"ml_scores_{region}.png").is_file()
        ax = fig.axes[0]
        legend = ax.get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels[0].startswith(r"$t\bar{t}$ (") and labels[1].startswith("background (")
        assert "here" in legend.get_title().get_text() and "on test" in legend.get_title().get_text()
        # two normalised distributions on [0, 1], and the card's train and test ones over them
        steps = {s.get_label(): s for s in ax.patches if isinstance(s, StepPatch)}
        assert len(ax.patches) == len(steps) == 6 and ax.get_xlim() == (0.0, 1.0)
        card_labels = {
            f"{name}, {split} (model card)" for name in (r"$t\bar{t}$", "background") for split in ("train", "test")
        }
        assert set(steps) - card_labels == set(labels[:2])
        scores = result.score_histograms.region(region, "ttbar", config.ml_score_threshold)
        for label, density in zip(labels[:2], scores.densities(), strict=True):
            drawn = steps[label].get_data()
            np.testing.assert_array_equal(drawn.edges, SCORE_BINS)
            np.testing.assert_allclose(drawn.values, density)
            assert np.sum(drawn.values * np.diff(SCORE_BINS)) == pytest.approx(1.0)
        assert labels[0] == rf"$t\bar{{t}}$ ({scores.signal_events:,d} events)"
        assert f"AUC {scores.roc.auc:.3f} here" in legend.get_title().get_text()
        card = load_card(card_path(DEFAULT_MODELS_DIR, region)).metrics["score_distributions"]
        np.testing.assert_allclose(steps["background, test (model card)"].get_data().values, card["test"]["background"])
        plt.close(fig)


def test_processor_score_histograms_are_the_classifiers_scores_of_the_feature_table(tiny_ml_run, config):
    """The processor's histograms against the training's selection of the same files scored
    directly (:func:`evaluate_classifier`): the same events per process, the same weighted
    distributions (an event may move by one fine bin at most, where the two float32 evaluations
    round differently), and the binned AUC within 1e-3 of the unbinned one."""
    from utils.ml.features import build_feature_table

    fileset, classifier, result = tiny_ml_run
    histograms = result.score_histograms
    table = build_feature_table(fileset, config)
    assert set(histograms.sumw) == set(table.processes)
    for region, ev in evaluate_classifier(classifier, table, config, split=None).items():
        r = config.region_names.index(region)
        for process in table.processes:
            m = ev.process == process
            counts = histograms.events[process][r]
            assert counts.sum() == np.count_nonzero(m) > 0, (region, process)
            direct = np.bincount(fine_bin(ev.scores[m]), minlength=FINE_BINS)
            # cumulative counts: equal, or off by the events that moved to a neighbouring bin
            assert np.abs(np.cumsum(counts) - np.cumsum(direct)).max() <= 1, (region, process)
        scores = histograms.region(region, "ttbar", config.ml_score_threshold)
        direct = RegionScores.from_events(region, "ttbar", ev.threshold, ev.labels, ev.scores, ev.weights)
        assert (scores.signal_events, scores.background_events) == (direct.signal_events, direct.background_events)
        w_max = ev.weights.max()
        for fine, fine_direct in ((scores.signal, direct.signal), (scores.background, direct.background)):
            np.testing.assert_allclose(np.cumsum(fine), np.cumsum(fine_direct), rtol=1e-12, atol=w_max * 1.001)
        np.testing.assert_allclose(scores.densities(), direct.densities(), rtol=1e-9, atol=1e-3)
        assert scores.roc.auc == pytest.approx(ev.roc.auc, abs=1e-3)
        assert scores.roc.auc == pytest.approx(direct.roc.auc, abs=1e-4)


def test_binned_distributions_and_auc_equal_the_unbinned_ones():
    """Random weighted events: on SCORE_BINS the rebinned fine histograms are np.histogram's
    densities, and the AUC of the fine bins is the unbinned one to better than 1e-3."""
    rng = np.random.default_rng(7)
    n = 20_000
    labels = rng.random(n) < 0.3
    scores = np.where(labels, rng.beta(5, 2, n), rng.beta(2, 4, n)).astype(np.float32)
    weights = rng.choice([0.2, 1.0, 3.5], n)
    binned = RegionScores.from_events("4j2b", "ttbar", 0.5, labels, scores, weights)
    assert (binned.signal_events, binned.background_events) == (labels.sum(), (~labels).sum())
    for density, m in zip(binned.densities(), (labels, ~labels), strict=True):
        expected, _ = np.histogram(scores[m], bins=SCORE_BINS, weights=weights[m], density=True)
        np.testing.assert_allclose(density, expected, rtol=1e-12)
    unbinned = roc_curve(labels, scores, weights).auc
    assert 0.8 < unbinned < 0.95
    assert binned.roc.auc == pytest.approx(unbinned, abs=1e-3)
    # the binned ROC passes through the unbinned curve's points at the fine-bin edges
    assert binned.roc.fpr[0] == binned.roc.tpr[0] == 0.0 and binned.roc.fpr[-1] == binned.roc.tpr[-1] == 1.0


def test_binned_auc_by_hand():
    """One signal event above two background events, one of them in its fine bin: the pair in
    one bin is a tie (one half), so the AUC is (1 + 0.5) / 2; 0.5 for everything in one bin."""
    signal, background = np.zeros(FINE_BINS), np.zeros(FINE_BINS)
    signal[900] = 1.0
    background[[100, 900]] = 1.0
    assert binned_roc(signal, background).auc == pytest.approx(0.75)
    labels, scores = np.array([1, 0, 0]), np.array([0.9005, 0.1005, 0.9001])
    assert roc_curve(labels, scores).auc == 1.0  # unbinned: ordered
    assert RegionScores.from_events("r", "ttbar", 0.5, labels, scores, np.ones(3)).roc.auc == pytest.approx(0.75)
    assert binned_roc(signal, signal).auc == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both classes"):
        binned_roc(signal, np.zeros(FINE_BINS))


def test_fine_bins_are_half_open_and_the_last_is_closed():
    scores = np.array([0.0, 0.0005, 0.001, 0.5, 0.999, 1.0, -0.1, 1.2, np.nan], dtype=np.float64)
    np.testing.assert_array_equal(fine_bin(scores), [0, 0, 1, 500, 999, 999, 0, 999, 999])
    # every SCORE_BINS bin is 40 whole fine bins
    assert np.allclose(SCORE_BINS * FINE_BINS, np.round(SCORE_BINS * FINE_BINS)) and FINE_BINS % 25 == 0


def test_score_accumulator_does_not_depend_on_chunking_and_is_normalised_per_sample():
    rng = np.random.default_rng(3)
    region, scores = rng.integers(0, 2, 1000), rng.random(1000).astype(np.float32)
    whole = ScoreAccumulator.empty("ttbar", 2)
    whole.fill(region, scores)
    parts = [ScoreAccumulator.empty("ttbar", 2) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(rng.permutation(1000), 3), strict=True):
        part.fill(region[idx], scores[idx])
    np.testing.assert_array_equal((parts[2] + parts[0] + parts[1]).counts, whole.counts)
    assert whole.counts.sum() == 1000 and whole.counts.dtype == np.int64
    other = ScoreAccumulator.empty("wjets", 2)
    other.fill(np.zeros(4, np.int64), np.full(4, 0.25))
    h = ScoreHistograms.from_accumulators({"ttbar__nominal": whole, "wjets__nominal": other},
                                          {"ttbar__nominal": 0.5, "wjets__nominal": 2.0}, ("4j1b", "4j2b"))  # fmt: skip
    np.testing.assert_array_equal(h.sumw["ttbar"], whole.counts * 0.5)
    r = h.region("4j1b", "ttbar", 0.5)
    assert r.background_events == 4 and r.background[250] == 8.0 and r.signal.sum() == 0.5 * (region == 0).sum()
    with pytest.raises(ValueError, match="cannot add"):
        whole += other
    with pytest.raises(KeyError, match="no score histograms of region '5j'"):
        h.region("5j", "ttbar", 0.5)


@pytest.mark.parametrize("region", ["4j1b", "4j2b"])
def test_committed_cards_record_train_and_test_distributions(region):
    dists = load_card(card_path(DEFAULT_MODELS_DIR, region)).metrics["score_distributions"]
    assert set(dists) == {"train", "test"}
    for split, dist in dists.items():
        assert dist["split"] == split and dist["bins"] == pytest.approx(list(SCORE_BINS))
        for name in ("ttbar", "background"):  # each normalised to unit area
            assert np.sum(np.asarray(dist[name]) * np.diff(dist["bins"])) == pytest.approx(1.0, abs=1e-4)


def test_score_distribution_by_hand():
    """Two ttbar events at 0.9 (weights 1 and 3) and one background event at 0.1: all ttbar
    weight in the bin [0.88, 0.92), density 1 / 0.04 = 25; the background likewise at [0.08, 0.12)."""
    ev = RegionEvaluation(
        region="4j2b", split="test", signal_process="ttbar", threshold=0.5, processes=("ttbar", "wjets"),
        process=np.array(["ttbar", "ttbar", "wjets"], dtype=object), labels=np.array([1, 1, 0]),
        weights=np.array([1.0, 3.0, 2.0]), scores=np.array([0.9, 0.9, 0.1]), baseline_variable="m_bjj",
        baseline_values=np.zeros(3), roc=RocCurve(np.zeros(2), np.ones(2), 1.0),
        baseline_roc=RocCurve(np.zeros(2), np.ones(2), 0.5),
    )  # fmt: skip
    dist = score_distribution(ev)
    expected_ttbar = np.zeros(25)
    expected_ttbar[22] = 25.0
    expected_bkg = np.zeros(25)
    expected_bkg[2] = 25.0
    np.testing.assert_allclose(dist["ttbar"], expected_ttbar)
    np.testing.assert_allclose(dist["background"], expected_bkg)
