"""ML-score figures of a run: signal against background per region on the analysis events,
with the model card's test AUC and its train and test score distributions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import StepPatch

from utils.datasets.fileset import build_fileset
from utils.ml.card import DEFAULT_MODELS_DIR, card_path, load_card
from utils.ml.evaluation import SCORE_BINS, RegionEvaluation, RocCurve, score_distribution, score_figures
from utils.ml.inference import MLClassifier


def test_score_figures_of_the_tiny_dataset(tiny_dataset, config, tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    from utils.ml.features import build_feature_table, start_feature_table

    fileset = build_fileset(tiny_dataset)
    # the notebook selects the events in the processing workers, while it draws other figures:
    # the same table as the training's selection, without the files' checksums
    with ProcessPoolExecutor(max_workers=2) as pool:
        table = start_feature_table(fileset, config, pool).result()
    reference = build_feature_table(fileset, config)
    for name in ("features", "region", "process", "weight", "entry", "split"):
        np.testing.assert_array_equal(getattr(table, name), getattr(reference, name), err_msg=name)
    assert [f.sha256 for f in table.files] == [""] * len(reference.files)
    assert all(len(f.sha256) == 64 for f in reference.files)
    figures = score_figures(MLClassifier.from_directory(config=config), table, config, tmp_path)
    assert set(figures) == set(config.ml_features)
    for region, fig in figures.items():
        assert (tmp_path / f"ml_scores_{region}.png").is_file()
        ax = fig.axes[0]
        legend = ax.get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels[0].startswith(r"$t\bar{t}$ (") and labels[1].startswith("background (")
        assert "here" in legend.get_title().get_text() and "on test" in legend.get_title().get_text()
        # two normalised distributions on [0, 1], and the card's train and test ones over them
        steps = [p for p in ax.patches if isinstance(p, StepPatch)]
        assert len(ax.patches) - len(steps) == 2 and ax.get_xlim() == (0.0, 1.0)
        assert sorted(s.get_label() for s in steps) == sorted(
            f"{name}, {split} (model card)" for name in (r"$t\bar{t}$", "background") for split in ("train", "test")
        )
        card = load_card(card_path(DEFAULT_MODELS_DIR, region)).metrics["score_distributions"]
        drawn = {s.get_label(): s.get_data().values for s in steps}
        np.testing.assert_allclose(drawn["background, test (model card)"], card["test"]["background"])
        plt.close(fig)


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
