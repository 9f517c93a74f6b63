"""The NanoAOD writer of the embedded dataset: the same generated physics as the ntuple writer,
written in the CMS NanoAOD layout of the AGC main line (TTree ``Events``, 947 branches).

The layout (names, types, in file order) and each branch's share of a real file's compressed
bytes come from ``datasets/embedded/nanoaod_layout.json``. Per chunk of events:

- the analysis objects are converted from the generator's :class:`EventBatch` (the ntuple
  writer's events of the same seed): ``Jet_*`` (``btagCSVV2`` -10 where undefined, ``qgl`` -1,
  ``jetId`` in {0, 2, 6}, ``hadronFlavour``/``partonFlavour``/``genJetIdx``), ``Electron_*``
  (``cutBased`` 0-4, ``sip3d``), ``Muon_*`` (``tightId``, ``sip3d``, ``pfRelIso04_all``), ``MET_*``,
  ``GenJet_*`` and ``GenPart_*`` with decay chains (:func:`genpart_chains`);
- ``run``/``luminosityBlock``/``event`` are unique within a sample (``event`` counts up, so both
  parities occur);
- every other branch of the layout is filler: values of the branch's type drawn with as many
  random bits as make its compressed size the real file's share relative to the I/O branches,
  so the branches the analysis reads are about 5 % of a file's bytes, as in the real files.

GenPart conventions (those of CMS NanoAOD, as ``genPartIdxMother`` and ``statusFlags`` of
Pythia 8 records): per event, mothers precede daughters; ``genPartIdxMother`` is the index of
the mother within the event, -1 for none. Tops, W bosons and quarks (W daughters, the b of
t -> W b) appear twice: a first copy (status 22 for t and W, 23 for quarks; flags isPrompt,
isHardProcess, fromHardProcess, isFirstCopy) and a last copy (status 62 t, 52 W, 71 quarks;
isPrompt, fromHardProcess, fromHardProcessBeforeFSR, isLastCopy) whose mother is the first copy.
Daughters hang on the last copy of their parent: t -> W b, W -> q q' / l nu / tau nu,
tau -> e/mu (status 1, tau-decay-product flags); hadronic tau decays keep only the tau
(status 2). Leptons and neutrinos of the W are single copies (status 1, isFirstCopy and
isLastCopy). The "distinct parent" of a last-copy quark (its first ancestor with another pdgId)
is therefore the W or the top, as the AGC's truth labels need.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from utils.config import REPO_ROOT
from utils.datasets.embedded.events import EventBatch, Jagged, offsets_of
from utils.datasets.embedded.generator import (
    DATA_PROCESS,
    DEFAULT_EVENTS_PER_BASKET,
    DataMixture,
    FileResult,
    _reproducible_headers,
    _uuid_function,
    chunk_sizes,
    generate_data_events,
    generate_events,
    make_readable,
    seed_sequence,
    zlib_compression,
)
from utils.datasets.embedded.particles import Origin
from utils.errors import ConfigError
from utils.io import atomic_path

log = logging.getLogger(__name__)

# Bump when a change alters the bytes of generated NanoAOD files (part of the dataset cache key).
NANOAOD_WRITER_VERSION = "1.0.0"
TREE_NAME = "Events"
INPUT_FORMAT = "nanoaod"
LAYOUT_PATH = REPO_ROOT / "datasets" / "embedded" / "nanoaod_layout.json"

#: the branches of the I/O benchmark set; the filler is sized relative to their bytes
IO_BRANCHES = ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass", "Muon_pt", "Electron_pt")

MC_RUN = 1
DATA_RUN = 260_000
EVENTS_PER_LUMI = 1000
EVENT_STRIDE = 1_000_000_000  # event numbers of file i start at i * EVENT_STRIDE + 1

# statusFlags bits (CMS NanoAOD GenPart)
IS_PROMPT = 1 << 0
IS_TAU_DECAY_PRODUCT = 1 << 2
IS_PROMPT_TAU_DECAY_PRODUCT = 1 << 3
IS_DIRECT_TAU_DECAY_PRODUCT = 1 << 4
IS_DIRECT_PROMPT_TAU_DECAY_PRODUCT = 1 << 5
IS_HARD_PROCESS = 1 << 7
FROM_HARD_PROCESS = 1 << 8
IS_HARD_PROCESS_TAU_DECAY_PRODUCT = 1 << 9
IS_DIRECT_HARD_PROCESS_TAU_DECAY_PRODUCT = 1 << 10
FROM_HARD_PROCESS_BEFORE_FSR = 1 << 11
IS_FIRST_COPY = 1 << 12
IS_LAST_COPY = 1 << 13
IS_LAST_COPY_BEFORE_FSR = 1 << 14

FIRST_COPY_FLAGS = IS_PROMPT | IS_HARD_PROCESS | FROM_HARD_PROCESS | IS_FIRST_COPY
LAST_COPY_FLAGS = IS_PROMPT | FROM_HARD_PROCESS | FROM_HARD_PROCESS_BEFORE_FSR | IS_LAST_COPY
SINGLE_COPY_FLAGS = FIRST_COPY_FLAGS | FROM_HARD_PROCESS_BEFORE_FSR | IS_LAST_COPY | IS_LAST_COPY_BEFORE_FSR
TAU_PRODUCT_FLAGS = (
    IS_TAU_DECAY_PRODUCT
    | IS_PROMPT_TAU_DECAY_PRODUCT
    | IS_DIRECT_TAU_DECAY_PRODUCT
    | IS_DIRECT_PROMPT_TAU_DECAY_PRODUCT
    | IS_HARD_PROCESS_TAU_DECAY_PRODUCT
    | IS_DIRECT_HARD_PROCESS_TAU_DECAY_PRODUCT
    | FROM_HARD_PROCESS
    | IS_FIRST_COPY
    | IS_LAST_COPY
)
LAST_COPY_STATUS = {6: 62, 24: 52}  # |pdgId| -> status of the last copy; quarks: 71

_NUMPY_OF_TYPE = {
    "float": np.float32,
    "double": np.float64,
    "bool": np.bool_,
    "uint8_t": np.uint8,
    "int32_t": np.int32,
    "uint32_t": np.uint32,
    "uint64_t": np.uint64,
    "int64_t": np.int64,
}


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BranchSpec:
    """One branch of the layout: ``typename`` as uproot reports it (``float[]`` is jagged)."""

    name: str
    typename: str
    share: float  # of the compressed bytes of a real file

    @property
    def jagged(self) -> bool:
        return self.typename.endswith("[]")

    @property
    def dtype(self) -> np.dtype:
        base = self.typename.removesuffix("[]")
        if base not in _NUMPY_OF_TYPE:
            raise ConfigError(f"{LAYOUT_PATH}: branch {self.name!r} has unsupported type {self.typename!r}")
        return np.dtype(_NUMPY_OF_TYPE[base])

    @property
    def collection(self) -> str:
        """``Jet`` for ``Jet_pt``; a jagged branch without ``_`` is its own collection."""
        return self.name.split("_", 1)[0] if "_" in self.name else self.name

    @property
    def field(self) -> str:
        return self.name.split("_", 1)[1] if "_" in self.name else ""


@dataclass(frozen=True)
class Layout:
    branches: tuple[BranchSpec, ...]

    @functools.cached_property
    def by_name(self) -> dict[str, BranchSpec]:
        return {b.name: b for b in self.branches}

    @functools.cached_property
    def counters(self) -> frozenset[str]:
        """The ``n<collection>`` counters (uproot writes them with their collection)."""
        return frozenset("n" + b.collection for b in self.branches if b.jagged)

    def collection_fields(self, collection: str) -> tuple[BranchSpec, ...]:
        return tuple(b for b in self.branches if b.jagged and b.collection == collection)

    def groups(self) -> list[tuple[str, bool]]:
        """(collection or scalar branch name, is_collection) in file order: a collection sits
        where its counter is."""
        out: list[tuple[str, bool]] = []
        for b in self.branches:
            if b.name in self.counters:
                out.append((b.name[1:], True))
            elif not b.jagged:
                out.append((b.name, False))
        return out


@functools.lru_cache(maxsize=4)
def load_layout(path: Path = LAYOUT_PATH) -> Layout:
    try:
        with open(path) as f:
            data = json.load(f)
        rows = data["branches"]
        layout = Layout(tuple(BranchSpec(str(n), str(t), float(s)) for n, t, s in rows))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: not a NanoAOD layout ({{'branches': [[name, type, share], ...]}}): {err}") from None
    for b in layout.branches:
        b.dtype  # noqa: B018 -- validates the type
        if b.jagged and "n" + b.collection not in layout.by_name:
            raise ConfigError(f"{path}: jagged branch {b.name!r} has no counter 'n{b.collection}'")
    return layout


# --------------------------------------------------------------------------------------------
# GenPart decay chains
# --------------------------------------------------------------------------------------------
def genpart_chains(record: Jagged) -> Jagged:
    """The generator record of an :class:`EventBatch` (``collections['GenPart']``, with the
    ``origin``/``top_sign`` truth) as NanoAOD GenPart: copies, ``genPartIdxMother`` (within the
    event) and ``statusFlags``; see the module doc for the conventions."""
    counts = record.counts.astype(np.int64)
    n = len(counts)
    ev = np.repeat(np.arange(n, dtype=np.int64), counts)
    pdg = record.fields["pdgId"].astype(np.int32)
    apdg = np.abs(pdg)
    m = len(pdg)
    if m and ("origin" not in record.truth or "top_sign" not in record.truth):
        raise ValueError("GenPart record lacks the origin/top_sign truth the decay chains are built from")
    origin = record.truth.get("origin", np.zeros(m, np.int8))
    top_sign = record.truth.get("top_sign", np.zeros(m, np.int8)).astype(np.int64)
    status_in = record.fields["status"].astype(np.int32)
    group = ev * 3 + (top_sign + 1)  # one decay chain per (event, top sign)

    is_top, is_w = apdg == 6, apdg == 24
    is_tau = (apdg == 15) & (status_in == 2)
    w_daughter = origin == Origin.W_DAUGHTER
    is_taulep = w_daughter & np.isin(apdg, (11, 13)) & np.isin(group, group[is_tau]) & ~is_tau
    is_wkid = w_daughter & ~is_taulep
    is_topb = (origin == Origin.TOP_B) & ~is_top & ~is_w
    two_copies = is_top | is_w | ((is_topb | is_wkid) & (apdg <= 5))
    # level: the generation of a row (mothers at lower levels, so they come first)
    level0 = np.select([is_top, is_w | is_topb, is_wkid, is_taulep], [0, 2, 4, 6], 2).astype(np.int64)

    src = np.concatenate([np.arange(m), np.flatnonzero(two_copies)])
    copy = np.concatenate([np.zeros(m, np.int8), np.ones(int(two_copies.sum()), np.int8)])
    level = level0[src] + copy
    order = np.lexsort((copy, src, level, ev[src]))
    src, copy, level = src[order], copy[order], level[order]
    n_out = len(src)
    out_ev = ev[src]
    position = np.arange(n_out)

    def locate(select: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Output position of the row ``select`` (a mask over outputs) with each of ``keys``
        (groups), -1 where the group has none."""
        cand = np.flatnonzero(select)
        cand_keys = group[src[cand]]
        sort = np.argsort(cand_keys, kind="stable")
        cand, cand_keys = cand[sort], cand_keys[sort]
        where = np.searchsorted(cand_keys, keys)
        where = np.minimum(where, max(len(cand) - 1, 0))
        found = (len(cand) > 0) & (cand_keys[where] == keys) if len(cand) else np.zeros(len(keys), bool)
        return np.where(found, cand[where] if len(cand) else -1, -1)

    last_copy = (copy == 1) | ~two_copies[src]
    mother = np.full(n_out, -1, dtype=np.int64)
    first = copy == 0
    # last copies hang on their first copy (same source row)
    first_position = np.empty(m, dtype=np.int64)
    first_position[src[first]] = position[first]
    mother[~first] = first_position[src[~first]]
    g = group[src]
    top_last = is_top[src] & last_copy
    w_last = is_w[src] & last_copy
    for mask, parent in (
        (first & is_w[src] & (top_sign[src] != 0), top_last),
        (first & is_topb[src], top_last),
        (first & is_wkid[src], w_last),
        (first & is_taulep[src], is_tau[src]),
    ):
        idx = np.flatnonzero(mask)
        mother[idx] = locate(parent, g[idx])
    out_counts = np.bincount(out_ev, minlength=n).astype(np.int64)
    start = offsets_of(out_counts)[:-1]
    local_mother = np.where(mother >= 0, mother - start[out_ev], -1).astype(np.int32)

    status = status_in[src].copy()
    a = apdg[src]
    status[(copy == 0) & two_copies[src]] = np.where(a[(copy == 0) & two_copies[src]] <= 5, 23, 22)
    last_status = np.where(a == 6, LAST_COPY_STATUS[6], np.where(a == 24, LAST_COPY_STATUS[24], 71))
    status[copy == 1] = last_status[copy == 1]
    flags = np.where(copy == 1, LAST_COPY_FLAGS, np.where(two_copies[src], FIRST_COPY_FLAGS, SINGLE_COPY_FLAGS))
    flags = np.where(is_taulep[src], TAU_PRODUCT_FLAGS, flags).astype(np.int32)
    fields = {
        "pt": record.fields["pt"][src].astype(np.float32),
        "eta": record.fields["eta"][src].astype(np.float32),
        "phi": record.fields["phi"][src].astype(np.float32),
        "mass": record.fields["mass"][src].astype(np.float32),
        "pdgId": pdg[src],
        "genPartIdxMother": local_mother,
        "status": status.astype(np.int32),
        "statusFlags": flags,
    }
    return Jagged(out_counts.astype(np.int32), fields)


