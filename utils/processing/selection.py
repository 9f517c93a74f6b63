"""Object and event selection, regions and observables: the single source that the processor,
the ServiceX query and the ML training use.

A numba kernel, one pass over the events for all jet variations. The same selection written as
columnar coffea/awkward code, the readable specification, is :mod:`utils.processing.reference`;
``tests/processing/test_reference.py`` keeps the two equal."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum

import awkward as ak
import numba
import numpy as np

from utils.config import AnalysisConfig
from utils.processing.randoms import NORMAL_CLIP, jet_normal

# Branches of the 2015 ntuple that the analysis reads (jet four-momenta are built from
# pt/eta/phi/mass; px/py/pz/e are never read). Counters are found by the schema.
JET_FIELDS = ("pt", "eta", "phi", "mass", "btag")
READ_BRANCHES: tuple[str, ...] = (
    *(f"jet_{f}" for f in JET_FIELDS),
    "electron_pt",
    "muon_pt",
)


log = logging.getLogger(__name__)


class JetMode(IntEnum):
    """How a jet variation changes each jet's four-momentum."""

    NOMINAL = 0  # unchanged
    SCALE = 1  # x the configured scale factor
    RESOLUTION = 2  # x (1 + sigma * N(0, 1)), one number per jet from :func:`jet_resolution_factors`


class Feature(IntEnum):
    """The per-event features the kernel computes: the columns of ``EventSelection.features``."""

    HT = 0
    M_BJJ = 1
    TRIJET_MEAN_DELTA_R = 2
    APLANARITY = 3
    LEPTON_PT = 4
    LEADING_JET_PT = 5


# Column names of ``EventSelection.features`` ("ht", "m_bjj", ...), in column order.
FEATURE_NAMES: tuple[str, ...] = tuple(f.name.lower() for f in Feature)
#: features only the classifier reads, computed where asked (see :func:`select_variations`)
OPTIONAL_FEATURES = ("aplanarity", "trijet_mean_delta_r")
OBSERVABLES = ("ht", "m_bjj")


def jet_mode(config: AnalysisConfig, variation: str) -> JetMode:
    """The :class:`JetMode` of a jet variation name (``"nominal"`` or one named in the configuration)."""
    known = {"nominal": JetMode.NOMINAL, config.pt_scale_name: JetMode.SCALE, config.pt_res_name: JetMode.RESOLUTION}
    if variation not in known:
        raise ValueError(f"unknown jet variation {variation!r}; allowed: {list(known)}")
    return known[variation]


# --- the selection kernel --------------------------------------------------------------------------


@numba.njit(inline="always")
def _delta_r(eta1, phi1, eta2, phi2):
    dphi = phi1 - phi2
    while dphi > math.pi:
        dphi -= 2.0 * math.pi
    while dphi < -math.pi:
        dphi += 2.0 * math.pi
    deta = eta1 - eta2
    return math.sqrt(deta * deta + dphi * dphi)


