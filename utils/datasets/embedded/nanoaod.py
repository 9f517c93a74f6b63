"""The NanoAOD writer of the embedded dataset: the same generated physics as the ntuple writer,
written in the CMS NanoAOD layout of the AGC main line (TTree ``Events``, 947 branches).

The layout (names, types, in file order) and each branch's share of a real file's compressed
bytes come from ``datasets/embedded/nanoaod_layout.json`` (:mod:`.nanoaod_layout`). Per chunk:

- the analysis objects are converted from the generator's :class:`EventBatch` (the ntuple
  writer's events of the same seed): ``Jet_*`` (``btagCSVV2`` -10 where undefined, ``qgl`` -1,
  ``jetId`` in {0, 2, 6}, ``hadronFlavour``/``partonFlavour``/``genJetIdx``), ``Electron_*``
  (``cutBased`` 0-4, ``sip3d``), ``Muon_*`` (``tightId``, ``sip3d``, ``pfRelIso04_all``), ``MET_*``,
  ``GenJet_*`` and ``GenPart_*`` with decay chains (:mod:`.nanoaod_genpart`);
- ``run``/``luminosityBlock``/``event`` are unique within a sample (``event`` counts up from
  ``file index x 10^9 + 1``, so both parities occur); MC has run 1, data 260000 + file index;
- every other branch of the layout is filler: values of the branch's type drawn with as many
  random bits as make its compressed size the real file's share relative to the I/O branches,
  so the branches the analysis reads are about 5 % of a file's bytes, as in the real files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from utils.datasets.embedded.events import EventBatch, Jagged, offsets_of
from utils.datasets.embedded.generator import (
    DATA_PROCESS,
    DEFAULT_EVENTS_PER_BASKET,
    DataMixture,
    FileResult,
    _reproducible_headers,
    _uuid_function,
    file_batches,
    make_readable,
    preselection_counts,
    seed_sequence,
    zlib_compression,
)
from utils.datasets.embedded.nanoaod_genpart import genpart_chains
from utils.datasets.embedded.nanoaod_layout import (
    FILLER_MULTIPLICITY,
    FIXED_LENGTHS,
    LAYOUT_PATH,
    BranchSpec,
    Layout,
    branch_types,
    compressed_bytes,
    filler_values,
    load_layout,
)
from utils.datasets.embedded.particles import Origin
from utils.datasets.embedded.preselection import Preselection
from utils.io import atomic_path

log = logging.getLogger(__name__)

# Bump when a change alters the bytes of generated NanoAOD files (part of the dataset cache key).
NANOAOD_WRITER_VERSION = "1.0.0"
TREE_NAME = "Events"
INPUT_FORMAT = "nanoaod"

#: the branches of the I/O benchmark set; the filler is sized relative to their bytes
IO_BRANCHES = ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass", "Muon_pt", "Electron_pt")

MC_RUN = 1
DATA_RUN = 260_000
EVENTS_PER_LUMI = 1000
EVENT_STRIDE = 1_000_000_000  # event numbers of file i start at i * EVENT_STRIDE + 1


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
    total_bytes = compressed_bytes(io) / io_share

    def bits_for(spec: BranchSpec, values_per_event: float) -> float:
        if values_per_event <= 0:
            return 0.0
        return 8.0 * spec.share * total_bytes / n / values_per_event

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
    preselection: Preselection | None = None,
    yields: tuple[tuple[str, int], ...] | None = None,
    preselected: dict[str, list[int]] | None = None,
) -> Iterator[dict[str, np.ndarray | ak.Array]]:
    """The chunks of one file as branch dictionaries (the events are the ntuple writer's; for
    preselected data, ``preselected`` from :func:`preselection_counts` is filled as they come)."""
    layout = layout if layout is not None else load_layout()
    run = DATA_RUN + file_index if process == DATA_PROCESS else MC_RUN
    first = file_index * EVENT_STRIDE + 1
    if process == DATA_PROCESS and preselection is None and mixture is None:
        raise ValueError("the data sample needs a DataMixture")
    if preselection is not None and preselected is None:
        preselected = {}
    batches = file_batches(
        process, variation, n_events, seed, file_index, events_per_basket, mixture, preselection, yields, preselected
    )
    for chunk, batch in enumerate(batches):
        if batch.n == 0:
            continue
        rng = np.random.default_rng(seed_sequence(seed, process, variation, file_index, chunk, INPUT_FORMAT))
        nano = to_nanoaod(batch, rng, run, first)
        first += batch.n
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
    preselection: Preselection | None = None,
    yields: tuple[tuple[str, int], ...] | None = None,
) -> FileResult:
    """One NanoAOD file (TTree ``Events``) of ``n_events``, written atomically; the same
    arguments give the same bytes (preselected data: see :func:`generate_file`)."""
    preselected = preselection_counts(path, process, n_events, mixture, preselection, yields)
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
            process,
            variation,
            n_events,
            seed,
            file_index,
            events_per_basket,
            mixture,
            layout,
            preselection,
            yields,
            preselected,
        ):
            tree.extend(branches)
            total += len(branches["event"])
    make_readable(path)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    size = Path(path).stat().st_size
    log.debug("wrote %s: %d NanoAOD events, %.1f MB in %.1f s (%.1f s CPU)", path, total, size / 1e6, seconds, cpu)
    return FileResult(Path(path), process, variation, total, size, seconds, cpu, preselected)


__all__ = [
    "INPUT_FORMAT",
    "IO_BRANCHES",
    "NANOAOD_WRITER_VERSION",
    "TREE_NAME",
    "NanoEvents",
    "chunk_branches",
    "generate_nanoaod_file",
    "genpart_chains",
    "load_layout",
    "nanoaod_chunks",
    "to_nanoaod",
]
