"""The inference of one signal point: CLs at signal strength 1 and the 95% CL upper limit of a
signal-plus-background workspace, both from :mod:`utils.inference.limits` (the limit
:func:`utils.inference.fit.upper_limit_of` gives for the same workspace). The model is built as
``pyhf cls`` builds it, so the published files give the same CLs with pyhf alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from utils.errors import StatisticsError
from utils.inference.limits import CLsResult, CLsScan, LimitSummary, upper_limit
from utils.io import json_ready

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointResult:
    """The inference of one signal point: CLs at the nominal signal strength and the upper limit."""

    name: str
    parameters: Mapping[str, float]
    xsec: float | None
    cls: CLsResult
    limit: LimitSummary | None  # None when not asked for or failed
    failure: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parameters": dict(self.parameters),
            "xsec_pb": self.xsec,
            "poi": self.cls.poi_name,
            "cls": json_ready(self.cls),
            "limit": json_ready(self.limit),
            "failure": self.failure,
            "timings_s": dict(self.timings),
        }


def evaluate(
    ws: Mapping[str, Any],
    name: str,
    parameters: Mapping[str, float] | None = None,
    xsec: float | None = None,
    *,
    with_limit: bool = True,
) -> PointResult:
    """CLs at signal strength 1 and (``with_limit``) the 95% CL upper limit
    (:func:`utils.inference.limits.upper_limit`) of a signal-plus-background workspace. A failed
    limit search is recorded in ``failure``, not raised."""
    timings = {}
    start = time.perf_counter()
    scan = CLsScan.from_workspace(ws)
    cls = scan(1.0)
    timings["cls"] = round(time.perf_counter() - start, 3)
    limit = failure = None
    if with_limit:
        start = time.perf_counter()
        try:
            limit = upper_limit(scan)
        except StatisticsError as err:
            failure = str(err)
            log.error("%s: %s", name, err)
        timings["limit"] = round(time.perf_counter() - start, 3)
    log.info("%s: CLs(%s = 1) = %.4g, expected %.4g", name, cls.poi_name, cls.cls_obs, cls.cls_exp[2])
    return PointResult(name, dict(parameters or {}), xsec, cls, limit, failure, timings)
