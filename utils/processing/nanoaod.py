"""The AGC selection on CMS NanoAOD (the AGC main line): :func:`select_nanoaod`, in columnar
awkward code, is its specification; :func:`select_nanoaod_variations`, what the processor runs,
does the same arithmetic in one compiled pass per jet variation and is tested equal to it bit for
bit (the lepton and static jet cuts, the trigonometry and the random numbers are shared).

Objects (cuts from ``analysis_config.yml``, section ``nanoaod``):

- electrons: pT, |eta|, ``cutBased`` at least the configured level (4 = tight), ``sip3d``;
- muons: pT, |eta|, ``tightId``, ``sip3d``, ``pfRelIso04_all``;
- jets: pT after the jet variation, |eta|, jet ID bits (``jetId & mask``; 4 = tight lepton veto).

Events: exactly ``n_leptons`` selected leptons, at least ``min_jets`` selected jets, at least
``min_btags`` of them b-tagged (``btagCSVV2 > btag_threshold``); regions and their observables
as for the ntuples (HT; m_bjj of the trijet with the largest vector-sum pT among the trijets
holding a b-tag, jets in stored order). The jet mass scales with the jet pT variation; the
pt_res_up factor of a jet is a pure function of (run, luminosityBlock, event, jet index) and the
configured seed, so it survives chunking and skims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import awkward as ak
import numba
import numpy as np

from utils.config import AnalysisConfig, NanoAODCuts
from utils.errors import ConfigError
from utils.processing.randoms import GOLDEN_GAMMA, normal_of_key, splitmix64
from utils.processing.selection import offsets_and_content, region_btag_bounds

TREE_NAME = "Events"

#: every NanoAOD branch the selection reads (counters are read by uproot with their collection)
READ_BRANCHES: tuple[str, ...] = (
    "run", "luminosityBlock", "event",
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_jetId",
)  # fmt: skip


#: branches coffea's NanoAODSchema needs besides those to build the lepton collections
#: (candidates carry a charge and four-momentum); a skim keeps them so its files read the same
SCHEMA_BRANCHES: tuple[str, ...] = (
    "Electron_phi", "Electron_mass", "Electron_charge", "Muon_phi", "Muon_mass", "Muon_charge",
)  # fmt: skip


#: the I/O-only branch set of NanoAOD (about 4 % of a file's bytes, as the ntuples' 4 % set)
IO_BRANCHES: tuple[str, ...] = (
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass", "Muon_pt", "Electron_pt",
)  # fmt: skip


def nanoaod_cuts(config: AnalysisConfig) -> NanoAODCuts:
    if config.nanoaod is None:
        raise ConfigError(f"{config.source}: no 'nanoaod' section: the object definitions of NanoAOD inputs")
    return config.nanoaod


# --- reproducible per-jet random numbers --------------------------------------------------------


@numba.njit(cache=True)
def _event_jet_normals(run, lumi, event, offsets, seed, out):
    for i in range(event.shape[0]):
        event_key = splitmix64(
            numba.uint64(event[i])
            ^ splitmix64(numba.uint64(run[i]) * numba.uint64(GOLDEN_GAMMA) + numba.uint64(lumi[i]))
        )
        for j in range(offsets[i], offsets[i + 1]):
            out[j] = normal_of_key(event_key + numba.uint64(j - offsets[i]), seed)


def jet_normals(run, lumi, event, counts, seed: int) -> np.ndarray:
    """One standard normal number per jet (flat, in stored order), a function of the event's
    (run, luminosityBlock, event), the jet's index in the event and ``seed`` only."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.float64)
    _event_jet_normals(
        np.asarray(run, dtype=np.uint64), np.asarray(lumi, dtype=np.uint64), np.asarray(event, dtype=np.uint64),
        offsets, np.uint64(seed), out,
    )  # fmt: skip
    return out


# --- the selection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NanoSelection:
    """Selected events of one chunk under one jet variation: positions in the chunk, region index
    (into ``AnalysisConfig.regions``), HT, m_bjj, and the pT of the leading selected jets (for the
    b-tag weights). Flat over the chunk's ``Jet`` collection (stored order): ``jet_selected``, the
    selected jets of the selected events, and ``jet_factor``, each jet's pT and mass factor under
    the variation (for the jet-parton assignment's inputs)."""

    variation: str
    index: np.ndarray
    region: np.ndarray
    ht: np.ndarray
    m_bjj: np.ndarray
    weight_jet_pt: np.ndarray
    jet_selected: np.ndarray
    jet_factor: np.ndarray

    def observable(self, config: AnalysisConfig) -> np.ndarray:
        obs = np.empty(len(self.index), dtype=np.float64)
        for r, region in enumerate(config.regions):
            m = self.region == r
            obs[m] = getattr(self, region.observable)[m]
        return obs