@numba.njit(inline="always")
def _smallest_eigenvalue_sym3(a, b, c, d, e, f):
    """Smallest eigenvalue of [[a, d, e], [d, b, f], [e, f, c]] (analytic, trigonometric form)."""
    p1 = d * d + e * e + f * f
    q = (a + b + c) / 3.0
    if p1 < 1e-300:
        return min(a, min(b, c))
    p2 = (a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2.0 * p1
    p = math.sqrt(p2 / 6.0)
    inv = 1.0 / p
    b11, b22, b33 = (a - q) * inv, (b - q) * inv, (c - q) * inv
    b12, b13, b23 = d * inv, e * inv, f * inv
    det = b11 * (b22 * b33 - b23 * b23) - b12 * (b12 * b33 - b23 * b13) + b13 * (b12 * b23 - b22 * b13)
    r = min(1.0, max(-1.0, det / 2.0))
    phi = math.acos(r) / 3.0
    return q + 2.0 * p * math.cos(phi + 2.0 * math.pi / 3.0)


@numba.njit(cache=True)
def _select_kernel(
    jet_offsets, jet_pt, jet_eta, jet_phi, jet_mass, jet_btag,
    el_offsets, el_pt, mu_offsets, mu_pt,
    modes, scale_factor, res_seed, res_sigma,
    lepton_pt_min, jet_pt_min, btag_threshold, n_leptons, min_jets, min_btags,
    region_min_btags, region_max_btags, n_weight_jets, region_aplanarity, region_delta_r,
    out_count, out_index, out_region, out_features, out_weight_jet_pt,
):  # fmt: skip
    """One pass over the events for every jet variation in ``modes``; selected events are
    appended to row ``k`` of the outputs of variation ``k`` (``out_count[k]`` of them). Aplanarity
    and the trijet's mean Delta R (ML features only) are computed in the regions flagged in
    ``region_aplanarity`` and ``region_delta_r``, NaN elsewhere."""
    n_events = jet_offsets.shape[0] - 1
    max_jets = 0
    for i in range(n_events):
        max_jets = max(max_jets, jet_offsets[i + 1] - jet_offsets[i])
    sel = np.empty(max_jets, dtype=np.int64)
    fac = np.empty(max_jets, dtype=np.float64)
    # per jet of the event, shared by the variations: the direction's trigonometry
    cos_phi = np.empty(max_jets, dtype=np.float64)
    sin_phi = np.empty(max_jets, dtype=np.float64)
    sinh_eta = np.empty(max_jets, dtype=np.float64)
    # per selected jet of a variation: its varied four-momentum and b-tag
    jpx = np.empty(max_jets, dtype=np.float64)
    jpy = np.empty(max_jets, dtype=np.float64)
    jpz = np.empty(max_jets, dtype=np.float64)
    jen = np.empty(max_jets, dtype=np.float64)
    jb = np.empty(max_jets, dtype=np.bool_)
    pt_bits = jet_pt.view(np.uint32)
    eta_bits = jet_eta.view(np.uint32)
    phi_bits = jet_phi.view(np.uint32)
    n_regions = region_min_btags.shape[0]
    # the largest factor any variation applies to a jet's pT: a jet below jet_pt_min / max_factor
    # is selected by none, and its trigonometry is never needed
    max_factor = 1.0
    for k in range(modes.shape[0]):
        out_count[k] = 0
        if modes[k] == JetMode.SCALE:
            max_factor = max(max_factor, scale_factor)
        elif modes[k] == JetMode.RESOLUTION:
            max_factor = max(max_factor, 1.0 + abs(res_sigma) * NORMAL_CLIP)
    for i in range(n_events):
        # leptons: the same under every jet variation
        n_lep = 0
        lep_pt = 0.0
        for j in range(el_offsets[i], el_offsets[i + 1]):
            if el_pt[j] > lepton_pt_min:
                n_lep += 1
                lep_pt += el_pt[j]
        for j in range(mu_offsets[i], mu_offsets[i + 1]):
            if mu_pt[j] > lepton_pt_min:
                n_lep += 1
                lep_pt += mu_pt[j]
        first = jet_offsets[i]
        if n_lep != n_leptons or jet_offsets[i + 1] - first < min_jets:
            continue
        for j in range(first, jet_offsets[i + 1]):
            if not jet_pt[j] * max_factor > jet_pt_min:
                continue
            cos_phi[j - first] = math.cos(jet_phi[j])
            sin_phi[j - first] = math.sin(jet_phi[j])
            sinh_eta[j - first] = math.sinh(jet_eta[j])
        for k in range(modes.shape[0]):
            mode = modes[k]
            # jets, after the jet-pT variation
            n_sel = 0
            n_b = 0
            for j in range(first, jet_offsets[i + 1]):
                if not jet_pt[j] * max_factor > jet_pt_min:
                    continue
                if mode == JetMode.NOMINAL:
                    f = 1.0
                elif mode == JetMode.SCALE:
                    f = scale_factor
                else:
                    f = 1.0 + res_sigma * jet_normal(pt_bits[j], eta_bits[j], phi_bits[j], res_seed)
                if jet_pt[j] * f > jet_pt_min:
                    sel[n_sel] = j
                    fac[n_sel] = f
                    jb[n_sel] = jet_btag[j] > btag_threshold
                    n_sel += 1
                    if jet_btag[j] > btag_threshold:
                        n_b += 1
            if n_sel < min_jets or n_b < min_btags:
                continue
            region = -1
            for r in range(n_regions):
                if n_b >= region_min_btags[r] and (region_max_btags[r] < 0 or n_b <= region_max_btags[r]):
                    region = r
                    break
            if region < 0:
                continue
            row = out_count[k]
            out_count[k] = row + 1
            out_index[k, row] = i
            out_region[k, row] = region
            # the selected jets' four-momenta; HT, leading jet, sphericity tensor
            ht = 0.0
            lead = 0.0
            sxx = syy = szz = sxy = sxz = syz = 0.0
            norm = 0.0
            for m in range(n_sel):
                j = sel[m]
                pt = jet_pt[j] * fac[m]
                mass = jet_mass[j] * fac[m]
                px = pt * cos_phi[j - first]
                py = pt * sin_phi[j - first]
                pz = pt * sinh_eta[j - first]
                jpx[m] = px
                jpy[m] = py
                jpz[m] = pz
                jen[m] = math.sqrt(px * px + py * py + pz * pz + mass * mass)
                ht += pt
                lead = max(lead, pt)
                sxx += px * px
                syy += py * py
                szz += pz * pz
                sxy += px * py
                sxz += px * pz
                syz += py * pz
                norm += px * px + py * py + pz * pz
            aplanarity = np.nan
            if region_aplanarity[region]:
                lam = _smallest_eigenvalue_sym3(sxx / norm, syy / norm, szz / norm, sxy / norm, sxz / norm, syz / norm)
                aplanarity = 1.5 * max(lam, 0.0)
            # hadronic top candidate: trijet with >= 1 b-tag and the largest vector-sum pT
            best_pt2 = -1.0
            best_a = best_b = best_c = -1
            best_m = np.nan
            for a in range(n_sel - 2):
                for b in range(a + 1, n_sel - 1):
                    pxab = jpx[a] + jpx[b]
                    pyab = jpy[a] + jpy[b]
                    bab = jb[a] or jb[b]
                    for c in range(b + 1, n_sel):
                        if not (bab or jb[c]):
                            continue
                        px = pxab + jpx[c]
                        py = pyab + jpy[c]
                        pt2 = px * px + py * py
                        if pt2 > best_pt2:
                            best_pt2 = pt2
                            best_a, best_b, best_c = a, b, c
            best_dr = np.nan
            if best_a >= 0:
                px = jpx[best_a] + jpx[best_b] + jpx[best_c]
                py = jpy[best_a] + jpy[best_b] + jpy[best_c]
                pz = jpz[best_a] + jpz[best_b] + jpz[best_c]
                en = jen[best_a] + jen[best_b] + jen[best_c]
                best_m = math.sqrt(max(en * en - px * px - py * py - pz * pz, 0.0))
            if best_a >= 0 and region_delta_r[region]:
                ja, jbb, jc = sel[best_a], sel[best_b], sel[best_c]
                best_dr = (
                    _delta_r(jet_eta[ja], jet_phi[ja], jet_eta[jbb], jet_phi[jbb])
                    + _delta_r(jet_eta[ja], jet_phi[ja], jet_eta[jc], jet_phi[jc])
                    + _delta_r(jet_eta[jbb], jet_phi[jbb], jet_eta[jc], jet_phi[jc])
                ) / 3.0
            out_features[k, row, Feature.HT] = ht
            out_features[k, row, Feature.M_BJJ] = best_m
            out_features[k, row, Feature.TRIJET_MEAN_DELTA_R] = best_dr
            out_features[k, row, Feature.APLANARITY] = aplanarity
            out_features[k, row, Feature.LEPTON_PT] = lep_pt
            out_features[k, row, Feature.LEADING_JET_PT] = lead
            for m in range(n_weight_jets):
                out_weight_jet_pt[k, row, m] = jet_pt[sel[m]] * fac[m] if m < n_sel else 0.0


@dataclass(frozen=True)
class EventSelection:
    """Selected events of one chunk under one jet-kinematic variation.

    ``index`` are the positions of the selected events in the chunk, ``region`` the index into
    ``AnalysisConfig.regions``, ``features`` one row per selected event with columns
    ``FEATURE_NAMES``, ``weight_jet_pt`` the pT of the first selected jets (for b-tag weights).
    ``omitted`` holds, per region, the :data:`OPTIONAL_FEATURES` not computed there (NaN in
    ``features``); asking for them raises.
    """

    variation: str
    index: np.ndarray
    region: np.ndarray
    features: np.ndarray
    weight_jet_pt: np.ndarray
    omitted: tuple[frozenset[str], ...] = ()

    def _check_computed(self, names, mask: np.ndarray | None) -> None:
        if not any(self.omitted):
            return
        regions = self.region if mask is None else self.region[mask]
        for r in np.unique(regions):
            missing = self.omitted[r] & set(names)
            if missing:
                raise ValueError(
                    f"feature(s) {sorted(missing)} not computed in region {int(r)} of this selection: "
                    "name them in select_variations(..., features=...)"
                )

    def feature(self, name: str) -> np.ndarray:
        self._check_computed((name,), None)
        return self.features[:, FEATURE_NAMES.index(name)]

    def observable(self, config: AnalysisConfig) -> np.ndarray:
        """The region's observable for each selected event (HT or m_bjj, as configured)."""
        obs = np.empty(len(self.index), dtype=np.float64)
        for r, region in enumerate(config.regions):
            m = self.region == r
            obs[m] = self.features[m, FEATURE_NAMES.index(region.observable)]
        return obs

    def feature_matrix(self, names: tuple[str, ...], mask: np.ndarray | None = None) -> np.ndarray:
        self._check_computed(names, mask)
        cols = [FEATURE_NAMES.index(n) for n in names]
        rows = self.features if mask is None else self.features[mask]
        return np.ascontiguousarray(rows[:, cols], dtype=np.float32)


@dataclass(frozen=True)
class ChunkArrays:
    """The flat columns the selection needs, read once per chunk."""

    jet_offsets: np.ndarray
    jet_pt: np.ndarray
    jet_eta: np.ndarray
    jet_phi: np.ndarray
    jet_mass: np.ndarray
    jet_btag: np.ndarray
    el_offsets: np.ndarray
    el_pt: np.ndarray
    mu_offsets: np.ndarray
    mu_pt: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.jet_offsets) - 1


