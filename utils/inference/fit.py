"""Fits of a pyhf workspace: the maximum-likelihood fit, the discovery significance and the
upper limit (:mod:`utils.inference.limits`, which the preservation steps use too); the impact
ranking is :mod:`utils.inference.ranking`. Every fit runs on pyhf's numpy backend
(:func:`numpy_backend`) with MINUIT."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
