"""The maximum-likelihood fit with its diagnostics: MINUIT's state, the covariance, MINOS errors
of the POI, constrained and pulled nuisance parameters, and one line per problem.

The fit minimises twice the negative log-likelihood of a pyhf model with iminuit's MIGRAD
directly (as ``cabinetry.fit`` does without pyhf's wrapper), so that MINUIT's state is kept:

1. MIGRAD with the requested strategy (tolerance :data:`TOLERANCE`); if the minimum is not valid, MIGRAD again from there
   (up to :data:`MIGRAD_RETRIES` times), as MINUIT's manual advises. Where the model's likelihood
   has a :class:`~utils.inference.likelihood.FastLikelihood` (every model cabinetry builds here),
   MIGRAD follows its exact gradient, and the steps below run on pyhf's ``logpdf`` from its
   minimum (:func:`_minimum`);
2. HESSE; if HESSE moves the estimated distance to the minimum (EDM) above its goal, MIGRAD and
   HESSE once more;
3. the covariance reported is the inverse of the Hessian of the likelihood computed from its
   structure (:func:`likelihood_hessian`: Poisson terms from central-difference derivatives of the
   expected yields, steps of :data:`HESSIAN_STEP` times each parameter's HESSE error, plus the
   constraint terms). MINUIT's HESSE differences the likelihood itself and refines its derivatives
   only to a few percent (its tolerances): the POI uncertainty moved by several percent under a
   1e-12 change of the data, and on small Monte Carlo samples (an ill-conditioned Hessian) by a
   factor of ten. MINUIT's own HESSE error of the POI is kept in the diagnostics, beside it;
4. MINOS for the POI.

A fit whose MIGRAD never converges is a :class:`StatisticsError`; anything less (HESSE forced
the covariance positive-definite, the Hessian is not positive-definite, a nuisance parameter is
pulled or constrained) is a problem line in :attr:`FitDiagnostics.problems`, recorded in
``fit_results.json`` and printed by the notebook and ``agc fit``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from utils.errors import StatisticsError

log = logging.getLogger(__name__)

MIGRAD_RETRIES = 3
#: central-difference step, in units of each parameter's HESSE error
HESSIAN_STEP = 0.1
#: MIGRAD tolerance (EDM goal 0.002 * tolerance); iminuit's default is 0.1. Small Monte Carlo
#: samples leave flat directions along which a looser minimum wanders, and the curvature with it
#: (the POI uncertainty of the tiny dataset moved by 4 % at 0.01, by 0.2 % at this value)
TOLERANCE = 0.0005
#: a nuisance parameter is listed as "constrained" when its post-fit / pre-fit uncertainty is below
#: this (information, not a problem: the data may well constrain a systematic; one constrained by
#: Monte Carlo noise in its templates is what the TemplateTreatment rules prune)
CONSTRAINT_THRESHOLD = 0.5
#: a nuisance parameter is "pulled" when |best fit - nominal| / pre-fit uncertainty exceeds this
PULL_THRESHOLD = 2.0
#: where problem lines point to
SEE = "the 'diagnostics' of fit_results.json (docs/inference.md)"


@dataclass(frozen=True)
class FitDiagnostics:
    """MINUIT's state after the fit and what it means for the result."""

    minuit_valid: bool
    edm: float
    edm_goal: float
    covariance_status: str  # "accurate" | "forced positive-definite" | "approximate" | "failed"
    strategy: int
    n_calls: int
    poi_hesse_uncertainty: float | None  # MINUIT's HESSE
    poi_hessian_uncertainty: float | None  # central differences (the reported one)
    hessian_positive_definite: bool
    poi_minos: tuple[float, float] | None  # (lower, upper), lower negative
    minos_valid: bool | None
    constrained: dict[str, float] = field(default_factory=dict)  # name -> post-fit / pre-fit uncertainty
    pulled: dict[str, float] = field(default_factory=dict)  # name -> pull in pre-fit units
    negative_yields: int = 0  # bins with a negative expected yield at the minimum
    at_bound: tuple[str, ...] = ()  # parameters at a bound, held there for the covariance
    problems: tuple[str, ...] = ()

    @property
    def poi_minos_symmetric(self) -> float | None:
        return None if self.poi_minos is None else 0.5 * (self.poi_minos[1] - self.poi_minos[0])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["poi_minos_symmetric"] = self.poi_minos_symmetric
        out["thresholds"] = {"constraint": CONSTRAINT_THRESHOLD, "pull": PULL_THRESHOLD}
        out["problems"] = list(self.problems)
        out["at_bound"] = list(self.at_bound)
        return out


