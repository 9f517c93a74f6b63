"""Treatment of systematic-variation templates before the workspace is built: smoothing and
pruning of variations that are indistinguishable from Monte Carlo noise.

The rules come from the ``TemplateTreatment`` section of the model configuration (a project
extension, removed before cabinetry sees the configuration)::

    TemplateTreatment:
      DropEmptyBins: true       # bins of a region with no nominal prediction leave the fit (below)
      Defaults:                 # for every systematic with templates (NormPlusShape)
        NormThreshold: 0.005    # drop the normalisation part if |up - 1| and |down - 1| are below
        ShapeThreshold: 0.005   # drop the shape part if max_bin |shape / nominal - 1| is below
        ShapeSignificance: 1.0  # drop the shape part if its chi2 / bins against MC stat. is below
        NonNegative: true       # no effect in empty nominal bins; no negative template (below)
      Systematics:              # per-systematic settings replace the defaults key by key
        "Jet energy scale": {Smoothing: 353QH, NormSignificance: 1.0}

Definitions, per region, sample and systematic (``nom``, ``up``, ``down``: bin contents after
the region's rebinning; ``s2``: their sum of squared weights):

* normalisation effect ``n_up = sum(up) / sum(nom)`` (same for down; a symmetrised down template
  is the mirror of up, so ``n_down = 2 - n_up``);
* shape ``shape_up = up / n_up`` (the variation normalised to the nominal yield);
* ``NormThreshold``: the normalisation part is pruned when ``max(|n_up - 1|, |n_down - 1|)`` is
  below it: the template is rescaled to the nominal yield (the normsys is then 1);
* ``ShapeThreshold``: the shape part is pruned when ``max_bins |shape / nom - 1|`` (up and down)
  is below it: the template becomes ``n * nom`` (the histosys then has no effect);
* ``ShapeSignificance``: the shape part is pruned when
  ``chi2 / N = mean over bins with nom > 0 of (shape_up - nom)^2 / (s2_nom + s2_up)`` is below it,
  i.e. the shape difference is, bin by bin, no larger than its Monte Carlo statistical uncertainty
  (for variations made from the same events the two are correlated and this estimate of the noise
  is conservative: it prunes rather than keeps);
* ``NormSignificance`` (off unless set): the normalisation part is pruned when
  ``|n_up - 1| / sqrt(sum(s2_nom) + sum(s2_up)) * sum(nom)`` is below it;
* ``DropEmptyBins: true`` (off unless set; one setting for the model, not per systematic): in
  the bins of a region where the summed nominal prediction of all samples is empty
  (``<= 0``), every template of the region, the data included, is set to zero: a Poisson term
  with no expected and no observed events is 1, so the bin leaves the likelihood (TRExFitter's
  ``DropBins``). Without it, data in such a bin (pseudo-data made from a variation, a few Monte
  Carlo events that fell elsewhere in the nominal sample) make the likelihood zero for every
  parameter value. Recorded once per region with its bins and the data it removed;
* ``NonNegative: true`` (off unless set) guards the templates cabinetry builds from the variations:
  cabinetry's histosys templates are the variations scaled to the nominal yield,
  ``shape = var * sum(nom) / sum(var)``, and a symmetrised down template is the mirror
  ``2 nom - shape_up``. With few Monte Carlo events these go negative, and the Poisson term of
  a bin whose expected yield can be driven negative is unbounded: the fit runs away. The rule,
  applied first (before pruning and smoothing), and again after smoothing:

  1. in bins where the nominal is empty (``nom <= 0``) the variation is set to the nominal
     ("zeroed"): an effect on a bin with no nominal yield is Monte Carlo noise that no relative
     template can describe (its mirror is negative);
  2. negative bins of a variation are set to zero ("capped");
  3. a normalisation factor ``n = sum(var) / sum(nom)`` below :data:`NORM_FLOOR` (0.1), or with
     a symmetrised down template a mirrored one ``2 - n`` below it, is limited to it, the
     variation rescaled ("capped"): pyhf's normsys is exponential in ``ln n``;
  4. with a symmetrised down template, where the shape effect ``shape - nom`` exceeds the
     nominal (the mirror would be negative), the whole shape effect is scaled by the largest
     factor ``k = min_b nom_b / (shape_b - nom_b)`` that keeps the mirror non-negative:
     ``var = (nom + k (shape - nom)) * n`` ("capped"; the normalisation effect is kept).

  Every changed template is recorded, with the bins and factors;
* ``Smoothing: 353QH`` smooths the ratio ``variation / nominal`` with ROOT's TH1::Smooth
  algorithm (353QH, twice; ``cabinetry.smooth.smooth_353qh_twice``) keeping the variation's yield;
  it is applied to shapes that survive pruning.

Every decision is recorded (:class:`TreatmentRecord`) and listed in ``fit_results.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.config import validate_against_schema

log = logging.getLogger(__name__)

#: the key of the section in the model configuration
TREATMENT_KEY = "TemplateTreatment"
SMOOTHING_ALGORITHMS = ("353QH", "none")

_SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "NormThreshold": {"type": "number", "minimum": 0},
        "ShapeThreshold": {"type": "number", "minimum": 0},
        "ShapeSignificance": {"type": "number", "minimum": 0},
        "NormSignificance": {"type": "number", "minimum": 0},
        "Smoothing": {"enum": list(SMOOTHING_ALGORITHMS)},
        "NonNegative": {"type": "boolean"},
    },
}

#: JSON schema of the ``TemplateTreatment`` section
TREATMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "DropEmptyBins": {"type": "boolean"},
        "Defaults": _SETTINGS_SCHEMA,
        "Systematics": {"type": "object", "additionalProperties": _SETTINGS_SCHEMA},
    },
}


@dataclass(frozen=True)
class TreatmentSettings:
    norm_threshold: float = 0.0
    shape_threshold: float = 0.0
    shape_significance: float = 0.0
    norm_significance: float = 0.0
    smoothing: str = "none"
    non_negative: bool = False

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> TreatmentSettings:
        return cls(
            norm_threshold=float(data.get("NormThreshold", 0.0)),
            shape_threshold=float(data.get("ShapeThreshold", 0.0)),
            shape_significance=float(data.get("ShapeSignificance", 0.0)),
            norm_significance=float(data.get("NormSignificance", 0.0)),
            smoothing=str(data.get("Smoothing", "none")),
            non_negative=bool(data.get("NonNegative", False)),
        )


@dataclass(frozen=True)
class TreatmentRules:
    """Parsed ``TemplateTreatment`` section; no section means no treatment."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    systematics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drop_empty_bins: bool = False

    def settings_for(self, systematic: str) -> TreatmentSettings:
        return TreatmentSettings.from_config({**self.defaults, **self.systematics.get(systematic, {})})

    @property
    def enabled(self) -> bool:
        return bool(self.defaults) or bool(self.systematics) or self.drop_empty_bins


