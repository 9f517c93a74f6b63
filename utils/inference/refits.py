"""Conditional refits of the impact ranking (:mod:`utils.inference.ranking`) on the fast
likelihood (:mod:`utils.inference.likelihood`): one parameter held, the others minimised from
several starts in whitened coordinates, a minimum accepted only where pyhf's likelihood is
defined and MIGRAD valid, and otherwise a :class:`~utils.errors.StatisticsError` that says why.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from utils.errors import StatisticsError
from utils.inference.likelihood import whitened_minuit

log = logging.getLogger(__name__)

#: MIGRAD tolerance of the fast ranking refits (EDM goal 0.002 * tolerance, a distance to the
#: minimum of sqrt(2 EDM) = 6e-4 conditional standard deviations): in whitened coordinates the EDM
#: is accurate and the goal costs a few calls more than iminuit's 0.1, which moved the AGC impacts
#: by up to 5e-4
RANKING_TOLERANCE = 1e-4

#: a parameter without post-fit variance (at a bound, or without effect on any yield) is held at
#: its best fit in the fast refits; a refit is rejected where releasing it would lower twice the
#: NLL noticeably: its gradient times its pre-fit width, pointing away from its bound, above this
HELD_GRADIENT = 1e-3

#: a refit that moves its parameter more than this many post-fit standard deviations starts from
#: the best fit (with the parameter moved) as well as from the linear prediction
FAR = 1.5

#: call limits of one MIGRAD of the fast refits, in whitened coordinates (a few dozen calls on
#: the AGC model, a few hundred on the tiny dataset's) and in the model's own (the last resort):
#: beyond them the likelihood decreases without bound or the refit goes nowhere
WHITENED_CALLS = 3000
BOUNDED_CALLS = 6000


class RefitSetup:
    """What every refit of one ranking shares: the model, its data and best fit, the pre-fit
    widths, starts, bounds and MINUIT strategies."""

    def __init__(self, model: Any, data: list[float], fit_results: Any, prefit: np.ndarray, strategies: list) -> None:
        self.model, self.data, self.strategies = model, data, strategies
        self.names = list(model.config.par_names)
        self.best = np.asarray(fit_results.bestfit, dtype=float)
        self.post = np.asarray(fit_results.uncertainty, dtype=float)
        self.prefit = prefit
        self.init = np.asarray(model.config.suggested_init(), dtype=float)
        self.fixed = list(model.config.suggested_fixed())
        bounds = model.config.suggested_bounds()
        self.lo = np.array([b[0] for b in bounds], dtype=float)
        self.hi = np.array([b[1] for b in bounds], dtype=float)
        self.poi = model.config.poi_index
        self.fast: FastRefits | None = None


def bin_labels(model: Any) -> list[str]:
    """``"<channel> bin <k>"`` for every bin of the main measurement, in pyhf's order."""
    return [f"{c} bin {k}" for c in model.config.channels for k in range(model.config.channel_nbins[c])]


class FastRefits:
    """Conditional refits of one model and data set with the fast likelihood (see :func:`fast_refit`)."""

    def __init__(self, likelihood: Any, data: list[float], fit_results: Any, ctx: RefitSetup, bins: list[str]) -> None:
        self.likelihood = likelihood
        self.objective = likelihood.objective(data)
        self.ctx, self.bins = ctx, bins
        unc = np.asarray(fit_results.uncertainty, dtype=float)
        self.cov = np.asarray(fit_results.corr_mat, dtype=float) * np.outer(unc, unc)
        self.width = np.where(ctx.prefit > 0, ctx.prefit, 1.0)
        self.nominal = np.abs(likelihood.nominal).sum(axis=0)
        self.constraint = np.zeros(len(ctx.best))  # the Gaussian constraints' 1 / sigma^2
        self.constraint[likelihood.gauss_index] = self.objective.inv_var

    def __call__(self, i: int, value: float) -> np.ndarray:
        """The parameters at the minimum with parameter ``i`` held at ``value``."""
        return fast_refit(self, i, value)