def central_hessian(func, x: np.ndarray, steps: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    """Hessian of ``func`` at ``x`` by central differences (steps kept inside ``bounds``)."""
    x = np.asarray(x, dtype=float)
    h = _steps_inside(x, steps, bounds)
    n = len(x)
    f0 = func(x)
    step = np.diag(h)
    f_plus = np.array([func(x + step[i]) for i in range(n)])
    f_minus = np.array([func(x - step[i]) for i in range(n)])
    hess = np.zeros((n, n))
    for i in range(n):
        if h[i] == 0:  # a fixed parameter (no step): no row
            continue
        hess[i, i] = (f_plus[i] - 2 * f0 + f_minus[i]) / h[i] ** 2
        for j in range(i):
            if h[j] == 0:
                continue
            value = (
                func(x + step[i] + step[j])
                - func(x + step[i] - step[j])
                - func(x - step[i] + step[j])
                + func(x - step[i] - step[j])
            ) / (4 * h[i] * h[j])
            hess[i, j] = hess[j, i] = value
    return hess


def _steps_inside(x: np.ndarray, steps: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    lo = np.array([b[0] for b in bounds], dtype=float)
    hi = np.array([b[1] for b in bounds], dtype=float)
    return np.minimum(np.asarray(steps, dtype=float), 0.5 * np.minimum(x - lo, hi - x))


def likelihood_hessian(
    model: Any, data: list[float], x: np.ndarray, steps: np.ndarray, bounds: list[tuple[float, float]]
) -> np.ndarray:
    """Hessian of twice the negative log-likelihood of a pyhf model at ``x``, from its structure.

    With ``lam`` the expected main-measurement yields and ``n`` the data,
    ``d2(-2 ln L)/dp dq = 2 sum_i [n_i / lam_i^2 dlam_i/dp dlam_i/dq - (n_i / lam_i - 1) d2lam_i/dp dq]``
    plus the Hessian of the constraint terms. The derivatives of ``lam`` (smooth, of the scale of
    the yields) are central differences; differencing the likelihood itself instead loses the
    small curvature of flat directions next to the large one of the Poisson terms (a Hessian
    with condition number 1e4 inverted from entries accurate to 1e-5), which made the POI
    uncertainty of small Monte Carlo samples depend on the step by a factor of ten.
    """
    x = np.asarray(x, dtype=float)
    h = _steps_inside(x, steps, bounds)
    observed = np.asarray(data, dtype=float)
    n_main = model.config.nmaindata
    counts, aux = observed[:n_main], observed[n_main:]

    def lam(p: np.ndarray) -> np.ndarray:
        return np.asarray(model.expected_actualdata(p), dtype=float)

    def constraint(p: np.ndarray) -> float:
        return float(-2 * np.asarray(model.constraint_logpdf(aux, p)).reshape(-1)[0])

    n = len(x)
    step = np.diag(h)
    lam0 = lam(x)
    lam_plus = np.array([lam(x + step[k]) for k in range(n)])
    lam_minus = np.array([lam(x - step[k]) for k in range(n)])
    safe = np.where(h > 0, h, 1.0)
    jac = ((lam_plus - lam_minus) / (2 * safe[:, None])) * (h > 0)[:, None]  # (n_par, n_bins)
    positive = lam0 > 0
    weight = np.where(positive, counts / np.where(positive, lam0, 1.0) ** 2, 0.0)
    residual = np.where(positive, counts / np.where(positive, lam0, 1.0) - 1, 0.0)
    hess = 2 * (jac * weight) @ jac.T
    for i in range(n):
        if h[i] == 0:
            continue
        d2 = (lam_plus[i] - 2 * lam0 + lam_minus[i]) / h[i] ** 2
        hess[i, i] -= 2 * residual @ d2
        for j in range(i):
            if h[j] == 0:
                continue
            d2 = (
                lam(x + step[i] + step[j])
                - lam(x + step[i] - step[j])
                - lam(x - step[i] + step[j])
                + lam(x - step[i] - step[j])
            ) / (4 * h[i] * h[j])
            value = -2 * residual @ d2
            hess[i, j] += value
            hess[j, i] += value
    return hess + central_hessian(constraint, x, h, bounds)


#: a parameter closer to a bound than this fraction of its range is "at the bound"
AT_BOUND = 1e-6


def _at_bound(value: float, limits: tuple[float, float]) -> bool:
    lo, hi = limits
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return False
    return bool(min(value - lo, hi - value) <= AT_BOUND * (hi - lo))


def _covariance_status(fmin) -> str:
    if not fmin.has_covariance or fmin.hesse_failed:
        return "failed"
    if fmin.has_made_posdef_covar:
        return "forced positive-definite"
    return "accurate" if fmin.has_accurate_covar else "approximate"


def _minuit(model, data, strategy: int, init_pars, fix_pars, par_bounds, fast=None, gradient: bool = False):
    """A MINUIT minimiser of twice the negative log-likelihood of ``model`` and ``data``: pyhf's
    ``logpdf``, or ``fast`` (a :class:`~utils.inference.likelihood.FastLikelihood` of the model,
    the same function), with its exact gradient if ``gradient``."""
    import iminuit

    data = np.asarray(data, dtype=float)
    if fast is not None:
        objective = fast.objective(data)
        twice_nll = objective
        grad = objective.gradient if gradient else None
    else:

        def twice_nll(pars) -> float:
            return float(-2 * model.logpdf(np.asarray(pars), data)[0])

        grad = None
    start = list(init_pars or model.config.suggested_init())
    m = iminuit.Minuit(twice_nll, start, grad=grad, name=model.config.par_names)
    m.limits = par_bounds or model.config.suggested_bounds()
    m.fixed = list(fix_pars or model.config.suggested_fixed())
    m.errordef = iminuit.Minuit.LEAST_SQUARES  # the objective is twice the NLL
    m.strategy = strategy
    m.tol = TOLERANCE
    m.print_level = 0
    return m, twice_nll


def _migrad(m) -> None:
    """MIGRAD, again from where it stopped while the minimum is not valid (:data:`MIGRAD_RETRIES`)."""
    for _ in range(1 + MIGRAD_RETRIES):
        m.migrad(ncall=100_000)
        if m.valid:
            return


def _minimum(model, data, strategy: int, init_pars, fix_pars, par_bounds, fast):
    """MINUIT at the minimum, after MIGRAD and HESSE (steps 1 and 2 of the module's procedure).

    With a :class:`~utils.inference.likelihood.FastLikelihood` of the model, MIGRAD follows its
    exact gradient (a few hundred calls where differencing pyhf's ``logpdf`` took tens of
    thousands: 34 s for the quick start's ML categories); HESSE, the check of the minimum and
    MINOS then run on pyhf's ``logpdf``, as without it: MINUIT's strategy-2 HESSE is sensitive to
    the last bits of the function (on the AGC model its POI error moved by 60 % between two
    evaluations of the likelihood that agree to 1e-13), and its diagnostics stay those of pyhf's likelihood. Without a fast
    likelihood (or if its MIGRAD finds no valid minimum), every step runs on pyhf's ``logpdf``."""
    from utils.inference.likelihood import fast_minimum

    m, calls = None, 0
    if fast is not None:
        found = fast_minimum(
            fast,
            data,
            init_pars or model.config.suggested_init(),
            list(fix_pars or model.config.suggested_fixed()),
            list(par_bounds or model.config.suggested_bounds()),
            TOLERANCE,
        )
        if found is not None:
            m, _ = _minuit(model, data, strategy, found[0].tolist(), fix_pars, par_bounds)
            m.errors = np.where(found[1] > 0, found[1], m.errors)
            m.hesse()  # MINUIT's state at the minimum; it validates the minimum with its own derivatives
            calls = found[2]
        else:
            log.debug("no minimum with the fast likelihood's gradient; MIGRAD without it")
    if m is None:
        m, _ = _minuit(model, data, strategy, init_pars, fix_pars, par_bounds)
        _migrad(m)
        if not m.valid:
            raise StatisticsError(
                f"the maximum-likelihood fit failed: MIGRAD found no valid minimum (EDM {m.fmin.edm:.3g}, goal "
                f"{m.fmin.edm_goal:.3g}, {m.nfcn} calls, strategy {strategy}); check the templates for empty bins "
                "and the TemplateTreatment of the model configuration"
            )
        m.hesse()
    if not m.valid:  # HESSE's better covariance showed the minimum was not reached yet
        m.migrad(ncall=100_000)
        m.hesse()
    return m, calls


def fit_with_diagnostics(
    model: Any,
    data: list[float],
    *,
    strategy: int | None = None,
    init_pars: list[float] | None = None,
    fix_pars: list[bool] | None = None,
    par_bounds: list[tuple[float, float]] | None = None,
    minos: bool = True,
):
    """Fit ``model`` to ``data``; return ``(cabinetry FitResults, FitDiagnostics)``.

    ``strategy``: MINUIT strategy (None: 1). ``minos``: run MINOS for the POI.
    """
    from cabinetry.fit.results_containers import FitResults
    from cabinetry.model_utils import prefit_uncertainties

    from utils.inference.likelihood import FastLikelihood

    strategy = 1 if strategy is None else int(strategy)
    fast = FastLikelihood.from_model(model)
    m, guide_calls = _minimum(model, data, strategy, init_pars, fix_pars, par_bounds, fast)
    fmin = m.fmin
    names = list(model.config.par_names)
    poi = model.config.poi_index
    free = [i for i in range(len(names)) if not m.fixed[i]]
    bestfit = np.asarray(m.values, dtype=float)
    hesse_errors = np.where(m.fixed, 0.0, np.asarray(m.errors, dtype=float))

    hess = likelihood_hessian(model, data, bestfit, HESSIAN_STEP * hesse_errors, list(m.limits))
    # a parameter at one of its bounds (a staterror driven to zero by an empty data bin) is a
    # boundary of the minimum, not a curvature: it is held there for the covariance
    at_bound = [i for i in free if _at_bound(bestfit[i], m.limits[i])]
    free = [i for i in free if i not in at_bound]
    sub = hess[np.ix_(free, free)]
    eigen = np.linalg.eigvalsh(0.5 * (sub + sub.T)) if free else np.array([1.0])
    positive = bool(np.all(eigen > 0))
    if positive:
        cov_free = 2.0 * np.linalg.inv(sub)
        cov = np.zeros((len(names), len(names)))
        cov[np.ix_(free, free)] = cov_free
    else:
        cov = np.asarray(m.covariance, dtype=float)
    uncertainty = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(uncertainty, uncertainty)
    corr = np.nan_to_num(corr)
    np.fill_diagonal(corr, 1.0)

    minos_pair = minos_valid = None
    if minos and poi is not None and not m.fixed[poi]:
        try:
            m.minos(names[poi])
            me = m.merrors[names[poi]]
            minos_pair, minos_valid = (float(me.lower), float(me.upper)), bool(me.is_valid)
        except RuntimeError as err:  # MINOS refuses an invalid minimum
            log.warning("MINOS for %s failed: %s", names[poi], err)
            minos_valid = False

    prefit = np.asarray(prefit_uncertainties(model), dtype=float)
    nominal = np.asarray(model.config.suggested_init(), dtype=float)
    constrained: dict[str, float] = {}
    pulled: dict[str, float] = {}
    for i in free:
        if i == poi or prefit[i] <= 0:
            continue
        ratio = uncertainty[i] / prefit[i]
        pull = (bestfit[i] - nominal[i]) / prefit[i]
        if ratio < CONSTRAINT_THRESHOLD and not names[i].startswith("staterror"):
            constrained[names[i]] = float(ratio)
        if abs(pull) > PULL_THRESHOLD:
            pulled[names[i]] = float(pull)

    expected = np.asarray(model.expected_actualdata(bestfit), dtype=float)
    diagnostics = FitDiagnostics(
        minuit_valid=bool(fmin.is_valid),
        edm=float(fmin.edm),
        edm_goal=float(fmin.edm_goal),
        covariance_status=_covariance_status(fmin),
        strategy=strategy,
        n_calls=int(m.nfcn) + int(guide_calls),
        poi_hesse_uncertainty=float(hesse_errors[poi]) if poi is not None else None,
        poi_hessian_uncertainty=float(uncertainty[poi]) if poi is not None and positive else None,
        hessian_positive_definite=positive,
        poi_minos=minos_pair,
        minos_valid=minos_valid,
        constrained=constrained,
        pulled=pulled,
        negative_yields=int(np.sum(expected < 0)),
        at_bound=tuple(names[i] for i in at_bound),
    )
    diagnostics = _with_problems(diagnostics, names[poi] if poi is not None else "POI")
    fit_results = FitResults(bestfit, uncertainty, names, corr, float(m.fval))
    return fit_results, diagnostics


def _with_problems(d: FitDiagnostics, poi_name: str) -> FitDiagnostics:
    """``d`` with one line per problem (none when all is well)."""
    from dataclasses import replace

    lines = []
    if not d.minuit_valid:
        lines.append(f"MINUIT minimum not valid (EDM {d.edm:.3g} > goal {d.edm_goal:.3g}): the result is not reliable")
    if d.covariance_status == "forced positive-definite":
        lines.append("covariance forced positive-definite by MINUIT HESSE: its uncertainties are not reliable")
    elif d.covariance_status == "failed":
        lines.append("MINUIT HESSE failed: no reliable covariance")
    if not d.hessian_positive_definite:
        lines.append(
            "the Hessian at the minimum is not positive-definite (a flat or unstable direction): "
            "the uncertainties are MINUIT's and not reliable"
        )
    if d.minos_valid is False:
        lines.append(f"MINOS for {poi_name} failed or is not valid: no profile-likelihood interval")
    elif d.poi_minos is not None and d.poi_minos_symmetric is not None and d.poi_hessian_uncertainty:
        ratio = d.poi_minos_symmetric / d.poi_hessian_uncertainty
        if abs(ratio - 1) > 0.1:
            lines.append(
                f"MINOS ({d.poi_minos[0]:+.4f}/{d.poi_minos[1]:+.4f}) and the Hessian (+/-{d.poi_hessian_uncertainty:.4f}) "
                f"of {poi_name} differ by {abs(ratio - 1):.0%}: the likelihood is not parabolic; quote MINOS"
            )
    if d.negative_yields:
        lines.append(
            f"{d.negative_yields} bin(s) with a negative expected yield at the minimum: the likelihood is not "
            "bounded there; prune or smooth the noisy templates (TemplateTreatment)"
        )
    for name, pull in sorted(d.pulled.items()):
        lines.append(f"{name} pulled by {pull:+.2f} pre-fit standard deviations")
    return replace(d, problems=tuple(f"{line}; see {SEE}" for line in lines))
