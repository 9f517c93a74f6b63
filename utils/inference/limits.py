"""The CLs upper limit of the project: CLs of a pyhf model at any POI value and the search for
the 95% CL upper limit. The inference stage (:func:`utils.inference.fit.upper_limit_of`) and the
preservation steps (:mod:`utils.preservation.evaluation`) both use it, so one workspace has one
limit.

CLs: pyhf's ``hypotest``, asymptotic, q-tilde, MINUIT on the numpy backend: the numbers
``pyhf cls --optimizer minuit`` prints (pyhf's default scipy fits of the AGC model return NaN
far above the limit).

Limit search (:func:`upper_limit`): about ten CLs evaluations; on the test workspaces it agrees
with ``cabinetry.fit.limit`` within 1% (observed and every band) at a third of the time, and it
does not fail where MINUIT fails at a bracket end, as cabinetry's bracketing root search does.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.errors import StatisticsError
from utils.inference.backend import first_line, numpy_backend

log = logging.getLogger(__name__)

CLS_LEVEL = 0.05  # 95% CL upper limits
#: the band (in sigma) of each CLs curve: observed (taken as the median), expected -2 ... +2
CURVE_SIGMAS = (0, -2, -1, 0, 1, 2)


@dataclass(frozen=True)
class LimitSummary:
    confidence_level: float
    observed_limit: float
    expected_limit: tuple[float, ...]  # -2, -1, 0, +1, +2 sigma


@dataclass(frozen=True)
class CLsResult:
    """CLs of the hypothesis ``poi = poi_value`` (asymptotic, q-tilde)."""

    poi_name: str
    poi_value: float
    cls_obs: float
    cls_exp: tuple[float, ...]  # -2, -1, 0, +1, +2 sigma

    @property
    def curves(self) -> tuple[float, ...]:
        """Observed, then expected -2 ... +2 sigma."""
        return (self.cls_obs, *self.cls_exp)


def model_and_data(ws: Mapping[str, Any]) -> tuple[Any, list[float]]:
    """The pyhf model and data of a workspace, built on the numpy backend as ``pyhf cls`` builds
    them (pyhf's default interpolation codes 4 and 4p are cabinetry's: the model the inference
    stage fits)."""
    import pyhf

    with numpy_backend():
        workspace = pyhf.Workspace(dict(ws))
        model = workspace.model()
        return model, list(workspace.data(model))


class CLsScan:
    """CLs of one model and its data at any value of the POI, each value computed once.

    ``strategy``: the MINUIT strategy (None: pyhf's choice, 1 without gradients). A POI whose
    lower bound is negative is bounded at zero, as q-tilde requires (and cabinetry does).
    """

    def __init__(self, model: Any, data: list[float], *, strategy: int | None = None) -> None:
        if model.config.poi_index is None:
            raise StatisticsError("the model has no POI; cannot compute CLs or an upper limit")
        self.model = model
        self.data = data
        self.strategy = strategy
        self.poi_name: str = model.config.poi_name
        self.par_bounds = [tuple(b) for b in model.config.suggested_bounds()]
        low, high = self.par_bounds[model.config.poi_index]
        self.bounds = (max(float(low), 0.0), float(high))
        self.par_bounds[model.config.poi_index] = self.bounds
        self._cache: dict[float, CLsResult] = {}

    @classmethod
    def from_workspace(cls, ws: Mapping[str, Any], *, strategy: int | None = None) -> CLsScan:
        return cls(*model_and_data(ws), strategy=strategy)

    def __call__(self, poi_value: float) -> CLsResult:
        import pyhf

        poi_value = float(poi_value)
        if poi_value not in self._cache:
            with numpy_backend(pyhf.optimize.minuit_optimizer(strategy=self.strategy)):
                try:
                    obs, exp = pyhf.infer.hypotest(
                        poi_value,
                        self.data,
                        self.model,
                        par_bounds=self.par_bounds,
                        test_stat="qtilde",
                        return_expected_set=True,
                    )
                except Exception as err:  # pyhf's FailedMinimization and friends
                    raise StatisticsError(
                        f"CLs at {self.poi_name} = {poi_value:.4g} failed: {first_line(err)}"
                    ) from err
            result = CLsResult(self.poi_name, poi_value, float(obs), tuple(float(x) for x in exp))
            if not all(math.isfinite(x) for x in result.curves):
                raise StatisticsError(f"CLs at {self.poi_name} = {poi_value:.4g} is not a number: {result}")
            self._cache[poi_value] = result
            log.debug("CLs(%s = %.4g) = %.4g, expected %s", self.poi_name, poi_value, obs, result.cls_exp)
        return self._cache[poi_value]

    @property
    def evaluated(self) -> list[CLsResult]:
        return [self._cache[k] for k in sorted(self._cache)]

    def crossing(self, curve: int, level: float) -> tuple[CLsResult, CLsResult] | None:
        """The evaluated neighbours between which ``curve`` first falls below ``level``."""
        points = self.evaluated
        for a, b in itertools.pairwise(points):
            if a.curves[curve] > level >= b.curves[curve]:
                return a, b
        return None

    def interpolate(self, curve: int, level: float) -> float:
        """Where ``curve`` crosses ``level``, interpolated between its evaluated neighbours in
        a variable linear in the POI for the asymptotic expected CLs of band N,
        Phi(N - mu/sigma) / Phi(N): t = Phi^-1(CLs Phi(N)) = N - mu/sigma (N = 0 for the
        observed curve)."""
        from scipy.stats import norm

        pair = self.crossing(curve, level)
        if pair is None:
            raise StatisticsError(f"CLs curve {curve} does not cross {level} in the evaluated {self.poi_name} values")
        scale = norm.cdf(CURVE_SIGMAS[curve])

        def t(cls: float) -> float:
            return float(norm.ppf(max(cls, 1e-300) * scale))

        a, b = pair
        fa, fb = t(a.curves[curve]) - t(level), t(b.curves[curve]) - t(level)
        return a.poi_value + fa * (b.poi_value - a.poi_value) / (fa - fb)


def cls_at(ws: Mapping[str, Any], poi_value: float = 1.0) -> CLsResult:
    """CLs of a workspace at ``poi_value`` (see :class:`CLsScan`)."""
    return CLsScan.from_workspace(ws)(poi_value)


def upper_limit(
    scan: CLsScan, *, level: float = CLS_LEVEL, start: float = 1.0, rtol: float = 0.01, max_steps: int = 8
) -> LimitSummary:
    """The upper limit on the POI (CLs = ``level``): observed and expected -2 ... +2 sigma.

    Search: CLs at ``start``, then doubled (halved) until the observed and the median expected
    curves have crossed ``level`` (and the bands too, while within the POI bounds); then secant
    steps (:meth:`CLsScan.interpolate`) refine the observed and the median expected limit until
    a step moves them by less than ``rtol`` (relative); the bands are interpolated between the
    evaluated points (NaN for a band that does not cross within the bounds). About ten CLs
    evaluations in all (cabinetry's bracketing root search needs some per band, and fails where
    MINUIT fails at a bracket end).
    """
    low, high = scan.bounds
    required = (0, 3)  # observed, median expected
    up = start
    while max(scan(up).curves) > level:
        crossed = max(scan(up).curves[c] for c in required) <= level
        if 2 * up > high and not crossed:
            raise StatisticsError(
                f"CLs does not fall to {level} below the {scan.poi_name} bound {high} "
                f"(at {up:.4g}: observed {scan(up).cls_obs:.3g}, expected {scan(up).cls_exp[2]:.3g})"
            )
        if 2 * up > high:
            break
        try:
            scan(2 * up)
        except StatisticsError:
            if not crossed:
                raise
            log.warning("CLs at %s = %.4g failed; the outer bands end there", scan.poi_name, 2 * up)
            break
        up *= 2
    down = start
    while min(scan(down).curves) <= level:
        down /= 2
        if down < max(low, start * 2.0**-max_steps):
            raise StatisticsError(f"CLs is already below {level} at {scan.poi_name} = {down * 2:.3g}")
    for curve in required:
        previous = None
        for _ in range(max_steps):
            estimate = scan.interpolate(curve, level)
            if previous is not None and abs(estimate - previous) <= rtol * estimate:
                break
            previous = estimate
            scan(estimate)
    limits = [scan.interpolate(c, level) if scan.crossing(c, level) else math.nan for c in range(6)]
    if not all(math.isfinite(x) for x in limits):
        log.warning("%s: expected bands beyond the bound %g are not given", scan.poi_name, high)
    log.info(
        "upper limit on %s: observed %.4g, expected %.4g (%d CLs evaluations)",
        scan.poi_name, limits[0], limits[3], len(scan.evaluated),
    )  # fmt: skip
    return LimitSummary(1 - level, limits[0], tuple(limits[1:]))
