"""Figures of the inference stage: pulls, correlations, data/MC per region, impact ranking.

Each function takes the data, draws with cabinetry's plotting code, saves atomically where a
path is given (the format follows the suffix) and returns the matplotlib figure. Callers that
make many figures close them (``matplotlib.pyplot.close(fig)``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from utils.io import save_figure

log = logging.getLogger(__name__)


def _save(fig: matplotlib.figure.Figure, path: str | Path | None) -> None:
    save_figure(fig, path, dpi=None)
    if path is not None:
        log.debug("saved figure %s", path)


def pulls(
    fit_results: Any, path: str | Path | None = None, exclude: Sequence[str] | None = None
) -> matplotlib.figure.Figure:
    """Pull plot of the nuisance parameters (POI, staterror and fixed parameters left out)."""
    import cabinetry

    fig = cabinetry.visualize.pulls(fit_results, exclude=list(exclude or []), save_figure=False, close_figure=False)
    _save(fig, path)
    return fig


def correlation_matrix(
    fit_results: Any, path: str | Path | None = None, pruning_threshold: float = 0.0
) -> matplotlib.figure.Figure:
    """Correlation matrix of the fitted parameters (rows below ``pruning_threshold`` dropped)."""
    import cabinetry

    fig = cabinetry.visualize.correlation_matrix(
        fit_results, pruning_threshold=pruning_threshold, save_figure=False, close_figure=False
    )
    _save(fig, path)
    return fig


def data_mc(
    model_prediction: Any,
    data: Sequence[float],
    region: str,
    config: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
) -> matplotlib.figure.Figure:
    """Stacked model prediction against data in one region (channel) of the model.

    ``model_prediction`` is a ``cabinetry.model_utils.ModelPrediction`` (pre- or post-fit);
    ``config`` supplies the binning and axis label of the region.
    """
    import cabinetry

    figs = cabinetry.visualize.data_mc(
        model_prediction,
        list(data),
        config=dict(config) if config is not None else None,
        channels=[region],
        save_figure=False,
        close_figure=False,
    )
    if not figs:
        raise ValueError(f"no region {region!r} in the model; regions: {model_prediction.model.config.channels}")
    fig = figs[0]["figure"]
    _save(fig, path)
    return fig


def ranking(
    ranking_results: Any, path: str | Path | None = None, max_pars: int | None = 20
) -> matplotlib.figure.Figure:
    """Impact ranking of the nuisance parameters on the POI (largest post-fit impact first)."""
    import cabinetry

    fig = cabinetry.visualize.ranking(ranking_results, max_pars=max_pars, save_figure=False, close_figure=False)
    _save(fig, path)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def inference_figures(
    folder: str | Path,
    model: Any,
    data: Sequence[float],
    fit_results: Any,
    config: Mapping[str, Any] | None = None,
    ranking_results: Any | None = None,
    suffix: str = ".pdf",
) -> dict[str, Path]:
    """Draw and save the standard figures of a fit into ``folder``; return {key: path}.

    Keys: ``pulls``, ``correlation_matrix``, ``data_mc_prefit_<region>``,
    ``data_mc_postfit_<region>`` and, given ranking results, ``ranking``. Figures are closed.
    """
    import cabinetry
    import matplotlib.pyplot as plt

    folder = Path(folder)
    out: dict[str, Path] = {}

    def keep(key: str, fig: matplotlib.figure.Figure) -> None:
        out[key] = folder / f"{key}{suffix}"
        _save(fig, out[key])
        plt.close(fig)

    poi = model.config.poi_name
    keep("pulls", pulls(fit_results, exclude=[poi] if poi else None))
    keep("correlation_matrix", correlation_matrix(fit_results, pruning_threshold=0.1))
    predictions = {
        "prefit": cabinetry.model_utils.prediction(model),
        "postfit": cabinetry.model_utils.prediction(model, fit_results=fit_results),
    }
    for stage, prediction in predictions.items():
        for region in model.config.channels:
            keep(f"data_mc_{stage}_{_slug(region)}", data_mc(prediction, data, region, config))
    if ranking_results is not None:
        keep("ranking", ranking(ranking_results))
    return out