@dataclass(frozen=True)
class TreatmentRecord:
    """One decision: which part of which template was pruned or smoothed, and why."""

    systematic: str
    region: str
    sample: str
    action: str  # "norm pruned" | "shape pruned" | "smoothed" | "zeroed" | "capped" | "bins dropped"
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "systematic": self.systematic,
            "region": self.region,
            "sample": self.sample,
            "action": self.action,
            "reason": self.reason,
        }


def parse_treatment(data: Any, source: str, systematic_names: list[str]) -> TreatmentRules:
    """Validate a ``TemplateTreatment`` section (None: no treatment); names must be systematics."""
    from utils.errors import ConfigError

    if data is None:
        return TreatmentRules()
    validate_against_schema(data, TREATMENT_SCHEMA, f"{source} [{TREATMENT_KEY}]")
    unknown = sorted(set(data.get("Systematics", {})) - set(systematic_names))
    if unknown:
        raise ConfigError(
            f"{source}: at ['{TREATMENT_KEY}']['Systematics']: {unknown} are not systematics of the model; "
            f"systematics: {systematic_names}"
        )
    return TreatmentRules(
        dict(data.get("Defaults", {})),
        {k: dict(v) for k, v in data.get("Systematics", {}).items()},
        bool(data.get("DropEmptyBins", False)),
    )