# --------------------------------------------------------------------------------------------
# analysis objects
# --------------------------------------------------------------------------------------------
def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """float32 with ``bits`` mantissa bits (NanoAOD stores many floats at reduced precision)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    drop = 23 - bits
    as_int = x.view(np.uint32)
    rounded = (as_int + np.uint32(1 << (drop - 1))) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return np.where(np.isfinite(x), rounded.view(np.float32), x)


def _sip3d(fields: dict[str, np.ndarray], err_names: tuple[str, str]) -> np.ndarray:
    ip = np.hypot(fields["dxy"].astype(np.float64), fields["dz"].astype(np.float64))
    err = np.hypot(fields[err_names[0]].astype(np.float64), fields[err_names[1]].astype(np.float64))
    return (ip / np.maximum(err, 1e-6)).astype(np.float32)


def _jets(rng: np.random.Generator, jets: Jagged) -> tuple[dict[str, np.ndarray], Jagged]:
    """Jet fields (NanoAOD names) and the GenJet collection (the non-pile-up jets' particles)."""
    f, truth = jets.fields, jets.truth
    m = len(f["pt"])
    flavour = truth["flavour"].astype(np.int32)
    origin = truth["origin"]
    pileup = origin == Origin.PILEUP
    btag = f["btag"].astype(np.float32)
    btag = np.where(btag <= 0.0, np.float32(-10.0), round_mantissa(btag, 10))
    quark_like = np.isin(origin, (Origin.W_DAUGHTER, Origin.RECOIL, Origin.TOP_B, Origin.TAU))
    gluon_like = (origin == Origin.RADIATION) & (rng.uniform(size=m) < 0.6)
    qgl = np.where(quark_like & ~gluon_like, rng.beta(3.0, 1.3, m), rng.beta(1.2, 2.5, m))
    undefined = (pileup & (rng.uniform(size=m) < 0.4)) | (rng.uniform(size=m) < 0.02)
    qgl = np.where(undefined, np.float32(-1.0), round_mantissa(qgl, 10))
    u = rng.uniform(size=m)
    good = np.where(pileup, 0.85, 0.97)
    jet_id = np.where(u < good, 6, np.where(u < good + 0.02, 2, 0)).astype(np.int32)
    light = np.where(rng.uniform(size=m) < 0.5, 1, 2) * np.where(rng.uniform(size=m) < 0.5, 1, -1)
    sign = np.where(truth["top_sign"] < 0, -1, 1)
    parton = np.where(
        flavour > 0,
        flavour * sign,
        np.where(pileup, 0, np.where(origin == Origin.RADIATION, np.where(gluon_like, 21, light), light)),
    ).astype(np.int32)
    # GenJets: one per non-pile-up jet, in the same (pT) order
    n_events = len(jets.counts)
    event = np.repeat(np.arange(n_events), jets.counts)
    matched = ~pileup
    gen_counts = np.bincount(event[matched], minlength=n_events).astype(np.int32)
    before = np.cumsum(matched) - matched  # matched jets before each jet, over the whole chunk
    rank = before - np.concatenate([before, [0]])[offsets_of(jets.counts)[:-1]][event]
    gen_idx = np.where(matched, rank, -1).astype(np.int32)
    k = int(matched.sum())
    gen = Jagged(
        gen_counts,
        {
            "pt": round_mantissa(f["pt"][matched] * (1.0 + 0.1 * rng.standard_normal(k)), 10),
            "eta": round_mantissa(f["eta"][matched] + 0.02 * rng.standard_normal(k), 10),
            "phi": round_mantissa(f["phi"][matched] + 0.02 * rng.standard_normal(k), 10),
            "mass": round_mantissa(f["mass"][matched] * (1.0 + 0.1 * rng.standard_normal(k)), 10),
            "partonFlavour": parton[matched],
            "hadronFlavour": flavour[matched].astype(np.uint8),
        },
    )
    fields = {
        "pt": f["pt"].astype(np.float32),
        "eta": f["eta"].astype(np.float32),
        "phi": f["phi"].astype(np.float32),
        "mass": f["mass"].astype(np.float32),
        "btagCSVV2": btag,
        "qgl": qgl.astype(np.float32),
        "jetId": jet_id,
        "hadronFlavour": flavour,
        "partonFlavour": parton,
        "genJetIdx": gen_idx,
    }
    return fields, gen


def _electrons(rng: np.random.Generator, e: Jagged) -> dict[str, np.ndarray]:
    f = e.fields
    m = len(f["pt"])
    rel_iso = (f["iso"].astype(np.float64) / np.maximum(f["pt"].astype(np.float64), 1.0)).astype(np.float32)
    level = np.select([f["isTight"], f["isMedium"], f["isLoose"]], [4, 3, 2], np.where(rng.uniform(size=m) < 0.5, 1, 0))
    level = np.where(rel_iso > 0.2, np.minimum(level, 1), level)  # cutBased includes isolation
    charge = f["ch"].astype(np.int32)
    return {
        "pt": f["pt"].astype(np.float32),
        "eta": f["eta"].astype(np.float32),
        "phi": f["phi"].astype(np.float32),
        "mass": np.full(m, 0.000511, np.float32),
        "charge": charge,
        "pdgId": (-11 * charge).astype(np.int32),
        "cutBased": level.astype(np.int32),
        "sip3d": _sip3d(f, ("dxyError", "dzError")),
        "dxy": f["dxy"].astype(np.float32),
        "dz": f["dz"].astype(np.float32),
        "dxyErr": f["dxyError"].astype(np.float32),
        "dzErr": f["dzError"].astype(np.float32),
        "pfRelIso03_all": rel_iso,
    }


def _muons(rng: np.random.Generator, mu: Jagged) -> dict[str, np.ndarray]:
    f = mu.fields
    m = len(f["pt"])
    charge = f["ch"].astype(np.int32)
    tight = f["isTight"].astype(bool)
    return {
        "pt": f["pt"].astype(np.float32),
        "eta": f["eta"].astype(np.float32),
        "phi": f["phi"].astype(np.float32),
        "mass": np.full(m, 0.10566, np.float32),
        "charge": charge,
        "pdgId": (-13 * charge).astype(np.int32),
        "tightId": tight,
        "mediumId": tight | (f["isSoft"].astype(bool) & (rng.uniform(size=m) < 0.5)),
        "looseId": tight | f["isSoft"].astype(bool),
        "sip3d": _sip3d(f, ("dxyError", "dzError")),
        "dxy": f["dxy"].astype(np.float32),
        "dz": f["dz"].astype(np.float32),
        "dxyErr": f["dxyError"].astype(np.float32),
        "dzErr": f["dzError"].astype(np.float32),
        "pfRelIso03_all": f["pfreliso03all"].astype(np.float32),
        "pfRelIso04_all": f["pfreliso04all"].astype(np.float32),
    }


@dataclass
class NanoEvents:
    """One chunk in the NanoAOD layout: collections (counts + fields) and scalar branches."""

    n: int
    collections: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]
    scalars: dict[str, np.ndarray]


