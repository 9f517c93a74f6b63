"""HEPData-ready tables: pre- and post-fit yields per region, upper limits of a signal family.

Tables follow the HEPData submission format: a ``submission.yaml`` (one YAML document for the
record, then one per table) and one data file per table with ``independent_variables`` (bins
with ``low``/``high``, or points with ``value``) and ``dependent_variables`` (values with
``errors``), qualified by region, centre-of-mass energy and luminosity.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from utils.io import write_text_atomic

log = logging.getLogger(__name__)

SUBMISSION_NAME = "submission.yaml"
SQRT_S_GEV = 13000  # the 2015 CMS proton-proton run


@dataclass(frozen=True)
class Table:
    """One HEPData table: its submission entry and its data file content."""

    name: str
    description: str
    data_file: str
    data: dict[str, Any]
    keywords: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "keywords": [dict(k) for k in self.keywords],
            "data_file": self.data_file,
        }


def _number(x: float, digits: int = 6) -> float:
    return float(f"{float(x):.{digits}g}")


def _qualifiers(region: str, luminosity: float) -> list[dict[str, Any]]:
    return [
        {"name": "Region", "value": region},
        {"name": "SQRT(S)", "units": "GeV", "value": SQRT_S_GEV},
        {"name": "LUMINOSITY", "units": "pb$^{-1}$", "value": _number(luminosity)},
    ]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def yields_tables(
    ws: Mapping[str, Any],
    binning: Mapping[str, Sequence[float]],
    variables: Mapping[str, str],
    luminosity: float,
    *,
    postfit: bool,
) -> list[Table]:
    """Yields per sample, their total and the (pseudo-)data per region of a background-only
    workspace, before or after the background-only maximum-likelihood fit.

    ``binning``/``variables``: bin edges and observable label per channel (region) name.
    Errors are the total uncertainties of the prediction (cabinetry's ``yield_stdev``:
    statistical and systematic, with correlations, post-fit from the fit's covariance).
    """
    import cabinetry
    import pyhf

    from utils.inference.fit import fit_model, numpy_backend

    with numpy_backend():
        workspace = pyhf.Workspace(dict(ws))
        model = workspace.model(poi_name=None)  # background only: no signal strength to fit
        data = workspace.data(model, include_auxdata=False)
        fit_results = fit_model(model, workspace.data(model), goodness_of_fit=False) if postfit else None
        prediction = cabinetry.model_utils.prediction(model, fit_results=fit_results)
    stage = "post-fit" if postfit else "pre-fit"
    tables = []
    for c, channel in enumerate(model.config.channels):
        edges = np.asarray(binning[channel], dtype=float)
        bins = model.config.channel_nbins[channel]
        if len(edges) != bins + 1:
            raise ValueError(f"{channel}: {len(edges) - 1} bins in the binning, {bins} in the workspace")
        observed = np.asarray(data[model.config.channel_slices[channel]], dtype=float)
        dependent = []
        labels = [*model.config.samples, "Total background"]
        yields = np.asarray(prediction.model_yields[c], dtype=float)
        rows = [*yields, yields.sum(axis=0)]  # the last stdev row is that of the total
        for label, values, errors in zip(labels, rows, prediction.total_stdev_model_bins[c], strict=True):
            dependent.append(
                {
                    "header": {"name": f"{label} ({stage})"},
                    "qualifiers": _qualifiers(channel, luminosity),
                    "values": [
                        {"value": _number(v), "errors": [{"symerror": _number(e), "label": "total"}]}
                        for v, e in zip(values, errors, strict=True)
                    ],
                }
            )
        dependent.append(
            {
                "header": {"name": "Pseudo-data"},
                "qualifiers": _qualifiers(channel, luminosity),
                "values": [{"value": _number(v)} for v in observed],
            }
        )
        name, _, units = variables[channel].partition(" [")
        table = {
            "independent_variables": [
                {
                    "header": {"name": name.strip(), "units": units.rstrip("]")} if units else {"name": name.strip()},
                    "values": [{"low": _number(lo), "high": _number(hi)} for lo, hi in itertools.pairwise(edges)],
                }
            ],
            "dependent_variables": dependent,
        }
        tables.append(
            Table(
                f"Yields {channel} ({stage})",
                f"Event yields in region {channel} {'after the background-only fit' if postfit else 'before the fit'}"
                " with total uncertainties, and the pseudo-data.",
                f"yields_{'postfit' if postfit else 'prefit'}_{_slug(channel)}.yaml",
                table,
                ({"name": "observables", "values": ["N"]}, {"name": "reactions", "values": ["P P --> TOP TOPBAR X"]}),
            )
        )
    return tables


def limits_table(points: Sequence[Mapping[str, Any]], label: str, poi: str) -> Table:
    """Observed and expected (with 1 and 2 sigma bands) 95% CL upper limits on the signal
    strength per signal point, against the model parameter ``label`` (e.g. the mass).

    ``points``: dicts with ``parameters`` and ``limit`` (:class:`utils.inference.limits.LimitSummary`
    as a dict), as :func:`utils.preservation.evaluation.evaluate` returns them.
    """
    done = sorted((p for p in points if p.get("limit")), key=lambda p: p["parameters"][label])
    expected = [p["limit"]["expected_limit"] for p in done]

    def value(e: Sequence[float | None]) -> dict[str, Any]:
        """The median with the bands that were found (a band beyond the POI bound is None)."""
        errors = [
            {"asymerror": {"minus": _number(e[lo] - e[2]), "plus": _number(e[hi] - e[2])}, "label": name}
            for lo, hi, name in ((1, 3, "1 sigma"), (0, 4, "2 sigma"))
            if e[lo] is not None and e[hi] is not None
        ]
        return {"value": _number(e[2]), "errors": errors} if errors else {"value": _number(e[2])}

    data = {
        "independent_variables": [
            {"header": {"name": label}, "values": [{"value": _number(p["parameters"][label])} for p in done]}
        ],
        "dependent_variables": [
            {
                "header": {"name": f"Observed 95% CL upper limit on {poi}"},
                "values": [{"value": _number(p["limit"]["observed_limit"])} for p in done],
            },
            {
                "header": {"name": f"Expected 95% CL upper limit on {poi}"},
                "values": [value(e) for e in expected],
            },
        ],
    }
    return Table(
        f"Upper limits on {poi}",
        f"95% CL upper limits (CLs, asymptotic) on the signal strength {poi} per signal point.",
        "limits.yaml",
        data,
        ({"name": "observables", "values": ["SIG/SIG(theory)"]},),
    )


def write_submission(folder: str | Path, tables: Sequence[Table], resources: Sequence[Mapping[str, str]] = ()) -> Path:
    """Write ``submission.yaml`` and one data file per table into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for table in tables:
        write_text_atomic(folder / table.data_file, yaml.safe_dump(table.data, sort_keys=False))
    record = {
        "comment": "AGC CMS open data ttbar analysis: yields and the preserved likelihood (pyhf JSON).",
        "additional_resources": [dict(r) for r in resources],
    }
    text = yaml.safe_dump_all([record, *(t.entry() for t in tables)], sort_keys=False)
    write_text_atomic(folder / SUBMISSION_NAME, text)
    log.info("wrote %d HEPData tables to %s", len(tables), folder)
    return folder / SUBMISSION_NAME