def _smooth_ratio(variation: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """353QH-twice smoothing of ``variation / nominal``, keeping the yield of ``variation``."""
    from cabinetry.smooth import smooth_353qh_twice

    if len(nominal) < 3 or variation.sum() == 0:
        return variation
    ratio = np.divide(variation, nominal, out=np.ones_like(variation), where=nominal > 0)
    smooth = smooth_353qh_twice(ratio) * nominal
    return smooth * variation.sum() / smooth.sum() if smooth.sum() > 0 else variation


#: the smallest normalisation factor a guarded template (or its mirror) keeps: ``sum(var) / sum(nom)``
#: of at least 0.1, so that pyhf's exponential normsys interpolation stays defined and moderate
NORM_FLOOR = 0.1


def _bins(mask: np.ndarray) -> list[int]:
    """1-based bin numbers of a mask (as in ROOT and the histogram files)."""
    return [int(b) + 1 for b in np.flatnonzero(mask)]


def guard_non_negative(
    nominal: np.ndarray, variations: dict[str, np.ndarray], symmetrized: bool
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The ``NonNegative`` rule (see the module): returns the new variations and
    ``(action, reason)`` pairs, one per step that changed something."""
    out = {k: np.asarray(v, dtype=float).copy() for k, v in variations.items()}
    notes: list[tuple[str, str]] = []
    total = float(nominal.sum())
    empty = nominal <= 0
    zeroed = {k: empty & (v != nominal) for k, v in out.items()}
    if any(z.any() for z in zeroed.values()):
        for k, z in zeroed.items():
            out[k][z] = nominal[z]
        where = "; ".join(f"{k} bins {_bins(z)}" for k, z in zeroed.items() if z.any())
        notes.append(("zeroed", f"variation in bins with an empty nominal set to the nominal ({where})"))
    clipped = {k: v < 0 for k, v in out.items()}
    if any(c.any() for c in clipped.values()):
        for k, c in clipped.items():
            out[k][c] = 0.0
        where = "; ".join(f"{k} bins {_bins(c)}" for k, c in clipped.items() if c.any())
        notes.append(("capped", f"negative bins of the variation set to zero ({where})"))
    # normalisation factors (and the mirrored one) of at least NORM_FLOOR
    for k, v in out.items():
        n = v.sum() / total
        upper = 2 - NORM_FLOOR if symmetrized else np.inf
        target = min(max(n, NORM_FLOOR), upper)
        if target != n:
            out[k] = v * target / n if n > 0 else nominal * target
            mirror = f", mirrored {2 - n:.3g}" if symmetrized else ""
            notes.append(
                ("capped", f"{k} normalisation factor {n:.3g}{mirror} limited to {target:.3g} (floor {NORM_FLOOR:g})")
            )
    if symmetrized and "Up" in out:
        v = out["Up"]
        n = v.sum() / total
        shape = v / n  # cabinetry's histosys template: the variation at the nominal yield
        effect = shape - nominal
        over = effect > nominal  # the mirror 2 nom - shape would be negative there
        if over.any():
            keep = float(np.min(nominal[over] / effect[over])) * (1 - 1e-9)  # the mirror stays >= 0 when rounded
            out["Up"] = (nominal + keep * effect) * n
            notes.append(
                (
                    "capped",
                    f"shape effect scaled by {keep:.4g} so that the symmetrised down template is non-negative "
                    f"(it was negative in bins {_bins(over)})",
                )
            )
    return out, notes


def treat_templates(
    nominal: tuple[np.ndarray, np.ndarray],
    variations: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: TreatmentSettings,
    symmetrized: bool,
    where: tuple[str, str, str],
) -> tuple[dict[str, np.ndarray], list[TreatmentRecord]]:
    """Apply ``settings`` to the ``Up`` (and ``Down``) template of one region/sample/systematic.

    ``nominal`` and each variation are ``(values, sumw2)``. Returns the new variation values
    and the decisions. With ``symmetrized`` only ``Up`` exists (down is its mirror).
    """
    systematic, region, sample = where
    nom, nom_s2 = nominal
    total = nom.sum()
    out = {k: v[0].astype(float).copy() for k, v in variations.items()}
    records: list[TreatmentRecord] = []
    if total <= 0:
        return out, records

    def record(action: str, reason: str) -> None:
        records.append(TreatmentRecord(systematic, region, sample, action, reason))

    if settings.non_negative:
        out, notes = guard_non_negative(nom, out, symmetrized)
        for action, reason in notes:
            record(action, reason)

    norms = {k: v.sum() / total for k, v in out.items()}
    if symmetrized:
        norms_all = [norms["Up"], 2 - norms["Up"]]
    else:
        norms_all = list(norms.values())
    shapes = {k: out[k] / norms[k] if norms[k] > 0 else out[k] for k in out}
    filled = nom > 0
    rel = max(
        (float(np.max(np.abs(shapes[k][filled] / nom[filled] - 1))) if filled.any() else 0.0 for k in shapes),
        default=0.0,
    )
    chi2 = max(
        (
            float(
                np.mean((shapes[k][filled] - nom[filled]) ** 2 / np.maximum(nom_s2 + variations[k][1], 1e-300)[filled])
            )
            if filled.any()
            else 0.0
            for k in shapes
        ),
        default=0.0,
    )
    norm_dev = max(abs(n - 1) for n in norms_all)
    norm_sigma = np.sqrt(nom_s2.sum() + max(v[1].sum() for v in variations.values())) / total

    prune_shape = ""
    if rel < settings.shape_threshold:
        prune_shape = f"max |shape/nominal - 1| = {rel:.3g} < ShapeThreshold {settings.shape_threshold:g}"
    elif chi2 < settings.shape_significance:
        prune_shape = (
            f"shape chi2/bins = {chi2:.3g} against MC statistics < ShapeSignificance {settings.shape_significance:g}"
        )
    prune_norm = ""
    if norm_dev < settings.norm_threshold:
        prune_norm = f"max |norm - 1| = {norm_dev:.3g} < NormThreshold {settings.norm_threshold:g}"
    elif norm_sigma > 0 and norm_dev / norm_sigma < settings.norm_significance:
        prune_norm = (
            f"|norm - 1| / MC stat. = {norm_dev / norm_sigma:.3g} < NormSignificance {settings.norm_significance:g}"
        )

    for k in out:
        if prune_shape:
            out[k] = nom * norms[k]
        elif settings.smoothing == "353QH":
            out[k] = _smooth_ratio(out[k], nom)
        if prune_norm and out[k].sum() > 0:
            out[k] = out[k] * total / out[k].sum()
    if settings.non_negative and settings.smoothing == "353QH" and not prune_shape:
        out, notes = guard_non_negative(nom, out, symmetrized)  # smoothing may have crossed a cap
        for action, reason in notes:
            record(action, f"after smoothing: {reason}")
    if prune_shape:
        record("shape pruned", prune_shape)
    elif settings.smoothing == "353QH" and len(nom) >= 3:
        record("smoothed", "Smoothing 353QH (ratio to nominal, twice; yield kept)")
    if prune_norm:
        record("norm pruned", prune_norm)
    return out, records
