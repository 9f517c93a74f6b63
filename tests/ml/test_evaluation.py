"""ML-score figures of a run: signal against background per region on the analysis events,
with the model card's test AUC."""

from __future__ import annotations

import matplotlib.pyplot as plt

from utils.datasets.fileset import build_fileset
from utils.ml.evaluation import score_figures
from utils.ml.inference import MLClassifier


def test_score_figures_of_the_tiny_dataset(tiny_dataset, config, tmp_path):
    figures = score_figures(MLClassifier.from_directory(config=config), build_fileset(tiny_dataset), config, tmp_path)
    assert set(figures) == set(config.ml_features)
    for region, fig in figures.items():
        assert (tmp_path / f"ml_scores_{region}.png").is_file()
        ax = fig.axes[0]
        legend = ax.get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels[0].startswith(r"$t\bar{t}$ (") and labels[1].startswith("background (")
        assert "here" in legend.get_title().get_text() and "on test" in legend.get_title().get_text()
        # two normalised distributions on [0, 1]
        assert len(ax.patches) == 2 and ax.get_xlim() == (0.0, 1.0)
        plt.close(fig)