def to_nanoaod(batch: EventBatch, rng: np.random.Generator, run: int, first_event: int) -> NanoEvents:
    """The physics branches of ``batch`` in NanoAOD names and types (no filler).

    ``event`` numbers are ``first_event, first_event + 1, ...``; ``luminosityBlock`` groups
    :data:`EVENTS_PER_LUMI` consecutive events.
    """
    n = batch.n
    jets = batch.collections["jet"]
    jet_fields, genjets = _jets(rng, jets)
    genpart = genpart_chains(batch.collections["GenPart"])
    electrons, muons = batch.collections["electron"], batch.collections["muon"]
    event = np.arange(first_event, first_event + n, dtype=np.uint64)
    scalars: dict[str, np.ndarray] = {
        "run": np.full(n, run, np.uint32),
        "luminosityBlock": ((event - np.uint64(1)) // np.uint64(EVENTS_PER_LUMI) + np.uint64(1)).astype(np.uint32),
        "event": event,
        "genWeight": np.ones(n, np.float32),
        "Generator_weight": np.ones(n, np.float32),
        "MET_pt": batch.scalars["met_pt"].astype(np.float32),
        "MET_phi": batch.scalars["met_phi"].astype(np.float32),
        "MET_sumEt": batch.scalars["met_e"].astype(np.float32),
        "MET_significance": batch.scalars["met_significance"].astype(np.float32),
    }
    collections = {
        "Jet": (jets.counts, jet_fields),
        "GenJet": (genjets.counts, genjets.fields),
        "GenPart": (genpart.counts, genpart.fields),
        "Electron": (electrons.counts, _electrons(rng, electrons)),
        "Muon": (muons.counts, _muons(rng, muons)),
    }
    return NanoEvents(n, collections, scalars)


# --------------------------------------------------------------------------------------------
# filler
# --------------------------------------------------------------------------------------------
_H_P = np.linspace(0.0, 0.5, 501)
with np.errstate(divide="ignore", invalid="ignore"):
    _H = np.nan_to_num(-(_H_P * np.log2(_H_P) + (1 - _H_P) * np.log2(1 - _H_P)))


def _bernoulli_p(bits: float) -> float:
    """p of a coin whose entropy is ``bits`` (< 1)."""
    return float(np.interp(min(bits, 1.0), _H, _H_P))


def filler_values(rng: np.random.Generator, dtype: np.dtype, size: int, bits: float) -> np.ndarray:
    """``size`` values of ``dtype`` carrying about ``bits`` random bits each (0 bits: constant)."""
    width = 1 if dtype == np.bool_ else (23 if dtype.kind == "f" else min(8 * dtype.itemsize - (dtype.kind == "i"), 62))
    bits = float(min(max(bits, 0.0), width))
    if bits < 1.0:
        values = (rng.random(size) < _bernoulli_p(bits)).astype(np.int64)
    else:
        levels = round(2.0**bits)
        values = rng.integers(0, levels, size, dtype=np.int64)
    if dtype.kind == "f":
        scale = 2.0 ** -max(math.ceil(bits), 1)
        return ((values + 0.5) * scale).astype(dtype)
    return values.astype(dtype)


def _compressed_bytes(arrays: list[np.ndarray]) -> int:
    return sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 1)) for a in arrays)