def offsets_and_content(array: ak.Array, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64, starting at 0) and flat content (as stored, or as ``dtype``) of a
    singly-jagged numeric array."""
    layout = ak.to_layout(array)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        content = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    else:  # general layouts (ListArray, indexed, ...)
        counts = ak.to_numpy(ak.num(array, axis=1)).astype(np.int64)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        content = ak.to_numpy(ak.flatten(array, axis=1))
    return offsets, np.ascontiguousarray(content, dtype=dtype)


class MisalignedBranchError(ValueError):
    """Sibling jagged branches of one collection have different counts in some event."""


def check_sibling_counts(events, offsets: np.ndarray, collection: str, fields: tuple[str, ...]) -> None:
    """Every ``{collection}_{field}`` branch has the counts per event of ``offsets`` (only the
    branches' offsets are read; NanoEvents of :class:`~utils.processing.schema.AGCSchema` expose
    them, other record arrays are zipped already and skip the check)."""
    from utils.processing.schema import OWN_PREFIX

    counts = np.diff(offsets)
    present = set(ak.fields(events))
    for f in fields:
        name = f"{OWN_PREFIX}{collection}_{f}"
        if name not in present:
            continue
        own = ak.to_numpy(ak.num(events[name], axis=1)).astype(np.int64)
        if not np.array_equal(own, counts):
            bad = np.flatnonzero(own != counts)
            i = int(bad[0])
            raise MisalignedBranchError(
                f"branch {collection}_{f} has {own[i]} entries in event {i} of the chunk where "
                f"{collection}_{fields[0]} has {counts[i]} ({len(bad)} such events): sibling branches "
                "must have equal counts per event"
            )


def chunk_arrays(events) -> ChunkArrays:
    """Materialise exactly the columns in ``READ_BRANCHES`` from NanoEvents (or any record array
    with ``jet``, ``electron`` and ``muon`` collections); sibling jet branches with other counts
    per event than ``jet_pt`` raise :class:`MisalignedBranchError`."""
    jets = events.jet
    jet_offsets, jet_pt = offsets_and_content(jets.pt, np.float32)
    check_sibling_counts(events, jet_offsets, "jet", JET_FIELDS)
    cols = {}
    for f in ("eta", "phi", "mass"):
        cols[f] = offsets_and_content(jets[f], np.float32)[1]
    jet_btag = offsets_and_content(jets.btag, np.float64)[1]
    el_offsets, el_pt = offsets_and_content(events.electron.pt, np.float32)
    mu_offsets, mu_pt = offsets_and_content(events.muon.pt, np.float32)
    return ChunkArrays(jet_offsets, jet_pt, cols["eta"], cols["phi"], cols["mass"], jet_btag,
                       el_offsets, el_pt, mu_offsets, mu_pt)  # fmt: skip


def region_btag_bounds(config: AnalysisConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each region's least and most b-tags (int64; -1: no upper bound), for the kernels."""
    least = np.array([r.min_btags for r in config.regions], dtype=np.int64)
    most = np.array([-1 if r.max_btags is None else r.max_btags for r in config.regions], dtype=np.int64)
    return least, most


