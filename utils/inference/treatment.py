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
        PositiveWithin: 5       # a shape from too few MC events keeps the yield >= 0 for |alpha| <= 5 (below)
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
* empty bins: a bin without a simulated event, with no yield (``<= 0``) or a yield without any
  sum of squared weights (the AGC's offset of 1e-6 per bin in ``histograms_ml.root``, which
  keeps no template bin exactly empty, is not an event) (:func:`empty_bins`);
* ``DropEmptyBins: true`` (off unless set; one setting for the model, not per systematic): in
  the bins of a region where the summed nominal prediction of all samples is empty, every
  template of the region, the data included, is set to zero: a Poisson term
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

  1. in bins where the nominal is empty the variation is set to the nominal
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
* ``PositiveWithin: B`` (off unless set; the repository uses 5, pyhf's parameter bounds, the range
  the fit explores) bounds a shape that the Monte Carlo cannot resolve. pyhf interpolates the
  histosys templates ``hi``, ``lo`` with a polynomial inside [-1, 1] and linearly outside, so a
  shape effect of more than 1/B of a bin's nominal yield makes the expected yield negative before
  the parameter reaches +-B (:func:`lowest_reach`); the Poisson term of a negative expected yield
  is unbounded below where the data are empty (the fit runs away there) and undefined (the log of
  a negative number) elsewhere. A relative change of
  1/B per bin is resolved by templates whose relative Monte Carlo uncertainty in an average bin,
  ``sqrt(bins / N_eff)``, is below 1/B, i.e. with at least ``bins x B^2`` effective events
  (:func:`effective_events`, ``N_eff = sum(w)^2 / sum(w^2)``, the fewest of the nominal and the
  variation templates; ``bins``: the region's bins with nominal events; 11 x 25 = 275 in the
  repository model). Templates with fewer events are capped: the shape effect is scaled by the
  largest ``k`` that keeps every bin's lowest yield within +-B non-negative,
  ``var = (nom + k (shape - nom)) n`` (up and down alike; the normalisation effect is kept).
  Templates from enough events keep their shapes, which then may reach negative yields (the
  published AGC ttbar PS variation does in 4j1b from |alpha| = 1.1, the ME variation from 3.6):
  they are measured, and the fit stays far from there. The rule bounds each shape on its own; several at once can still
  reach a negative yield, which the fit's diagnostics report at the minimum;
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
#: pyhf's bounds of histosys and normsys parameters (``suggested_bounds``: [-5, 5]), the range the
#: fit explores and the repository configuration's ``PositiveWithin``
POSITIVE_WITHIN = 5.0
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
        "PositiveWithin": {"type": "number", "minimum": 0},
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
    positive_within: float = 0.0

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> TreatmentSettings:
        return cls(
            norm_threshold=float(data.get("NormThreshold", 0.0)),
            shape_threshold=float(data.get("ShapeThreshold", 0.0)),
            shape_significance=float(data.get("ShapeSignificance", 0.0)),
            norm_significance=float(data.get("NormSignificance", 0.0)),
            smoothing=str(data.get("Smoothing", "none")),
            non_negative=bool(data.get("NonNegative", False)),
            positive_within=float(data.get("PositiveWithin", 0.0)),
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


def empty_bins(values: np.ndarray, sumw2: np.ndarray | None = None) -> np.ndarray:
    """Bins without a simulated event: no yield, or a yield without any sum of squared weights
    (the AGC's offset of 1e-6 per bin in ``histograms_ml.root`` is not an event)."""
    empty = np.asarray(values) <= 0
    return empty if sumw2 is None else empty | (np.asarray(sumw2) <= 0)


def guard_non_negative(
    nominal: np.ndarray, variations: dict[str, np.ndarray], symmetrized: bool, nominal_sumw2: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The ``NonNegative`` rule (see the module): returns the new variations and
    ``(action, reason)`` pairs, one per step that changed something. With ``nominal_sumw2``,
    a nominal bin without events (:func:`empty_bins`) counts as empty."""
    out = {k: np.asarray(v, dtype=float).copy() for k, v in variations.items()}
    notes: list[tuple[str, str]] = []
    total = float(nominal.sum())
    empty = empty_bins(nominal, nominal_sumw2)
    zeroed = {k: empty & (v != nominal) for k, v in out.items()}
    if any(z.any() for z in zeroed.values()):
        for k, z in zeroed.items():
            out[k][z] = nominal[z]
        where = "; ".join(f"{k} bins {_bins(z)}" for k, z in zeroed.items() if z.any())
        notes.append(
            ("zeroed", f"variation in bins with an empty nominal (no simulated event) set to the nominal ({where})")
        )
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


#: points of the interpolation region [-1, 1] at which :func:`lowest_reach` evaluates the polynomial
_ALPHA_GRID = np.linspace(-1.0, 1.0, 2001)


def lowest_reach(nominal: np.ndarray, hi: np.ndarray, lo: np.ndarray, within: float) -> np.ndarray:
    """Per bin, the lowest yield ``nominal + delta(alpha)`` that one histosys modifier (templates
    ``hi``, ``lo``) reaches for its parameter in ``[-within, within]``, with pyhf's code-4p
    interpolation: a polynomial inside [-1, 1], linear outside (``alpha * (hi - nom)`` above 1,
    ``alpha * (nom - lo)`` below -1). The delta is linear in the templates' effects, so the
    lowest yield of ``nom + k (template - nom)`` is ``nom + k (lowest_reach - nom)``."""
    up, down = hi - nominal, nominal - lo  # pyhf's deltas_up and deltas_dn
    s, a = 0.5 * (up + down), 0.0625 * (up - down)
    alpha = _ALPHA_GRID[:, None] * min(within, 1.0)
    a2 = alpha * alpha
    delta = (a2 * (a2 * (3 * a2 - 10) + 15) * a + alpha * s).min(axis=0)
    if within > 1:
        delta = np.minimum(delta, np.minimum(within * up, -within * down))
    return nominal + delta


def effective_events(values: np.ndarray, sumw2: np.ndarray) -> float:
    """Effective number of Monte Carlo events of a template, ``sum(w)^2 / sum(w^2)``."""
    s2 = float(np.sum(sumw2))
    return float(np.sum(values)) ** 2 / s2 if s2 > 0 else 0.0


def guard_positive(
    nominal: tuple[np.ndarray, np.ndarray],
    variations: dict[str, np.ndarray],
    variances: dict[str, np.ndarray],
    symmetrized: bool,
    within: float,
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The ``PositiveWithin`` rule (see the module) on the ``Up`` (and ``Down``) template:
    returns the new variations and at most one ``("capped", reason)``."""
    nom, nom_s2 = nominal
    out = {k: np.asarray(v, dtype=float).copy() for k, v in variations.items()}
    total = float(nom.sum())
    norms = {k: v.sum() / total for k, v in out.items()} if total > 0 else {}
    filled = ~empty_bins(nom, nom_s2)  # a bin without events (NonNegative's to zero) says nothing here
    n_bins = int(np.count_nonzero(filled))
    if within <= 0 or total <= 0 or n_bins == 0 or min(norms.values()) <= 0:
        return out, []
    events = min([effective_events(nom, nom_s2)] + [effective_events(out[k], variances[k]) for k in out])
    resolving = n_bins * within**2  # events for a relative MC uncertainty of 1 / within in an average bin
    if events >= resolving:
        return out, []
    hi = out["Up"] / norms["Up"]  # cabinetry's histosys templates
    lo = 2 * nom - hi if symmetrized else out["Down"] / norms["Down"]
    reach = lowest_reach(nom, hi, lo, within)
    negative = filled & (reach < 0)
    if not negative.any():
        return out, []
    k = float(np.min(nom[negative] / (nom[negative] - reach[negative]))) * (1 - 1e-9)  # >= 0 when rounded
    out["Up"] = (nom + k * (hi - nom)) * norms["Up"]
    if not symmetrized:
        out["Down"] = (nom + k * (lo - nom)) * norms["Down"]
    reason = (
        f"shape effect scaled by {k:.4g}: for a parameter within +-{within:g} it made the expected yield negative "
        f"in bins {_bins(negative)} (down to {float(np.min(reach[negative] / nom[negative])):.3g} x nominal), and "
        f"its templates hold {events:.3g} effective Monte Carlo events, fewer than the {resolving:.3g} "
        f"({n_bins} bins x {within:g}^2) that resolve a relative change of 1/{within:g} per bin"
    )
    return out, [("capped", reason)]


def treat_templates(
    nominal: tuple[np.ndarray, np.ndarray],
    variations: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: TreatmentSettings,
    symmetrized: bool,
    where: tuple[str, str, str],
) -> tuple[dict[str, np.ndarray], list[TreatmentRecord]]:
    """Apply ``settings`` to the ``Up`` (and ``Down``) template of one region/sample/systematic.

    The guards (``NonNegative``, then ``PositiveWithin``) come first and again after smoothing.

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

    variances = {k: v[1] for k, v in variations.items()}

    def guard(prefix: str = "") -> None:
        nonlocal out
        notes: list[tuple[str, str]] = []
        if settings.non_negative:
            out, guarded = guard_non_negative(nom, out, symmetrized, nom_s2)
            notes += guarded
        if settings.positive_within > 0:
            out, guarded = guard_positive(nominal, out, variances, symmetrized, settings.positive_within)
            notes += guarded
        for action, reason in notes:
            record(action, f"{prefix}{reason}")

    guard()

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
    if settings.smoothing == "353QH" and not prune_shape:
        guard("after smoothing: ")  # smoothing may have crossed a cap
    if prune_shape:
        record("shape pruned", prune_shape)
    elif settings.smoothing == "353QH" and len(nom) >= 3:
        record("smoothed", "Smoothing 353QH (ratio to nominal, twice; yield kept)")
    if prune_norm:
        record("norm pruned", prune_norm)
    return out, records