#: lengths of the per-event weight lists (as in the real files)
FIXED_LENGTHS = {"LHEPdfWeight": 102, "LHEScaleWeight": 9, "PSWeight": 1, "LHEReweightingWeight": 0}
#: mean multiplicities of the filler collections in ttbar events (Poisson)
FILLER_MULTIPLICITY = {
    "CorrT1METJet": 4.0, "FatJet": 0.6, "FsrPhoton": 0.05, "GenJetAK8": 1.2, "GenVisTau": 0.2,
    "LHEPart": 8.0, "Photon": 1.0, "GenDressedLepton": 1.0, "GenIsolatedPhoton": 0.1,
    "SoftActivityJet": 6.0, "Tau": 1.0, "OtherPV": 3.0, "SV": 1.5,
}  # fmt: skip

# Measured ratio of deflate output to the random bits the filler draws (per-value overheads of
# byte-wise Huffman coding), so that the filler's compressed size meets its target.
FILLER_EFFICIENCY = 1.0


def chunk_branches(nano: NanoEvents, layout: Layout, rng: np.random.Generator) -> dict[str, np.ndarray | ak.Array]:
    """All branches of the layout for one chunk (collections as records of lists), in file
    order: physics where :func:`to_nanoaod` has it, filler elsewhere."""
    n = nano.n
    produced = {f"{c}_{k}" for c, (_, fields) in nano.collections.items() for k in fields} | set(nano.scalars)
    unknown = produced - set(layout.by_name)
    if unknown:
        raise ValueError(f"branches not in the NanoAOD layout {LAYOUT_PATH}: {sorted(unknown)}")
    # the filler's byte budget per event: the real file's bytes relative to its I/O branches
    io = []
    for name in IO_BRANCHES:
        coll, field = name.split("_", 1)
        io.append(nano.collections[coll][1][field])
    io_share = sum(layout.by_name[b].share for b in IO_BRANCHES)
    total_bytes = _compressed_bytes(io) / io_share

    def bits_for(spec: BranchSpec, values_per_event: float) -> float:
        if values_per_event <= 0:
            return 0.0
        return 8.0 * spec.share * total_bytes / n / values_per_event / FILLER_EFFICIENCY

    counts_of: dict[str, np.ndarray] = {}
    for coll, (counts, _) in nano.collections.items():
        counts_of[coll] = np.asarray(counts, dtype=np.int64)
    out: dict[str, np.ndarray | ak.Array] = {}
    for name, is_collection in layout.groups():
        if not is_collection:
            spec = layout.by_name[name]
            out[name] = (
                nano.scalars[name] if name in nano.scalars else filler_values(rng, spec.dtype, n, bits_for(spec, 1))
            )
            continue
        fields_spec = layout.collection_fields(name)
        if name in counts_of:
            counts = counts_of[name]
            have = nano.collections[name][1]
        elif name in FIXED_LENGTHS:
            counts, have = np.full(n, FIXED_LENGTHS[name], np.int64), {}
        else:
            counts, have = rng.poisson(FILLER_MULTIPLICITY.get(name, 1.0), n).astype(np.int64), {}
        total = int(counts.sum())
        per_event = total / n if n else 0.0
        offsets = ak.index.Index64(offsets_of(counts))
        contents: dict[str, ak.contents.Content] = {}
        for spec in fields_spec:
            values = (
                have[spec.field]
                if spec.field in have
                else filler_values(rng, spec.dtype, total, bits_for(spec, per_event))
            )
            if spec.field in have and np.asarray(values).dtype != spec.dtype:
                raise TypeError(f"{spec.name}: produced {np.asarray(values).dtype}, layout says {spec.typename}")
            contents[spec.field] = ak.contents.NumpyArray(np.asarray(values))
        if len(fields_spec) == 1 and not fields_spec[0].field:
            out[name] = ak.Array(ak.contents.ListOffsetArray(offsets, contents[""]))
        else:
            record = ak.contents.RecordArray(list(contents.values()), list(contents), length=total)
            out[name] = ak.Array(ak.contents.ListOffsetArray(offsets, record))
    return out