def _jet_factors(events: ak.Array, counts: np.ndarray, config: AnalysisConfig, variation: str) -> np.ndarray:
    """Each jet's pT (and mass) factor under ``variation``, flat in stored order (float64)."""
    if variation == "nominal":
        return np.ones(int(counts.sum()), dtype=np.float64)
    if variation == config.pt_scale_name:
        return np.full(int(counts.sum()), config.pt_scale_factor, dtype=np.float64)
    if variation == config.pt_res_name:
        normals = jet_normals(events.run, events.luminosityBlock, events.event, counts, config.pt_res_seed)
        return 1.0 + config.pt_res_sigma * normals
    raise ConfigError(f"unknown jet variation {variation!r}; configured: {list(config.jet_variations)}")


def varied_jets(jets: ak.Array, events: ak.Array, config: AnalysisConfig, variation: str) -> ak.Array:
    """The jets with pT (and mass, by the same factor) under ``variation``."""
    counts = ak.to_numpy(ak.num(jets.pt, axis=1)).astype(np.int64)
    factor = ak.unflatten(_jet_factors(events, counts, config, variation), counts)
    return ak.zip(
        {"pt": jets.pt * factor, "eta": jets.eta, "phi": jets.phi, "mass": jets.mass * factor,
         "btag": jets.btagCSVV2, "jetId": jets.jetId},
        depth_limit=2,
    )  # fmt: skip


def selected_leptons(events: ak.Array, cuts: NanoAODCuts) -> tuple[ak.Array, ak.Array]:
    """Masks of the selected electrons and muons."""
    return electron_mask(events["Electron"], cuts), muon_mask(events["Muon"], cuts)


#: the fields the lepton cuts read
ELECTRON_CUT_FIELDS = ("pt", "eta", "cutBased", "sip3d")
MUON_CUT_FIELDS = ("pt", "eta", "tightId", "sip3d", "pfRelIso04_all")


# the lepton cuts, on an awkward collection or a mapping of flat numpy arrays alike (the same
# element-wise operations on the same fields)
def electron_mask(e, cuts: NanoAODCuts):
    return (
        (e["pt"] > cuts.electron_pt_min)
        & (abs(e["eta"]) < cuts.electron_abs_eta_max)
        & (e["cutBased"] >= cuts.electron_cut_based)
        & (e["sip3d"] < cuts.electron_sip3d_max)
    )


def muon_mask(mu, cuts: NanoAODCuts):
    return (
        (mu["pt"] > cuts.muon_pt_min)
        & (abs(mu["eta"]) < cuts.muon_abs_eta_max)
        & (mu["tightId"] | (not cuts.muon_tight_id))
        & (mu["sip3d"] < cuts.muon_sip3d_max)
        & (mu["pfRelIso04_all"] < cuts.muon_iso_max)
    )