def select_variations(
    arrays: ChunkArrays,
    config: AnalysisConfig,
    variations: tuple[str, ...] = ("nominal",),
    features: Mapping[str, Collection[str]] | None = None,
) -> dict[str, EventSelection]:
    """Apply the object and event selection under each jet-kinematic variation, in one pass.

    A variation is ``"nominal"``, the jet-pT scale variation name or the resolution variation
    name of the configuration. A varied jet has its whole four-momentum scaled (pt and mass by the
    same factor, eta and phi unchanged), before the jet pT cut. ``features``: the features needed
    in each region (by region name); of the :data:`OPTIONAL_FEATURES`, only those are computed
    (``None``: every feature in every region).
    """
    names = config.region_names
    if features is not None and set(features) - set(names):
        raise ValueError(f"features for unknown region(s) {sorted(set(features) - set(names))}; regions: {names}")
    wanted = [set(FEATURE_NAMES) if features is None else set(features.get(n, ())) for n in names]
    omitted = tuple(frozenset(OPTIONAL_FEATURES) - w for w in wanted)
    want_aplanarity = np.array(["aplanarity" in w for w in wanted], dtype=np.bool_)
    want_delta_r = np.array(["trijet_mean_delta_r" in w for w in wanted], dtype=np.bool_)
    modes = np.array([jet_mode(config, v) for v in variations], dtype=np.int64)
    n, nv = arrays.n_events, len(variations)
    count = np.zeros(nv, dtype=np.int64)
    index = np.empty((nv, n), dtype=np.int64)
    region = np.empty((nv, n), dtype=np.int64)
    rows = np.empty((nv, n, len(FEATURE_NAMES)), dtype=np.float64)
    weight_pt = np.empty((nv, n, config.btag_n_jets), dtype=np.float64)
    min_b, max_b = region_btag_bounds(config)
    _select_kernel(
        arrays.jet_offsets, arrays.jet_pt, arrays.jet_eta, arrays.jet_phi, arrays.jet_mass, arrays.jet_btag,
        arrays.el_offsets, arrays.el_pt, arrays.mu_offsets, arrays.mu_pt,
        modes,
        config.pt_scale_factor, config.pt_res_seed, config.pt_res_sigma,
        config.lepton_pt_min, config.jet_pt_min, config.btag_threshold,
        config.n_leptons, config.min_jets, config.min_btags,
        min_b, max_b, config.btag_n_jets, want_aplanarity, want_delta_r,
        count, index, region, rows, weight_pt,
    )  # fmt: skip
    out = {}
    for k, v in enumerate(variations):
        c = count[k]
        out[v] = EventSelection(v, index[k, :c].copy(), region[k, :c].copy(), rows[k, :c].copy(),
                                weight_pt[k, :c].copy(), omitted)  # fmt: skip
    return out


def select_events(arrays: ChunkArrays, config: AnalysisConfig, variation: str = "nominal") -> EventSelection:
    """The selection under one jet-kinematic variation (see :func:`select_variations`)."""
    return select_variations(arrays, config, (variation,))[variation]