def branch_types(layout: Layout) -> dict[str, np.dtype | ak.types.Type]:
    """``mktree`` types in file order: records of lists for collections (uproot names their
    fields ``<collection>_<field>`` and writes the counter ``n<collection>``)."""
    types: dict[str, np.dtype | ak.types.Type] = {}
    for name, is_collection in layout.groups():
        if not is_collection:
            types[name] = layout.by_name[name].dtype
            continue
        fields_spec = layout.collection_fields(name)
        prim = [ak.types.NumpyType(ak.types.numpytype.dtype_to_primitive(s.dtype)) for s in fields_spec]
        if len(fields_spec) == 1 and not fields_spec[0].field:
            types[name] = ak.types.ListType(prim[0])
        else:
            types[name] = ak.types.ListType(ak.types.RecordType(prim, [s.field for s in fields_spec]))
    return types


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _counter_name(name: str) -> str:
    return "n" + name


def _field_name(collection: str, field: str) -> str:
    return f"{collection}_{field}"


def nanoaod_chunks(
    process: str,
    variation: str,
    n_events: int,
    seed: int,
    file_index: int = 0,
    events_per_basket: int = DEFAULT_EVENTS_PER_BASKET,
    mixture: DataMixture | None = None,
    layout: Layout | None = None,
) -> Iterator[dict[str, np.ndarray | ak.Array]]:
    """The chunks of one file as branch dictionaries (the events are the ntuple writer's)."""
    layout = layout if layout is not None else load_layout()
    run = DATA_RUN + file_index if process == DATA_PROCESS else MC_RUN
    first = file_index * EVENT_STRIDE + 1
    for chunk, size in enumerate(chunk_sizes(n_events, events_per_basket)):
        if process == DATA_PROCESS:
            if mixture is None:
                raise ValueError("the data sample needs a DataMixture")
            batch = generate_data_events(size, seed, mixture, file_index, chunk)
        else:
            batch = generate_events(process, variation, size, seed, file_index, chunk)
        rng = np.random.default_rng(seed_sequence(seed, process, variation, file_index, chunk, INPUT_FORMAT))
        nano = to_nanoaod(batch, rng, run, first)
        first += size
        yield chunk_branches(nano, layout, rng)


