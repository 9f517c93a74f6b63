"""The impact ranking: the shift of the POI with each nuisance parameter held at its best fit
plus/minus its pre-fit and its post-fit uncertainty (the definition of ``cabinetry.fit.ranking``).

Each refit is a conditional minimisation with one parameter held. :func:`rank_parameters` runs
them on the fast likelihood (:mod:`utils.inference.refits`, several starts and strategies)
where the model allows, else with pyhf. A held value outside the parameter's bounds is
clipped to them, and a refit without a valid minimum from any start gives no number: both are
:class:`RefitNote` entries of the :class:`Ranking`, and a failed impact is NaN, never a crash of
the whole ranking and never a silent number.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.errors import StatisticsError
from utils.inference import fit as fits
from utils.inference.refits import FastRefits, RefitSetup, bin_labels

log = logging.getLogger(__name__)

#: the four impacts of a parameter, in the order of cabinetry's ``RankingResults``
IMPACTS = ("prefit_up", "prefit_down", "postfit_up", "postfit_down")


@dataclass(frozen=True)
class RefitNote:
    """One refit of the ranking that needs saying: its held value clipped, or no valid minimum."""

    parameter: str
    impact: str  # one of IMPACTS
    requested: float  # best fit +/- the uncertainty
    held: float  # the value the parameter was held at: ``requested`` clipped to its bounds
    status: str  # "clipped" (the impact is the refit at ``held``) or "failed" (the impact is NaN)
    reason: str

    def line(self) -> str:
        return f"ranking: {self.parameter} {self.impact} ({self.status}): {self.reason}"


@dataclass(frozen=True)
class Ranking:
    """The fields of cabinetry's ``RankingResults`` (``prefit_up`` ... NaN where the refit failed)
    and the notes of clipped and failed refits."""

    bestfit: np.ndarray
    uncertainty: np.ndarray
    labels: list[str]
    prefit_up: np.ndarray
    prefit_down: np.ndarray
    postfit_up: np.ndarray
    postfit_down: np.ndarray
    notes: tuple[RefitNote, ...] = ()

    @property
    def failed(self) -> tuple[RefitNote, ...]:
        return tuple(n for n in self.notes if n.status == "failed")

    def notes_of(self, label: str) -> tuple[RefitNote, ...]:
        return tuple(n for n in self.notes if n.parameter == label)


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


def rank_parameters(
    model: Any,
    data: list[float],
    fit_results: Any,
    *,
    strategy: int | None = None,
    parameters: Sequence[str] | None = None,
    fast: bool = True,
) -> Ranking:
    """Impact of each nuisance parameter on the POI (``parameters``: only these; default all but the POI).

    A held value outside the parameter's bounds is clipped to them (a ``clipped`` note; the
    impact is the refit at the bound, zero where that is the best fit). With ``fast`` (the
    default) and a model :class:`~utils.inference.likelihood.FastLikelihood` implements, each
    refit is MIGRAD with the exact gradient in whitened coordinates, from several starts and with
    several strategies (:func:`~utils.inference.refits.fast_refit`): about 20 ms per refit on the AGC model instead of
    about 0.8 s for pyhf's. Otherwise (``fast=False`` or a model it does not implement) the refit
    is :func:`~utils.inference.fit.fit_model` from the suggested initial values (cabinetry's
    start), then from the best fit with the parameter moved, each retried with MINUIT strategy 2
    (with strategy 1, the default, a staterror refit of the AGC model fails). A refit without a
    valid minimum either way is a ``failed`` note (why, for every attempt) and a NaN impact.
    """
    import cabinetry

    from utils.inference.likelihood import FastLikelihood

    poi_index = model.config.poi_index
    if poi_index is None:
        raise StatisticsError("the model has no POI; cannot rank parameters by their impact on it")
    prefit = np.asarray(cabinetry.model_utils.prefit_uncertainties(model), dtype=float)
    names = list(model.config.par_names)
    unknown = sorted(set(parameters or ()) - set(names))
    if unknown:
        raise StatisticsError(f"ranking: no parameter(s) {unknown} in the model; parameters: {names}")
    ranked = [i for i, n in enumerate(names) if i != poi_index and (parameters is None or n in parameters)]
    # pyhf refits start from the suggested initial values, as cabinetry's do (starting from the
    # best-fit point without MINUIT knowing the covariance was measured slower here), then from it
    ctx = RefitSetup(model, data, fit_results, prefit, [strategy] + ([2] if strategy != 2 else []))
    likelihood = FastLikelihood.from_model(model) if fast else None
    if likelihood is not None:
        ctx.fast = FastRefits(likelihood, data, fit_results, ctx, bin_labels(model))
    impacts, notes = [], []
    # one summary per refit (and pyhf's dump of a failed one, retried here) would drown the log
    with _quiet(logging.WARNING, "cabinetry.fit"), _quiet(logging.CRITICAL, "pyhf"):
        for i in ranked:
            row, row_notes = _impact_row(ctx, i)
            impacts.append(row)
            notes += row_notes
    impacts_np = np.asarray(impacts, dtype=float).reshape(-1, 4)
    return Ranking(
        np.asarray(fit_results.bestfit)[ranked],
        np.asarray(fit_results.uncertainty)[ranked],
        [names[i] for i in ranked],
        impacts_np[:, 0],
        impacts_np[:, 1],
        impacts_np[:, 2],
        impacts_np[:, 3],
        notes=tuple(notes),
    )


def _impact_row(ctx: RefitSetup, i: int) -> tuple[list[float], list[RefitNote]]:
    """POI shifts with parameter ``i`` held at best fit +/- pre-fit and +/- post-fit uncertainty."""
    label, best = ctx.names[i], ctx.best[i]
    row: list[float] = []
    notes: list[RefitNote] = []
    requested = (best + ctx.prefit[i], best - ctx.prefit[i], best + ctx.post[i], best - ctx.post[i])
    for impact, value in zip(IMPACTS, requested, strict=True):
        if value == best:  # unconstrained (no pre-fit uncertainty), fixed or at-bound parameter
            row.append(0.0)
            continue
        held = float(min(max(value, ctx.lo[i]), ctx.hi[i]))
        if held != value:
            reason = f"{value:.4g} is outside the bounds [{ctx.lo[i]:.4g}, {ctx.hi[i]:.4g}]; held at {held:.4g}"
            notes.append(RefitNote(label, impact, float(value), held, "clipped", reason))
            log.info("ranking: %s %s: %s", label, impact, reason)
            if held == best:
                row.append(0.0)
                continue
        try:
            refit = ctx.fast(i, held) if ctx.fast is not None else _pyhf_refit(ctx, i, held)
            row.append(float(refit[ctx.poi] - ctx.best[ctx.poi]))
        except StatisticsError as err:
            note = RefitNote(label, impact, float(value), held, "failed", str(err))
            log.warning("%s", note.line())
            notes.append(note)
            row.append(float("nan"))
    log.debug("impact of %s on the POI: %s", label, row)
    return row, notes


def _pyhf_refit(ctx: RefitSetup, i: int, value: float) -> np.ndarray:
    """:func:`~utils.inference.fit.fit_model` with parameter ``i`` held at ``value``, from the
    suggested initial values, then from the best fit, each with every strategy of the context."""
    fixed = list(ctx.fixed)
    fixed[i] = True
    errors = []
    for start_name, start in (("suggested initial values", ctx.init), ("best fit", ctx.best)):
        init = np.clip(start, ctx.lo, ctx.hi)
        init[i] = value
        for attempt, strategy in enumerate(ctx.strategies):
            try:
                refit = fits.fit_model(
                    ctx.model,
                    ctx.data,
                    strategy=strategy,
                    goodness_of_fit=False,
                    init_pars=init.tolist(),
                    fix_pars=fixed,
                )
                return np.asarray(refit.bestfit, dtype=float)
            except StatisticsError as err:
                cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
                errors.append(f"from the {start_name}, strategy {strategy}: {fits.first_line(cause)}")
                if attempt < len(ctx.strategies) - 1:
                    log.warning(
                        "ranking: refit with %s = %.4g failed, retrying with MINUIT strategy 2", ctx.names[i], value
                    )
    raise StatisticsError("pyhf found no valid minimum: " + "; ".join(errors))