def fast_refit(r: FastRefits, i: int, value: float) -> np.ndarray:
    """Minimise with parameter ``i`` held at ``value``; return the parameters at the minimum.

    Parameters without post-fit variance (at a bound, or without effect) stay at their best fit;
    one the likelihood pulls away (:func:`_problem`) is freed and the attempt repeated. The
    others are ``start + L z``, with ``L L^T`` the inverse of half the Gauss-Newton Hessian at
    the start (:func:`_gauss_newton_scale`; the conditional covariance of the fit where that is
    not defined): in ``z`` the likelihood is close to a unit quadratic form, so MIGRAD (strategy
    0, exact gradient, unit steps and second derivatives) converges in a few iterations and its
    EDM is a true distance to the minimum. The start is the linear prediction of the conditional
    minimum, ``best + cov[:, i] / cov[i, i] * (value - best[i])``; for a move beyond
    :data:`FAR` post-fit standard deviations also the best fit with ``i`` moved, and the lower
    minimum is kept (on the AGC model the linear prediction alone ends in a higher local minimum
    for the ME variation held at best fit - 1, a POI shift of -0.224 instead of -0.318). Where
    none is usable, the suggested initial values (cabinetry's start) and MINUIT strategy 2 (not
    where the attempts went beyond the bounds or the yields' domain: other starts go there too),
    then MIGRAD in the model's own coordinates with bounds from the lowest point found. Every
    minimisation runs on the likelihood continued below tiny yields
    (:meth:`~utils.inference.likelihood.Objective.extended`), so a start where a large move
    drives a yield negative (pyhf's likelihood: not a number) is not a failure; a minimum is
    only accepted where the two agree. No accepted minimum: a :class:`StatisticsError` saying,
    for every attempt, why.
    """
    ctx = r.ctx
    n = len(ctx.best)
    holdable = [k for k in range(n) if k != i and not ctx.fixed[k]]
    held = [k for k in holdable if not r.cov[k, k] > 0]
    free = [k for k in holdable if r.cov[k, k] > 0]

    def start_at(point: np.ndarray) -> np.ndarray:
        x = np.clip(point, ctx.lo, ctx.hi)
        x[held] = ctx.best[held]
        x[i] = value  # fixed parameters have no covariance: they stay where they are
        return x

    linear = ctx.best + (r.cov[:, i] / r.cov[i, i] * (value - ctx.best[i]) if r.cov[i, i] > 0 else 0.0)
    starts = {"linear prediction": start_at(linear), "best fit": start_at(ctx.best),
              "suggested initial values": start_at(ctx.init)}  # fmt: skip
    try:
        cond = r.cov[np.ix_(free, free)]
        if r.cov[i, i] > 0:
            cond = cond - np.outer(r.cov[free, i], r.cov[free, i]) / r.cov[i, i]
        chol = np.linalg.cholesky(cond)
    except np.linalg.LinAlgError:
        chol = None
    found: list[np.ndarray] = []  # every end point, usable or not: where the bounded MIGRAD starts
    reasons: dict[str, list[str]] = {}  # reason -> the attempts that ended with it
    far = not abs(value - ctx.best[i]) <= FAR * ctx.post[i]
    stages = [[(0, "linear prediction"), (0, "best fit")] if far else [(0, "linear prediction")],
              [(0, "suggested initial values"), (2, "linear prediction"), (2, "best fit")]]  # fmt: skip
    released: list[int] = []  # held parameters the likelihood pulled away: free (unit width) from then on
    stage = 0
    while chol is not None and stage < len(stages):
        usable, pulled, wandered = [], set(), False
        fallback = chol if not released else _block_diagonal(chol, r.width[released])
        for strategy, name in stages[stage]:
            scale = _gauss_newton_scale(r, starts[name], free + released)
            x, fit_problem = _whitened_migrad(r, starts[name], free + released,
                                              fallback if scale is None else scale, strategy)  # fmt: skip
            found.append(x)
            problem, pulled_here = _problem(r, x, [k for k in held if k not in released])
            pulled.update(pulled_here)
            problem = problem or fit_problem
            if problem is None:
                usable.append(x)
            else:
                reasons.setdefault(problem, []).append(f"{name}, strategy {strategy}")
                wandered = wandered or _wandered(r, x)
        if usable:
            return min(usable, key=r.objective)
        if pulled:  # the same starts again, with those free
            released += sorted(pulled)
            continue
        if wandered:  # towards a minimum beyond the bounds or the yields' domain: other starts go there too
            break
        stage += 1
    if chol is None:
        reasons.setdefault("the conditional covariance is not positive-definite", []).append("whitened")
    candidates = [np.clip(x, ctx.lo, ctx.hi) for x in [*found, *starts.values()]]
    candidates = [x for x in candidates if np.isfinite(r.objective.extended(x))]
    start = min(candidates, key=r.objective.extended) if candidates else starts["linear prediction"]
    x, problem = _bounded_migrad(r, start, [*free, *held])
    if problem is None:
        return x
    reasons.setdefault(problem, []).append("bounds, from the lowest point")
    at_start = _yields_problem(r, starts["linear prediction"])
    prefix = f"at the linear prediction, {at_start}; " if at_start else ""
    raise StatisticsError(
        f"no valid minimum with {ctx.names[i]} held at {value:.4g}: {prefix}"
        + "; ".join(f"{' / '.join(attempts)}: {why}" for why, attempts in reasons.items())
    )


