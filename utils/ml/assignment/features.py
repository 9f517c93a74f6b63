"""The permutations, the 20 features and their binnings: the one definition that training,
inference and the histograms share.

Permutations: the first ``min(nJet, 6)`` selected jets (stored order) of a 4j2b event are
assigned to the roles (W1, W2, b_had, b_lep), four distinct jets, W1/W2 unordered. They are
listed in the order of the AGC's coffea implementation: tuples of jet indices in lexicographic
order, keeping those with W1 > W2 index, e.g. for 4 jets (1,0,2,3), (1,0,3,2), (2,0,1,3), ...;
12, 60 and 180 permutations for 4, 5 and 6 jets.

Features (AGC names): dR(lepton, b_lep), dR(W1, W2), dR(W1, b_had), dR(W2, b_had);
m(lepton + b_lep), m(W1 + W2), m(W1 + W2 + b_had), pT(W1 + W2 + b_had); the pT, btagCSVV2 and
qgl of W1, W2, b_had and b_lep. **dR uses the wrapped azimuthal difference** (in [-pi, pi)),
unlike the AGC reference, whose shipped models expect the unwrapped difference; the models here
are trained on the wrapped inputs. Four-vectors are (pT, eta, phi, mass) with the jet mass
scaled with the jet-pT variation (:func:`utils.processing.nanoaod.varied_jets`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import awkward as ak
import numpy as np

from utils.config import AnalysisConfig
from utils.processing.nanoaod import (
    ELECTRON_CUT_FIELDS,
    MUON_CUT_FIELDS,
    NanoSelection,
    electron_mask,
    flat_collection,
    muon_mask,
    nanoaod_cuts,
)

#: the region whose events are assigned
REGION = "4j2b"
MIN_JETS = 4
MAX_JETS = 6
ROLES: tuple[str, ...] = ("w1", "w2", "btophad", "btoplep")
#: columns of AssignmentInputs.jets
JET_FIELDS: tuple[str, ...] = ("pt", "eta", "phi", "mass", "btag", "qgl")
#: NanoAOD branches read besides the selection's (utils.processing.nanoaod.READ_BRANCHES)
READ_BRANCHES: tuple[str, ...] = ("Jet_qgl", "Electron_phi", "Electron_mass", "Muon_phi", "Muon_mass")
N_BINS = 25


@dataclass(frozen=True)
class Feature:
    """One feature and the binning of its histogram (``N_BINS`` bins from ``low`` to ``high``)."""

    name: str
    low: float
    high: float
    label: str


def _features() -> tuple[Feature, ...]:
    dr = [
        ("leptonbtoplep", "lepton, b_lep"),
        ("w1w2", "W1, W2"),
        ("w1btophad", "W1, b_had"),
        ("w2btophad", "W2, b_had"),
    ]
    roles = {"w1": "W1", "w2": "W2", "btophad": "b_had", "btoplep": "b_lep"}
    out = [Feature(f"deltar_{n}", 0.0, 6.0, f"$\\Delta R$({t})") for n, t in dr]
    out += [
        Feature("mass_leptonbtoplep", 50.0, 300.0, "m(lepton + b_lep) [GeV]"),
        Feature("mass_w1w2", 50.0, 300.0, "m(W1 + W2) [GeV]"),
        Feature("mass_w1w2btophad", 50.0, 550.0, "m(W1 + W2 + b_had) [GeV]"),
        Feature("pt_w1w2btophad", 50.0, 550.0, "$p_T$(W1 + W2 + b_had) [GeV]"),
    ]
    out += [Feature(f"pt_{r}", 25.0, 300.0, f"$p_T$({t}) [GeV]") for r, t in roles.items()]
    out += [Feature(f"btag_{r}", 0.0, 1.0, f"btagCSVV2({t})") for r, t in roles.items()]
    out += [Feature(f"qgl_{r}", -1.0, 1.0, f"qgl({t})") for r, t in roles.items()]
    return tuple(out)


FEATURES: tuple[Feature, ...] = _features()
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


@cache
def permutations(n_jets: int) -> np.ndarray:
    """The assignments of ``n_jets`` (4 to 6) jets, ``[P, 4]`` jet indices (W1, W2, b_had, b_lep)."""
    if not MIN_JETS <= n_jets <= MAX_JETS:
        raise ValueError(f"permutations of {n_jets} jets: between {MIN_JETS} and {MAX_JETS} jets are assigned")
    perms = [p for p in itertools.permutations(range(n_jets), 4) if p[0] > p[1]]
    out = np.array(perms, dtype=np.int64)
    out.setflags(write=False)
    return out


@cache
def _lookup(n_jets: int) -> np.ndarray:
    table = np.full(MAX_JETS**4, -1, dtype=np.int64)
    table[_code(permutations(n_jets))] = np.arange(len(permutations(n_jets)))
    return table


def _code(perm: np.ndarray) -> np.ndarray:
    perm = np.asarray(perm, dtype=np.int64)
    return ((perm[..., 0] * MAX_JETS + perm[..., 1]) * MAX_JETS + perm[..., 2]) * MAX_JETS + perm[..., 3]


def permutation_index(n_jets: int, perm: np.ndarray) -> np.ndarray:
    """Row of each assignment ``[..., 4]`` in :func:`permutations` (``n_jets``); -1 if it is none
    (W1 < W2, repeated or out-of-range jets)."""
    perm = np.asarray(perm, dtype=np.int64)
    valid = np.all((perm >= 0) & (perm < n_jets), axis=-1)
    idx = _lookup(n_jets)[np.where(valid, _code(np.clip(perm, 0, MAX_JETS - 1)), 0)]
    return np.where(valid, idx, -1)


@dataclass(frozen=True)
class AssignmentInputs:
    """What the assignment needs of each event: the first ``MAX_JETS`` selected jets ``[n, 6, 6]``
    (columns :data:`JET_FIELDS`, NaN beyond the event's jets), ``n_jets`` = min(selected jets, 6),
    the selected lepton ``[n, 4]`` (pT, eta, phi, mass) and the ``event`` number (its parity
    chooses the model)."""

    jets: np.ndarray
    n_jets: np.ndarray
    lepton: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.n_jets)

    def take(self, index: np.ndarray) -> AssignmentInputs:
        return AssignmentInputs(self.jets[index], self.n_jets[index], self.lepton[index], self.event[index])

    @classmethod
    def concatenate(cls, parts: list[AssignmentInputs]) -> AssignmentInputs:
        if not parts:
            return cls(np.zeros((0, MAX_JETS, len(JET_FIELDS))), np.zeros(0, np.int64), np.zeros((0, 4)),
                       np.zeros(0, np.uint64))  # fmt: skip
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("jets", "n_jets", "lepton", "event")))


def _p4(pt, eta, phi, mass):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + mass**2)


def _mass(*vectors) -> np.ndarray:
    px, py, pz, e = (sum(v[i] for v in vectors) for i in range(4))
    return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))


def delta_r(eta1, phi1, eta2, phi2) -> np.ndarray:
    """sqrt(deta**2 + dphi**2) with dphi wrapped to [-pi, pi)."""
    dphi = np.mod(np.asarray(phi1) - phi2 + np.pi, 2 * np.pi) - np.pi
    return np.sqrt((np.asarray(eta1) - eta2) ** 2 + dphi**2)


def role_features(roles: np.ndarray, lepton: np.ndarray) -> np.ndarray:
    """The 20 features (float32, :data:`FEATURE_NAMES` order) of jets in their roles
    ``[..., 4, 6]`` (W1, W2, b_had, b_lep; columns :data:`JET_FIELDS`) and the lepton ``[..., 4]``."""
    pt, eta, phi, mass, btag, qgl = (roles[..., i] for i in range(len(JET_FIELDS)))
    lpt, leta, lphi, lmass = (lepton[..., i] for i in range(4))
    w1, w2, bh, bl = (_p4(pt[..., i], eta[..., i], phi[..., i], mass[..., i]) for i in range(4))
    lep = _p4(lpt, leta, lphi, lmass)
    top_had = tuple(w1[i] + w2[i] + bh[i] for i in range(4))
    columns = [
        delta_r(leta, lphi, eta[..., 3], phi[..., 3]),
        delta_r(eta[..., 0], phi[..., 0], eta[..., 1], phi[..., 1]),
        delta_r(eta[..., 0], phi[..., 0], eta[..., 2], phi[..., 2]),
        delta_r(eta[..., 1], phi[..., 1], eta[..., 2], phi[..., 2]),
        _mass(lep, bl),
        _mass(w1, w2),
        _mass(top_had),
        np.hypot(top_had[0], top_had[1]),
        *(pt[..., i] for i in range(4)),
        *(btag[..., i] for i in range(4)),
        *(qgl[..., i] for i in range(4)),
    ]
    return np.stack(columns, axis=-1).astype(np.float32)


def permutation_features(inputs: AssignmentInputs, n_jets: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Features of every permutation of the events ``rows`` (all when None), which must have
    ``n_jets`` jets: ``[len(rows), P, 20]`` float32."""
    rows = np.arange(len(inputs)) if rows is None else np.asarray(rows)
    jets = inputs.jets[rows][:, :n_jets]  # [m, n, 6]
    roles = jets[:, permutations(n_jets)]  # [m, P, 4, 6]
    return role_features(roles, inputs.lepton[rows][:, None, :])


@dataclass(frozen=True)
class Assignment:
    """The chosen assignment of each event: jet indices ``[n, 4]`` (W1, W2, b_had, b_lep) and
    their 20 features ``[n, 20]``."""

    jets: np.ndarray
    features: np.ndarray


#: scorer(parity the model was trained on, features [m, 20] float32) -> scores [m]
Scorer = Callable[[int, np.ndarray], np.ndarray]


def assign(inputs: AssignmentInputs, scorer: Scorer) -> Assignment:
    """The highest-scoring permutation of every event (the first one on ties), scored in one
    batch per jet multiplicity and parity; events with even ``event`` are scored by the model
    trained on odd events (parity 1) and vice versa."""
    n = len(inputs)
    best = np.zeros((n, 4), dtype=np.int64)
    features = np.zeros((n, len(FEATURES)), dtype=np.float32)
    parity = (inputs.event % 2).astype(np.int64)
    for n_jets in range(MIN_JETS, MAX_JETS + 1):
        for p in (0, 1):
            rows = np.flatnonzero((inputs.n_jets == n_jets) & (parity == p))
            if len(rows) == 0:
                continue
            x = permutation_features(inputs, n_jets, rows)
            scores = np.asarray(scorer(1 - p, x.reshape(-1, x.shape[-1]))).reshape(x.shape[:2])
            choice = np.argmax(scores, axis=1)
            best[rows] = permutations(n_jets)[choice]
            features[rows] = x[np.arange(len(rows)), choice]
    return Assignment(best, features)


def baseline_permutation(inputs: AssignmentInputs, btag_threshold: float) -> np.ndarray:
    """The simple assignment to compare with: b_had the highest-pT b-tagged jet, b_lep the next
    one (untagged jets by pT when fewer than two are tagged), W1 and W2 the two highest-pT other
    jets; ``[n, 4]`` jet indices (W1 > W2)."""
    pt, btag = inputs.jets[..., 0], inputs.jets[..., 4]
    present = np.arange(MAX_JETS)[None, :] < inputs.n_jets[:, None]
    untagged = ~(btag > btag_threshold)
    key = np.where(present, untagged * 1e9 - np.nan_to_num(pt), np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    b_had, b_lep = order[:, 0], order[:, 1]
    rest = np.where(present, -np.nan_to_num(pt), np.inf)
    rows = np.arange(len(pt))
    rest[rows, b_had] = np.inf
    rest[rows, b_lep] = np.inf
    w = np.argsort(rest, axis=1, kind="stable")[:, :2]
    return np.stack([w.max(axis=1), w.min(axis=1), b_had, b_lep], axis=1)


def chunk_leptons(events: Any, config: AnalysisConfig) -> np.ndarray:
    """The first selected lepton (electrons, then muons) of every event of a chunk, ``[n, 4]``
    (pT, eta, phi, mass; NaN where none): the same under every jet variation, so computed once."""
    cuts = nanoaod_cuts(config)
    el_offsets, el = flat_collection(events["Electron"], (*ELECTRON_CUT_FIELDS, "phi", "mass"))
    mu_offsets, mu = flat_collection(events["Muon"], (*MUON_CUT_FIELDS, "phi", "mass"))
    out = np.full((len(el_offsets) - 1, 4), np.nan)
    # muons first, then electrons over them: an event's first electron wins over its muons
    for offsets, mask, columns in ((mu_offsets, muon_mask(mu, cuts), mu), (el_offsets, electron_mask(el, cuts), el)):
        event, position = _first_set(offsets, np.asarray(mask, dtype=np.bool_))
        for i, field in enumerate(("pt", "eta", "phi", "mass")):
            out[event, i] = columns[field][position]
    return out


def _first_set(offsets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(events, flat positions) of each event's first set entry of ``mask`` (events without one
    left out)."""
    positions = np.flatnonzero(mask)
    event = np.searchsorted(offsets, positions, side="right") - 1
    first = np.ones(len(positions), dtype=np.bool_)
    first[1:] = event[1:] != event[:-1]
    return event[first], positions[first]


def assignment_inputs(
    events: Any, config: AnalysisConfig, sel: NanoSelection, leptons: np.ndarray | None = None
) -> tuple[AssignmentInputs, np.ndarray]:
    """The inputs of the selection's 4j2b events (chunk ``events``, NanoAOD, jets as the
    selection ``sel`` varied and selected them) and the mask of those events in ``sel``;
    ``leptons``: the chunk's :func:`chunk_leptons`, if already computed."""
    in_region = sel.region == config.region_names.index(REGION)
    rows = sel.index[in_region]
    if len(rows) == 0:
        return AssignmentInputs.concatenate([]), in_region
    offsets, jet = flat_collection(events["Jet"], ("pt", "mass", "eta", "phi", "btagCSVV2", "qgl"))
    # every jet of the rows' events, then those the selection kept: position, row, rank in the row
    counts = offsets[rows + 1] - offsets[rows]
    row = np.repeat(np.arange(len(rows)), counts)
    position = np.repeat(offsets[rows] - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    kept = sel.jet_selected[position]
    position, row = position[kept], row[kept]
    n_kept = np.bincount(row, minlength=len(rows))
    rank = np.arange(len(row)) - np.repeat(np.cumsum(n_kept) - n_kept, n_kept)
    first = rank < MAX_JETS
    position, row, rank = position[first], row[first], rank[first]
    factor = sel.jet_factor[position]
    columns = {
        "pt": jet["pt"][position] * factor,
        "mass": jet["mass"][position] * factor,
        "eta": jet["eta"][position],
        "phi": jet["phi"][position],
        "btag": jet["btagCSVV2"][position],
        "qgl": jet["qgl"][position],
    }
    stacked = np.full((len(rows), MAX_JETS, len(JET_FIELDS)), np.nan)
    for i, name in enumerate(JET_FIELDS):
        stacked[row, rank, i] = columns[name]
    lepton = chunk_leptons(events[rows], config) if leptons is None else leptons[rows]
    n_jets = np.minimum(n_kept, MAX_JETS).astype(np.int64)
    event = np.asarray(ak.to_numpy(events["event"]), dtype=np.uint64)[rows]
    return AssignmentInputs(stacked, n_jets, lepton, event), in_region
