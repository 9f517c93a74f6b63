"""Fits of a pyhf workspace: the maximum-likelihood fit, the impact ranking, the discovery
significance and the upper limit (:mod:`utils.inference.limits`, which the preservation steps use
too). Every fit runs on pyhf's numpy backend (:func:`numpy_backend`) with MINUIT."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import StatisticsError
from utils.inference.backend import first_line, numpy_backend
from utils.inference.limits import CLsScan, LimitSummary, upper_limit
from utils.io import write_text_atomic

log = logging.getLogger(__name__)


def workspace_text(ws: Mapping[str, Any]) -> str:
    """The canonical serialisation of a workspace (cabinetry's: sorted keys, indent 4)."""
    return json.dumps(ws, sort_keys=True, indent=4)


def build_workspace(config: Mapping[str, Any], workspace_path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """Build the pyhf workspace from the templates; save it atomically if a path is given.

    Returns the workspace and the sha256 of its canonical JSON text.
    """
    import cabinetry

    ws = cabinetry.workspace.build(dict(config))
    text = workspace_text(ws)
    if workspace_path is not None:
        write_text_atomic(workspace_path, text)
        log.info("saved workspace to %s", workspace_path)
    return ws, hashlib.sha256(text.encode()).hexdigest()


def fit_workspace(ws: Mapping[str, Any], *, strategy: int | None = None, goodness_of_fit: bool = True):
    """Build model and data from a workspace and fit them (see :func:`fit_model`).

    Returns ``(model, data, cabinetry FitResults)``.
    """
    import cabinetry

    with numpy_backend():
        model, data = cabinetry.model_utils.model_and_data(dict(ws))
        return model, data, fit_model(model, data, strategy=strategy, goodness_of_fit=goodness_of_fit)


def fit_model(
    model: Any,
    data: list[float],
    *,
    strategy: int | None = None,
    goodness_of_fit: bool = True,
    init_pars: list[float] | None = None,
    fix_pars: list[bool] | None = None,
):
    """Maximum-likelihood fit with ``cabinetry.fit.fit`` (MINUIT through pyhf's numpy backend).

    ``strategy``: the MINUIT strategy; None is pyhf's choice (1 without gradients), which gives
    the published AGC uncertainty. Returns cabinetry's ``FitResults``; a failed minimisation is a
    :class:`StatisticsError`.
    """
    import cabinetry

    try:
        with numpy_backend():
            return cabinetry.fit.fit(
                model,
                data,
                strategy=strategy,  # type: ignore[arg-type]  # 0, 1, 2 or None
                goodness_of_fit=goodness_of_fit,
                init_pars=init_pars,
                fix_pars=fix_pars,
            )
    except Exception as err:  # pyhf.exceptions.FailedMinimization and friends
        raise StatisticsError(
            f"the maximum-likelihood fit failed ({first_line(err)}); try another MINUIT strategy "
            "(--strategy 2) or check the templates for empty bins"
        ) from err


@contextlib.contextmanager
def _quiet(level: int, *loggers: str) -> Iterator[None]:
    """Raise the named loggers to ``level`` inside the block."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, previous in saved.items():
            logging.getLogger(name).setLevel(previous)


def _impact_row(model, data, fit_results, i, prefit_unc, init, fixed, strategies) -> list[float]:
    """POI shifts with parameter ``i`` held at best-fit +/- pre-fit and +/- post-fit uncertainty.

    Refits start from ``init`` with parameter ``i`` moved and held.
    """
    label = model.config.par_names[i]
    poi_index = model.config.poi_index
    best, post = fit_results.bestfit[i], fit_results.uncertainty[i]
    row = []
    for value in (best + prefit_unc, best - prefit_unc, best + post, best - post):
        if value == best:  # unconstrained (no pre-fit uncertainty) or fixed parameter
            row.append(0.0)
            continue
        init_i, fixed_i = list(init), list(fixed)
        init_i[i], fixed_i[i] = float(value), True
        for attempt, strategy in enumerate(strategies):
            try:
                refit = fit_model(
                    model,
                    data,
                    strategy=strategy,
                    goodness_of_fit=False,
                    init_pars=init_i,
                    fix_pars=fixed_i,
                )
                break
            except StatisticsError as err:
                if attempt == len(strategies) - 1:
                    raise StatisticsError(f"ranking: the refit with {label} = {value:.4g} failed: {err}") from err
                log.warning("ranking: refit with %s = %.4g failed, retrying with MINUIT strategy 2", label, value)
        row.append(float(refit.bestfit[poi_index] - fit_results.bestfit[poi_index]))
    log.debug("impact of %s on the POI: %s", label, row)
    return row


def rank_parameters(
    model: Any,
    data: list[float],
    fit_results: Any,
    *,
    strategy: int | None = None,
    parameters: Sequence[str] | None = None,
):
    """Impact of each nuisance parameter on the POI; returns cabinetry's ``RankingResults``.

    The definition of ``cabinetry.fit.ranking``: refit with the parameter held at its best-fit
    value plus/minus its pre-fit and its post-fit uncertainty; the impact is the POI shift.
    Refits use :func:`fit_model`. A MINUIT refit that fails is retried with
    strategy 2 (with strategy 1, the default, a staterror refit of the AGC model fails), so one
    bad refit does not lose the whole ranking. ``parameters``: rank only these (default: all
    but the POI).
    """
    import cabinetry
    from cabinetry.fit.results_containers import RankingResults

    poi_index = model.config.poi_index
    if poi_index is None:
        raise StatisticsError("the model has no POI; cannot rank parameters by their impact on it")
    prefit = cabinetry.model_utils.prefit_uncertainties(model)
    names = list(model.config.par_names)
    unknown = sorted(set(parameters or ()) - set(names))
    if unknown:
        raise StatisticsError(f"ranking: no parameter(s) {unknown} in the model; parameters: {names}")
    ranked = [i for i, n in enumerate(names) if i != poi_index and (parameters is None or n in parameters)]
    # refits start from the suggested initial values, as cabinetry's do (starting from the
    # best-fit point was measured slower with MINUIT here)
    init = list(model.config.suggested_init())
    fixed = list(model.config.suggested_fixed())
    retry = [strategy] + ([2] if strategy != 2 else [])
    impacts = []
    # one summary per refit (and pyhf's dump of a failed one, retried here) would drown the log
    with _quiet(logging.WARNING, "cabinetry.fit"), _quiet(logging.CRITICAL, "pyhf"):
        for i in ranked:
            impacts.append(_impact_row(model, data, fit_results, i, prefit[i], init, fixed, retry))
    impacts_np = np.asarray(impacts).reshape(-1, 4)
    return RankingResults(
        np.asarray(fit_results.bestfit)[ranked],
        np.asarray(fit_results.uncertainty)[ranked],
        [names[i] for i in ranked],
        impacts_np[:, 0],
        impacts_np[:, 1],
        impacts_np[:, 2],
        impacts_np[:, 3],
    )


@dataclass(frozen=True)
class SignificanceSummary:
    observed_p_value: float
    observed_significance: float
    expected_p_value: float
    expected_significance: float


def significance_of(model: Any, data: list[float], *, strategy: int | None = None) -> SignificanceSummary:
    """Discovery significance of the POI (``cabinetry.fit.significance``, asymptotic)."""
    import cabinetry

    try:
        with numpy_backend():
            sig = cabinetry.fit.significance(model, data, strategy=strategy)  # type: ignore[arg-type]
    except Exception as err:  # pyhf's FailedMinimization, scipy's bracketing errors, ...
        raise StatisticsError(f"the significance calculation failed: {first_line(err)}") from err
    return SignificanceSummary(*(float(x) for x in sig))


def upper_limit_of(model: Any, data: list[float], *, strategy: int | None = None) -> LimitSummary:
    """95% CL upper limit on the POI: the CLs scan and limit search of
    :mod:`utils.inference.limits` (asymptotic, q-tilde, MINUIT with ``strategy``)."""
    try:
        return upper_limit(CLsScan(model, data, strategy=strategy))
    except StatisticsError as err:
        raise StatisticsError(
            f"the upper-limit search failed: {err} (a limit is meaningful for a small signal; "
            "for a measured signal such as ttbar the CLs scan near zero may not converge)"
        ) from err