def _gauss_newton_scale(r: FastRefits, x: np.ndarray, free: list[int]) -> np.ndarray | None:
    """``L`` with ``L L^T = (H / 2)^-1``, ``H`` the Gauss-Newton Hessian of twice the NLL in the
    ``free`` parameters at ``x``: ``2 J^T diag(n / lam^2) J`` plus the constraints' ``2 / sigma^2``
    (the Hessian without the terms in ``(n / lam - 1)``, small near a minimum). None where a yield
    with data is at or below its floor, or ``H`` is not positive-definite."""
    from scipy.linalg.lapack import dtrtri  # unblocked below 64 parameters: no BLAS threads to wake

    obj = r.objective
    lam = r.likelihood.expected(x)
    if np.any(lam[obj.filled] <= obj.floor[obj.filled]):
        return None
    jac = r.likelihood.jacobian(x)[:, free]
    weights = np.where(obj.filled, obj.counts / np.where(obj.filled, lam, 1.0) ** 2, 0.0)
    half = (jac.T * weights) @ jac + np.diag(r.constraint[free])
    try:
        root = np.linalg.cholesky(half)
    except np.linalg.LinAlgError:
        return None
    inverse, info = dtrtri(root, lower=1)
    return inverse.T if info == 0 else None


def _block_diagonal(chol: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``chol`` and ``diag(widths)`` as one block-diagonal scale."""
    n, m = len(chol), len(widths)
    out = np.zeros((n + m, n + m))
    out[:n, :n] = chol
    out[n:, n:] = np.diag(widths)
    return out


def _migrad_problem(m: Any) -> str | None:
    """Why MINUIT's minimum is not valid, or None."""
    if m.valid:
        return None
    fmin = m.fmin
    why = [text for flag, text in ((fmin.has_reached_call_limit, "call limit reached"),
                                   (fmin.is_above_max_edm, f"EDM {fmin.edm:.2g} above {fmin.edm_goal:.2g}"),
                                   (fmin.has_parameters_at_limit, "parameters at a limit"),
                                   (not fmin.has_posdef_covar, "covariance not positive-definite"))
           if flag]  # fmt: skip
    return "MIGRAD not valid (" + (", ".join(why) or "no reason given") + ")"


def _whitened_migrad(
    r: FastRefits, start: np.ndarray, free: list[int], chol: np.ndarray, strategy: int
) -> tuple[np.ndarray, str | None]:
    """MIGRAD of the extended likelihood in the coordinates ``z`` of ``x[free] = start[free] +
    chol @ z``: the end point and why it is not a valid minimum (None where it is)."""
    x, m = whitened_minuit(r.objective.extended, r.objective.extended_gradient, start, free, chol,
                           tolerance=RANKING_TOLERANCE, strategy=strategy, max_calls=WHITENED_CALLS)  # fmt: skip
    return x, _migrad_problem(m)


def _bounded_migrad(r: FastRefits, start: np.ndarray, free: list[int]) -> tuple[np.ndarray, str | None]:
    """MIGRAD on the extended likelihood in the model's coordinates, with bounds and the exact
    gradient, with each strategy of the ranking until one is valid."""
    import iminuit

    ctx = r.ctx
    fixed = [k not in free for k in range(len(start))]
    problem: str | None = None
    for attempt, strategy in enumerate(ctx.strategies):
        m = iminuit.Minuit(r.objective.extended, start, grad=r.objective.extended_gradient)
        m.limits = list(zip(ctx.lo, ctx.hi, strict=True))
        m.fixed = fixed
        m.errordef = iminuit.Minuit.LEAST_SQUARES
        m.strategy = 1 if strategy is None else strategy
        m.tol, m.print_level = RANKING_TOLERANCE, 0
        with np.errstate(over="ignore", invalid="ignore"):
            m.migrad(ncall=BOUNDED_CALLS, iterate=1)
        x = np.asarray(m.values)
        problem = _problem(r, x, [])[0]
        if problem is not None:  # beyond the yields' domain: another strategy goes there too
            return x, problem
        problem = _migrad_problem(m)
        if problem is None:
            return x, None
        if attempt < len(ctx.strategies) - 1:
            log.debug("ranking: bounded refit failed (%s), retrying with MINUIT strategy 2", problem)
    return x, problem


def _yields_problem(r: FastRefits, x: np.ndarray) -> str | None:
    """Where the expected yields at ``x`` leave the region where the likelihood is pyhf's: below
    the floor of :meth:`~utils.inference.likelihood.Objective.extended` in a bin with data, or
    negative in a bin without (where the likelihood then decreases without bound)."""
    obj = r.objective
    lam = r.likelihood.expected(x)
    low = np.flatnonzero(obj.filled & (lam < obj.floor))
    negative = _negative_without_data(r, x)
    parts = []
    if len(low):
        parts.append("expected yields near or below zero: " + ", ".join(f"{lam[b]:.4g} in {r.bins[b]} (observed {obj.counts[b]:.4g})"
                                                     for b in low[:3]) + (" ..." if len(low) > 3 else ""))  # fmt: skip
    if len(negative):
        parts.append("negative expected yields in bins without data (" + ", ".join(r.bins[b] for b in negative[:3])
                     + "): the likelihood has no lower bound there")  # fmt: skip
    return "; ".join(parts) or None


def _problem(r: FastRefits, x: np.ndarray, held: list[int]) -> tuple[str | None, list[int]]:
    """Why ``x`` is not a usable conditional minimum (None where it is), and the held parameters
    the likelihood pulls away: a parameter outside its bounds, yields where the extended
    likelihood is not pyhf's (:func:`_yields_problem`), a likelihood that is not finite, or a
    held parameter whose gradient (times its pre-fit width) pulls it from where it is held by more
    than :data:`HELD_GRADIENT`."""
    ctx = r.ctx
    span = 1e-9 * (ctx.hi - ctx.lo)
    outside = np.flatnonzero((x < ctx.lo - span) | (x > ctx.hi + span))
    if len(outside):
        k = outside[0]
        return f"{ctx.names[k]} = {x[k]:.4g} outside its bounds [{ctx.lo[k]:.4g}, {ctx.hi[k]:.4g}]", []
    yields = _yields_problem(r, x)
    if yields:
        return yields, []
    if not np.isfinite(r.objective(x)):
        return "the likelihood is not finite", []
    if not held:
        return None, []
    g = r.objective.gradient(x) * r.width
    pulled = []
    for k in held:
        at_lo = x[k] - ctx.lo[k] <= 1e-6 * (ctx.hi[k] - ctx.lo[k])
        at_hi = ctx.hi[k] - x[k] <= 1e-6 * (ctx.hi[k] - ctx.lo[k])
        pull = -g[k] if at_lo else g[k] if at_hi else abs(g[k])
        if pull <= HELD_GRADIENT:
            continue
        # where moving it would drive a yield without data negative (a staterror at zero in a
        # bin whose other factors went negative), the likelihood's domain ends: it is not free to go
        moved = x.copy()
        moved[k] -= 1e-3 * r.width[k] * np.sign(g[k])
        if len(_negative_without_data(r, moved)) <= len(_negative_without_data(r, x)):
            pulled.append(k)
    if pulled:
        names = ", ".join(ctx.names[k] for k in pulled)
        return f"{names}, held at the best fit (no post-fit variance), pulled away by the likelihood", pulled
    return None, []


def _wandered(r: FastRefits, x: np.ndarray) -> bool:
    """Whether ``x`` lies beyond a parameter's bounds or where a yield without data is negative."""
    ctx = r.ctx
    span = 1e-9 * (ctx.hi - ctx.lo)
    return bool(np.any((x < ctx.lo - span) | (x > ctx.hi + span)) or len(_negative_without_data(r, x)))


def _negative_without_data(r: FastRefits, x: np.ndarray) -> np.ndarray:
    """Bins without data whose expected yield at ``x`` is negative (beyond rounding): pyhf's
    Poisson term is finite there, and lower the more negative the yield."""
    lam = r.likelihood.expected(x)
    return np.flatnonzero(~r.objective.filled & (lam < -1e-9 * np.maximum(r.nominal, 1.0)))