def generate_nanoaod_file(
    process: str,
    variation: str,
    n_events: int,
    seed: int,
    path: str | Path,
    *,
    file_index: int = 0,
    events_per_basket: int = DEFAULT_EVENTS_PER_BASKET,
    compression_level: int = 1,
    compressor: str = "isal",
    mixture: DataMixture | None = None,
) -> FileResult:
    """One NanoAOD file (TTree ``Events``) of ``n_events``, written atomically; the same
    arguments give the same bytes."""
    if n_events <= 0:
        raise ValueError(f"{path}: n_events must be positive, got {n_events}")
    if n_events > EVENT_STRIDE:
        raise ValueError(f"{path}: at most {EVENT_STRIDE} events per file (unique event numbers)")
    start, cpu_start = time.perf_counter(), time.process_time()
    layout = load_layout()
    key = f"{seed}/{process}/{variation}/{file_index}/{INPUT_FORMAT}"
    total = 0
    with (
        atomic_path(path) as tmp,
        open(tmp, "w+b") as sink,
        _reproducible_headers(),
        uproot.recreate(
            sink, compression=zlib_compression(compression_level, compressor), uuid_function=_uuid_function(key)
        ) as f,
    ):
        tree = f.mktree(TREE_NAME, branch_types(layout), counter_name=_counter_name, field_name=_field_name)
        for branches in nanoaod_chunks(
            process, variation, n_events, seed, file_index, events_per_basket, mixture, layout
        ):
            tree.extend(branches)
            total += len(branches["event"])
    make_readable(path)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    size = Path(path).stat().st_size
    log.debug("wrote %s: %d NanoAOD events, %.1f MB in %.1f s (%.1f s CPU)", path, total, size / 1e6, seconds, cpu)
    return FileResult(Path(path), process, variation, total, size, seconds, cpu)


__all__ = [
    "INPUT_FORMAT",
    "IO_BRANCHES",
    "LAYOUT_PATH",
    "NANOAOD_WRITER_VERSION",
    "TREE_NAME",
    "BranchSpec",
    "Layout",
    "NanoEvents",
    "branch_types",
    "chunk_branches",
    "generate_nanoaod_file",
    "genpart_chains",
    "load_layout",
    "nanoaod_chunks",
    "to_nanoaod",
]