def flat_collection(collection: ak.Array, fields: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Offsets (from the first field) and the flat content of ``fields`` of one NanoAOD
    collection (as stored; no record or vector behaviour)."""
    offsets, first = offsets_and_content(collection[fields[0]])
    return offsets, {fields[0]: first, **{f: offsets_and_content(collection[f])[1] for f in fields[1:]}}


def _trijet_mass(jets: ak.Array, threshold: float) -> ak.Array:
    """Mass of the trijet with the largest vector-sum pT among those holding a b-tag (first
    maximum in the order of ``ak.combinations``, jets in stored order)."""
    px, py = jets.pt * np.cos(jets.phi), jets.pt * np.sin(jets.phi)
    pz = jets.pt * np.sinh(jets.eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + jets.mass**2)
    p4 = ak.zip({"px": px, "py": py, "pz": pz, "e": energy, "btag": jets.btag})
    j1, j2, j3 = ak.unzip(ak.combinations(p4, 3))
    sx, sy, sz, se = (j1[c] + j2[c] + j3[c] for c in ("px", "py", "pz", "e"))
    tagged = (j1.btag > threshold) | (j2.btag > threshold) | (j3.btag > threshold)
    pt2 = ak.where(tagged, sx**2 + sy**2, -1.0)
    best = ak.argmax(pt2, axis=1, keepdims=True)
    mass2 = (se**2 - sx**2 - sy**2 - sz**2)[best]
    return np.sqrt(np.maximum(ak.to_numpy(ak.firsts(mass2)), 0.0))


def selected_jets(events: ak.Array, config: AnalysisConfig, variation: str = "nominal") -> ak.Array:
    """The selected jets of every event under ``variation`` (stored order), with ``index``, the
    jet's position in the event's ``Jet`` collection (to fetch further jet branches)."""
    cuts = nanoaod_cuts(config)
    jets = varied_jets(events.Jet, events, config, variation)
    jets = ak.with_field(jets, ak.local_index(jets.pt, axis=1), "index")
    return jets[(jets.pt > cuts.jet_pt_min) & _static_jet_mask(jets.eta, jets.jetId, cuts)]


def _static_jet_mask(eta: ak.Array, jet_id: ak.Array, cuts: NanoAODCuts) -> ak.Array:
    """The jet cuts no jet variation changes: |eta| and the jet ID bits."""
    central = abs(eta) < cuts.jet_abs_eta_max
    return central & ((jet_id & cuts.jet_id_mask) != 0) if cuts.jet_id_mask else central


def select_nanoaod(events: ak.Array, config: AnalysisConfig, variation: str = "nominal") -> NanoSelection:
    """The event selection of the AGC main line on one chunk of NanoAOD events."""
    cuts = nanoaod_cuts(config)
    electrons, muons = selected_leptons(events, cuts)
    jets = selected_jets(events, config, variation)
    n_btag = ak.sum(jets.btag > config.btag_threshold, axis=1)
    n_leptons = ak.sum(electrons, axis=1) + ak.sum(muons, axis=1)
    passed = (n_leptons == config.n_leptons) & (ak.num(jets) >= config.min_jets) & (n_btag >= config.min_btags)
    region = np.full(len(events), -1, dtype=np.int64)
    nb = ak.to_numpy(n_btag)
    for r, reg in enumerate(config.regions):
        in_region = ak.to_numpy(passed) & (nb >= reg.min_btags) & (region < 0)
        if reg.max_btags is not None:
            in_region &= nb <= reg.max_btags
        region[in_region] = r
    index = np.flatnonzero(region >= 0)
    jets = jets[index]
    ht = ak.to_numpy(ak.sum(jets.pt, axis=1)).astype(np.float64)
    m_bjj = _trijet_mass(jets, config.btag_threshold) if len(index) else np.zeros(0)
    leading = ak.fill_none(ak.pad_none(jets.pt, config.btag_n_jets, clip=True), 0.0)
    weight_jet_pt = ak.to_numpy(leading).astype(np.float64).reshape(len(index), config.btag_n_jets)
    counts = ak.to_numpy(ak.num(events["Jet"]["pt"], axis=1)).astype(np.int64)
    starts = np.cumsum(counts) - counts
    jet_selected = np.zeros(int(counts.sum()), dtype=np.bool_)
    jet_selected[ak.to_numpy(ak.flatten(jets.index + starts[index]))] = True
    return NanoSelection(variation, index, region[index], ht, np.asarray(m_bjj, dtype=np.float64), weight_jet_pt,
                         jet_selected, _jet_factors(events, counts, config, variation))  # fmt: skip


# --- the same selection, one compiled pass per jet variation -------------------------------------


@numba.njit(cache=True)
def _select_kernel(offsets, pt, mass, cos_phi, sin_phi, sinh_eta, btag, jet_ok, factor, n_leptons,
                   n_leptons_req, min_jets, pt_min, threshold, min_btags, region_min, region_max, n_weight_jets,
                   region, ht, m_bjj, weight_jet_pt, jet_selected):  # fmt: skip
    """The arithmetic of :func:`select_nanoaod` in its order (float32 cuts where awkward compares
    float32, the same additions in the same order), event by event; ``jet_selected`` (all False
    on entry) gets the selected jets of the selected events."""
    n_regions = region_min.shape[0]
    jets = np.empty(offsets[-1] - offsets[0], dtype=np.int64)  # the selected jets of one event
    tag = np.empty(jets.shape[0], dtype=np.bool_)  # and their b-tags
    px = np.empty(jets.shape[0])
    py = np.empty(jets.shape[0])
    pz = np.empty(jets.shape[0])
    en = np.empty(jets.shape[0])
    for i in range(offsets.shape[0] - 1):
        region[i] = -1
        if n_leptons[i] != n_leptons_req:
            continue
        n = 0
        nb = 0
        for j in range(offsets[i], offsets[i + 1]):
            if jet_ok[j] and pt[j] * factor[j] > pt_min:
                jets[n] = j
                n += 1
                if btag[j] > threshold:
                    nb += 1
        if n < min_jets or nb < min_btags:
            continue
        for r in range(n_regions):
            if nb >= region_min[r] and (region_max[r] < 0 or nb <= region_max[r]):
                region[i] = r
                break
        if region[i] < 0:
            continue
        total = 0.0
        for k in range(n):
            j = jets[k]
            jet_selected[j] = True
            p = pt[j] * factor[j]
            m = mass[j] * factor[j]
            tag[k] = btag[j] > threshold
            total += p
            px[k] = p * cos_phi[j]
            py[k] = p * sin_phi[j]
            pz[k] = p * sinh_eta[j]
            en[k] = np.sqrt(px[k] * px[k] + py[k] * py[k] + pz[k] * pz[k] + m * m)
            if k < n_weight_jets:
                weight_jet_pt[i, k] = p
        ht[i] = total
        for k in range(n, n_weight_jets):
            weight_jet_pt[i, k] = 0.0
        best = -np.inf
        best_m2 = np.nan
        for a in range(n - 2):
            for b in range(a + 1, n - 1):
                for c in range(b + 1, n):
                    sx = px[a] + px[b] + px[c]
                    sy = py[a] + py[b] + py[c]
                    pt2 = sx * sx + sy * sy if tag[a] or tag[b] or tag[c] else -1.0
                    if pt2 > best:
                        best = pt2
                        sz = pz[a] + pz[b] + pz[c]
                        se = en[a] + en[b] + en[c]
                        best_m2 = se * se - sx * sx - sy * sy - sz * sz
        m_bjj[i] = np.sqrt(max(best_m2, 0.0)) if n >= 3 else np.nan


def _count_per_event(offsets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """How many entries of each event (``offsets`` into the flat ``mask``) are set."""
    cumulative = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=cumulative[1:])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def select_nanoaod_variations(events: ak.Array, config: AnalysisConfig, variations: tuple[str, ...]) -> dict[str, Any]:
    """:func:`select_nanoaod` under every jet variation in ``variations``, bit for bit, with the
    lepton and static jet cuts, the jets' trigonometry (numpy's float32 functions, as the awkward
    selection calls them) and the per-jet random numbers computed once for all variations. The
    branches are taken as flat arrays (no record or vector behaviour)."""
    cuts = nanoaod_cuts(config)
    el_offsets, el = flat_collection(events["Electron"], ELECTRON_CUT_FIELDS)
    mu_offsets, mu = flat_collection(events["Muon"], MUON_CUT_FIELDS)
    n_leptons = _count_per_event(el_offsets, electron_mask(el, cuts)) + _count_per_event(
        mu_offsets, muon_mask(mu, cuts)
    )
    offsets, jet = flat_collection(events["Jet"], ("pt", "mass", "phi", "eta", "btagCSVV2", "jetId"))
    pt, mass, phi, eta, btag = jet["pt"], jet["mass"], jet["phi"], jet["eta"], jet["btagCSVV2"]
    counts = np.diff(offsets)
    jet_ok = np.asarray(_static_jet_mask(eta, jet["jetId"], cuts), dtype=np.bool_)
    cos_phi, sin_phi, sinh_eta = np.cos(phi), np.sin(phi), np.sinh(eta)
    # awkward compares a float32 array with a Python float in float32 (NEP 50): the kernel does too
    threshold = np.asarray(config.btag_threshold, dtype=btag.dtype)[()]
    region_min, region_max = region_btag_bounds(config)
    n = len(counts)
    out: dict[str, Any] = {}
    for variation in variations:
        factor = _jet_factors(events, counts, config, variation)
        region = np.empty(n, dtype=np.int64)
        ht, m_bjj = np.empty(n), np.empty(n)
        weight_jet_pt = np.empty((n, config.btag_n_jets))
        jet_selected = np.zeros(len(pt), dtype=np.bool_)
        _select_kernel(
            offsets, pt, mass, cos_phi, sin_phi, sinh_eta, btag, jet_ok, factor, n_leptons,
            config.n_leptons, config.min_jets, float(cuts.jet_pt_min), threshold, config.min_btags,
            region_min, region_max, config.btag_n_jets, region, ht, m_bjj, weight_jet_pt, jet_selected,
        )  # fmt: skip
        index = np.flatnonzero(region >= 0)
        out[variation] = NanoSelection(variation, index, region[index], ht[index], m_bjj[index], weight_jet_pt[index],
                                       jet_selected, factor)  # fmt: skip
    return out
