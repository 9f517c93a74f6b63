"""The profile-likelihood scan of one parameter (the POI by default) around the best fit.

At each scanned value the parameter is held and every other free parameter is fitted again with
MINUIT (MIGRAD, strategy 0, tolerance :data:`SCAN_TOLERANCE`), starting where the Gaussian
approximation of the fit's covariance puts the conditional minimum. Where the model has a
:class:`~utils.inference.likelihood.FastLikelihood`, MIGRAD follows its exact gradient in the
coordinates whitened by the conditional covariance (:func:`~utils.inference.likelihood.whitened_migrad`:
a few dozen calls a point); else, or where that finds no valid minimum, it differences the
likelihood with the conditional uncertainties as first steps: about 900 calls a point for the 34
parameters of the AGC model, against about 1250 from the neighbouring point and 2000-2700 with
strategy 1. Strategy 0 leaves -2 ln L within 0.04 of strategy 1's at 2.5 sigma and within 0.003
at 1 sigma (AGC model).
The reported curve is ``-2 ln L(point) - (-2 ln L(best fit))``;
its crossings of 1 are the 68 % CL profile-likelihood interval (the one MINOS finds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.errors import StatisticsError
from utils.inference.backend import numpy_backend

log = logging.getLogger(__name__)

#: scanned range in units of the parameter's uncertainty, each side of the best fit
SCAN_SIGMAS = 2.5
#: points of the scan (odd: the best fit is one of them)
SCAN_STEPS = 9
#: points of a scan given the MINOS errors: the best fit and the two ends (the MINOS points join)
MINOS_SCAN_STEPS = 3
#: MIGRAD tolerance of the scan's refits (EDM goal 2e-4 in -2 ln L: far below what a figure shows)
SCAN_TOLERANCE = 0.1


@dataclass(frozen=True)
class LikelihoodScan:
    """A profile-likelihood scan: ``delta_twice_nll[i]`` at ``values[i]``."""

    parameter: str
    bestfit: float
    uncertainty: float
    values: tuple[float, ...]
    delta_twice_nll: tuple[float, ...]
    n_calls: int

    @property
    def interval(self) -> tuple[float | None, float | None]:
        """Where the curve crosses 1 below and above the best fit (None: not inside the scan)."""
        return crossings(np.asarray(self.values), np.asarray(self.delta_twice_nll), self.bestfit)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "parameter": self.parameter,
            "bestfit": self.bestfit,
            "values": list(self.values),
            "delta_twice_nll": list(self.delta_twice_nll),
            "interval_68": [low, high],
            "n_calls": self.n_calls,
        }


def crossings(
    values: np.ndarray, delta: np.ndarray, bestfit: float, level: float = 1.0
) -> tuple[float | None, float | None]:
    """Linear interpolation of the points where ``delta`` crosses ``level`` on each side of the
    scanned point nearest ``bestfit`` (the crossing nearest to it; None where the scan does not
    reach ``level``)."""
    order = np.argsort(values)
    x, y = np.asarray(values, dtype=float)[order], np.asarray(delta, dtype=float)[order]

    def first(indices: range) -> float | None:
        for i in indices:
            j = i - 1 if indices.step > 0 else i + 1  # the neighbour nearer the best fit
            if y[i] >= level > y[j]:  # interpolated in sqrt(delta), linear in x for a parabola
                ri, rj, r = np.sqrt(y[i]), np.sqrt(max(y[j], 0.0)), np.sqrt(level)
                return float(x[j] + (r - rj) * (x[i] - x[j]) / (ri - rj))
        return None

    centre = int(np.argmin(np.abs(x - bestfit)))
    return first(range(centre - 1, -1, -1)), first(range(centre + 1, len(x)))


def profile_scan(
    model: Any,
    data: list[float],
    fit_results: Any,
    parameter: str | None = None,
    *,
    n_steps: int = SCAN_STEPS,
    n_sigmas: float = SCAN_SIGMAS,
    minos: tuple[float, float] | None = None,
) -> LikelihoodScan:
    """Profile-likelihood scan of ``parameter`` (default: the POI) over best fit +/- ``n_sigmas``
    uncertainties in ``n_steps`` points, from the best fit of ``fit_results`` (cabinetry's
    ``FitResults`` of the same model and data). Points outside the parameter's bounds are left
    out. ``minos``: the parameter's MINOS errors (lower, upper) from the same fit: the profile
    is 1 there by MINOS's definition, so they join the scan as two points that need no refit
    (:data:`MINOS_SCAN_STEPS` then gives the curve at 1 and about 6 at the ends with two refits)."""
    from utils.inference.diagnostics import _minuit
    from utils.inference.likelihood import FastLikelihood, whitened_migrad

    names = list(model.config.par_names)
    parameter = parameter or model.config.poi_name
    if parameter not in names:
        raise StatisticsError(f"scan: no parameter {parameter!r} in the model; parameters: {names}")
    if n_steps < 3 or n_steps % 2 == 0:
        raise StatisticsError(f"scan: n_steps={n_steps}; use an odd number of at least 3")
    index = names.index(parameter)
    best = np.asarray(fit_results.bestfit, dtype=float)
    centre, sigma = float(best[index]), float(fit_results.uncertainty[index])
    if not sigma > 0:
        raise StatisticsError(f"scan: {parameter} has no uncertainty ({sigma}); was it fixed in the fit?")
    low_bound, high_bound = model.config.suggested_bounds()[index]
    half = (n_steps - 1) // 2
    offsets = np.arange(1, half + 1) * (n_sigmas * sigma / half)
    fixed = list(model.config.suggested_fixed())
    fixed[index] = True
    # the Gaussian approximation of the profile from the fit's covariance: each refit starts at the
    # conditional minimum it predicts, with the conditional uncertainties as MINUIT's first steps
    unc = np.asarray(fit_results.uncertainty, dtype=float)
    cov = np.asarray(fit_results.corr_mat, dtype=float) * np.outer(unc, unc)
    slope = cov[:, index] / cov[index, index]
    steps = np.sqrt(np.clip(np.diag(cov) - cov[:, index] ** 2 / cov[index, index], 0, None))
    steps = np.where(steps > 0, steps, np.where(unc > 0, unc, 0.01))
    points: dict[float, float] = {centre: 0.0}
    if minos is not None:
        points.update({centre + float(minos[0]): 1.0, centre + float(minos[1]): 1.0})
    calls = 0
    fast = FastLikelihood.from_model(model)
    objective = fast.objective(data) if fast is not None else None
    free = [k for k in range(len(best)) if not fixed[k]]
    try:
        cond = cov[np.ix_(free, free)] - np.outer(cov[free, index], cov[free, index]) / cov[index, index]
        chol = np.linalg.cholesky(cond)
    except np.linalg.LinAlgError:
        chol = None
    with numpy_backend():
        for value in centre + np.concatenate([-offsets, offsets]):
            if not low_bound <= value <= high_bound:
                continue
            start = best + slope * (value - centre)
            start[index] = value
            found = None
            if objective is not None and chol is not None:
                found = whitened_migrad(objective, start, free, chol, SCAN_TOLERANCE)
            if found is not None and objective is not None and np.isfinite(objective(found[0])):
                calls += found[1]
                points[float(value)] = float(objective(found[0]) - fit_results.best_twice_nll)
                continue
            m, _ = _minuit(model, data, 0, start.tolist(), fixed, None, fast)
            m.errors = steps.tolist()
            m.tol = SCAN_TOLERANCE
            m.migrad(ncall=100_000)
            if not m.valid:
                m.migrad(ncall=100_000)
            calls += int(m.nfcn)
            if not m.valid:
                log.warning("scan: the refit with %s = %.4g did not converge; point left out", parameter, value)
                continue
            points[float(value)] = float(m.fval - fit_results.best_twice_nll)
    values = sorted(points)
    log.debug("scan of %s: %d points, %d calls", parameter, len(values), calls)
    return LikelihoodScan(parameter, centre, sigma, tuple(values), tuple(points[v] for v in values), calls)
