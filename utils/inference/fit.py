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
    maxiter: int | None = None,
):
    """Maximum-likelihood fit with ``cabinetry.fit.fit`` (MINUIT through pyhf's numpy backend).

    ``strategy``: the MINUIT strategy; None is pyhf's choice (1 without gradients), which gives
    the published AGC uncertainty. ``maxiter``: MIGRAD's call limit (None: iminuit's,
    ``200 + 100 n + 5 n^2`` for ``n`` parameters). Returns cabinetry's ``FitResults``; a failed
    minimisation is a :class:`StatisticsError`.
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
                maxiter=maxiter,
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


def _impact_row(model, data, fit_results, i, prefit_unc, init, fixed, strategies, fast=None) -> list[float]:
    """POI shifts with parameter ``i`` held at best-fit +/- pre-fit and +/- post-fit uncertainty.

    Refits are ``fast(i, value)`` (:class:`_FastRefits`) when given and it converges, else
    :func:`fit_model` from ``init`` with parameter ``i`` moved and held.
    """
    label = model.config.par_names[i]
    poi_index = model.config.poi_index
    best, post = fit_results.bestfit[i], fit_results.uncertainty[i]
    row = []
    for value in (best + prefit_unc, best - prefit_unc, best + post, best - post):
        if value == best:  # unconstrained (no pre-fit uncertainty) or fixed parameter
            row.append(0.0)
            continue
        if fast is not None:
            try:
                row.append(float(fast(i, float(value))[poi_index] - fit_results.bestfit[poi_index]))
                continue
            except StatisticsError as err:
                log.info("ranking: fast refit with %s = %.4g failed (%s); refitting with pyhf", label, value, err)
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


#: MIGRAD tolerance of the fast ranking refits (EDM goal 0.002 * tolerance, a distance to the
#: minimum of sqrt(2 EDM) = 6e-4 conditional standard deviations): in whitened coordinates the EDM
#: is accurate and the goal costs a few calls more than iminuit's 0.1, which moved the AGC impacts
#: by up to 5e-4
RANKING_TOLERANCE = 1e-4


def rank_parameters(
    model: Any,
    data: list[float],
    fit_results: Any,
    *,
    strategy: int | None = None,
    parameters: Sequence[str] | None = None,
    fast: bool = True,
):
    """Impact of each nuisance parameter on the POI; returns cabinetry's ``RankingResults``.

    The definition of ``cabinetry.fit.ranking``: refit with the parameter held at its best-fit
    value plus/minus its pre-fit and its post-fit uncertainty; the impact is the POI shift.
    ``parameters``: rank only these (default: all but the POI).

    With ``fast`` (the default) and a model :class:`~utils.inference.likelihood.FastLikelihood`
    implements, each refit is a MIGRAD minimisation with the exact gradient, started at the
    linear prediction of the conditional minimum from the fit's covariance, in coordinates
    whitened by the conditional covariance (see :func:`_fast_refit`): about 20 ms per refit on
    the AGC model instead of about 0.8 s. Otherwise (``fast=False``, a model it does not
    implement, or a refit it does not converge) the refit is :func:`fit_model` from the suggested
    initial values. Either way a MINUIT refit that fails is
    retried with strategy 2 (with strategy 1, the default, a staterror refit of the AGC model
    fails), so one bad refit does not lose the whole ranking.
    """
    import cabinetry
    from cabinetry.fit.results_containers import RankingResults

    from utils.inference.likelihood import FastLikelihood

    poi_index = model.config.poi_index
    if poi_index is None:
        raise StatisticsError("the model has no POI; cannot rank parameters by their impact on it")
    prefit = cabinetry.model_utils.prefit_uncertainties(model)
    names = list(model.config.par_names)
    unknown = sorted(set(parameters or ()) - set(names))
    if unknown:
        raise StatisticsError(f"ranking: no parameter(s) {unknown} in the model; parameters: {names}")
    ranked = [i for i, n in enumerate(names) if i != poi_index and (parameters is None or n in parameters)]
    # pyhf refits start from the suggested initial values, as cabinetry's do (starting from the
    # best-fit point without MINUIT knowing the covariance was measured slower here)
    init = list(model.config.suggested_init())
    fixed = list(model.config.suggested_fixed())
    retry = [strategy] + ([2] if strategy != 2 else [])
    likelihood = FastLikelihood.from_model(model) if fast else None
    refit = None
    if likelihood is not None:
        refit = _FastRefits(likelihood, data, fit_results, init, fixed, model.config.suggested_bounds(), retry)
    impacts = []
    # one summary per refit (and pyhf's dump of a failed one, retried here) would drown the log
    with _quiet(logging.WARNING, "cabinetry.fit"), _quiet(logging.CRITICAL, "pyhf"):
        for i in ranked:
            impacts.append(_impact_row(model, data, fit_results, i, prefit[i], init, fixed, retry, refit))
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


class _FastRefits:
    """Conditional refits of one model and data set with the fast likelihood (see :func:`_fast_refit`)."""

    def __init__(self, likelihood, data, fit_results, init, fixed, bounds, strategies) -> None:
        self.objective = likelihood.objective(data)
        self.best = np.asarray(fit_results.bestfit, dtype=float)
        unc = np.asarray(fit_results.uncertainty, dtype=float)
        self.cov = np.asarray(fit_results.corr_mat, dtype=float) * np.outer(unc, unc)
        self.fixed = list(fixed)
        self.init = np.asarray(init, dtype=float)
        self.bounds = [tuple(b) for b in bounds]
        self.strategies = strategies

    def __call__(self, i: int, value: float) -> np.ndarray:
        """The parameters at the minimum with parameter ``i`` held at ``value``."""
        return _fast_refit(self, i, value)


def _whitened_migrad(r: _FastRefits, start: np.ndarray, free: list[int], chol: np.ndarray) -> np.ndarray | None:
    """MIGRAD in the coordinates ``z`` of ``x[free] = start[free] + chol @ z``; None if not valid."""
    import iminuit

    def point(z: np.ndarray) -> np.ndarray:
        x = start.copy()
        x[free] = start[free] + chol @ z
        return x

    def fcn(z) -> float:
        value = r.objective(point(np.asarray(z)))
        return value if np.isfinite(value) else 1e300

    def grad(z) -> np.ndarray:
        return chol.T @ r.objective.gradient(point(np.asarray(z)))[free]

    def g2(z) -> np.ndarray:  # the Hessian of -2 ln L in whitened coordinates is 2 * identity
        return np.full(len(free), 2.0)

    m = iminuit.Minuit(fcn, np.zeros(len(free)), grad=grad, g2=g2)
    m.errors = np.ones(len(free))
    m.errordef = iminuit.Minuit.LEAST_SQUARES  # the objective is twice the NLL
    m.strategy, m.tol, m.print_level = 0, RANKING_TOLERANCE, 0
    m.migrad()
    return point(np.asarray(m.values)) if m.valid else None


def _fast_refit(r: _FastRefits, i: int, value: float) -> np.ndarray:
    """Minimise with parameter ``i`` held at ``value``; return the parameters at the minimum.

    Two starts, the lower minimum kept: the linear prediction of the conditional minimum,
    ``best + cov[:, i] / cov[i, i] * (value - best[i])``, and the suggested initial values
    (cabinetry's start; on the AGC model the first alone ends in a higher local minimum for the
    ME variation held at best fit - 1, a POI shift of -0.224 instead of -0.318). From each start
    the free parameters are ``start + L z`` with ``L L^T`` the conditional covariance: in ``z``
    the likelihood is close to a unit quadratic form, so MIGRAD (strategy 0, exact gradient,
    unit steps and second derivatives) converges in a few iterations and its EDM is a true
    distance to the minimum. Where that is not possible
    (no positive-definite covariance, a minimum outside the parameter bounds, a non-finite
    likelihood) or MIGRAD's minimum is not valid, the refit is MIGRAD in the model's own
    coordinates, with bounds and the exact gradient, with each strategy of ``r.strategies``.
    """
    import iminuit

    n = len(r.best)
    free = [k for k in range(n) if k != i and not r.fixed[k]]
    start = r.best.copy()
    if r.cov[i, i] > 0:
        start = start + r.cov[:, i] / r.cov[i, i] * (value - r.best[i])
    start[i] = value  # fixed parameters have no covariance: they stay where they are
    lo = np.array([b[0] for b in r.bounds])
    hi = np.array([b[1] for b in r.bounds])
    start = np.clip(start, lo, hi)
    try:
        cond = r.cov[np.ix_(free, free)]
        if r.cov[i, i] > 0:
            cond = cond - np.outer(r.cov[free, i], r.cov[free, i]) / r.cov[i, i]
        chol = np.linalg.cholesky(cond)
    except np.linalg.LinAlgError:
        chol = None
    if chol is not None:
        # two starts, the lower minimum wins: a large move (a constrained parameter held several
        # post-fit standard deviations away) can leave the linear prediction in the basin of a
        # higher local minimum, which the suggested initial values (cabinetry's start) avoid
        suggested = np.clip(np.where(np.arange(n) == i, value, r.init), lo, hi)
        found = [
            x
            for x in (_whitened_migrad(r, start, free, chol), _whitened_migrad(r, suggested, free, chol))
            if x is not None
        ]
        inside = [x for x in found if np.all(x >= lo) and np.all(x <= hi) and np.isfinite(r.objective(x))]
        if inside:
            return min(inside, key=r.objective)
        log.debug("ranking: whitened refit of parameter %d at %.4g not usable; refitting with bounds", i, value)
    fixed_all = list(r.fixed)
    fixed_all[i] = True
    for attempt, strategy in enumerate(r.strategies):
        m = iminuit.Minuit(r.objective, start, grad=r.objective.gradient)
        m.limits = r.bounds
        m.fixed = fixed_all
        m.errordef = iminuit.Minuit.LEAST_SQUARES
        m.strategy = 1 if strategy is None else strategy
        m.tol, m.print_level = RANKING_TOLERANCE, 0
        m.migrad()
        if m.valid:
            return np.asarray(m.values)
        if attempt < len(r.strategies) - 1:
            log.warning("ranking: refit with parameter %d = %.4g failed, retrying with MINUIT strategy 2", i, value)
    raise StatisticsError(
        f"the maximum-likelihood fit failed: MIGRAD found no valid minimum with parameter {i} held at {value:.4g}"
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
