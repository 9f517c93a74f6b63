"""In-memory event batches in the ntuple layout: flat arrays plus per-event counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import awkward as ak
import numpy as np

from utils.datasets.embedded.schema import COLLECTIONS


def offsets_of(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def jagged_take_index(counts: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new counts, flat gather index) selecting events ``index`` of a jagged layout."""
    offsets = offsets_of(counts)
    new_counts = counts[index]
    new_offsets = offsets_of(new_counts)
    flat = np.repeat(offsets[:-1][index] - new_offsets[:-1], new_counts) + np.arange(new_offsets[-1])
    return new_counts, flat


@dataclass
class Jagged:
    """One collection: int32 counts per event, flat field arrays (written) and flat truth arrays
    (generator information kept beside the objects, never written)."""

    counts: np.ndarray
    fields: dict[str, np.ndarray]
    truth: dict[str, np.ndarray] = field(default_factory=dict)

    def take(self, index: np.ndarray) -> Jagged:
        counts, flat = jagged_take_index(self.counts, index)
        return Jagged(
            counts.astype(np.int32),
            {k: v[flat] for k, v in self.fields.items()},
            {k: v[flat] for k, v in self.truth.items()},
        )

    @classmethod
    def concatenate(cls, parts: list[Jagged]) -> Jagged:
        return cls(
            np.concatenate([p.counts for p in parts]).astype(np.int32),
            {k: np.concatenate([p.fields[k] for p in parts]) for k in parts[0].fields},
            {
                k: np.concatenate([p.truth[k] for p in parts])
                for k in parts[0].truth
                if all(k in p.truth for p in parts)
            },
        )

    def to_awkward(self, values: np.ndarray) -> ak.Array:
        layout = ak.contents.ListOffsetArray(ak.index.Index64(offsets_of(self.counts)), ak.contents.NumpyArray(values))
        return ak.Array(layout)


@dataclass
class EventBatch:
    """``n`` events: collections by name (electron, GenPart, jet, muon, photon, PV, tau, trigobj)
    and per-event scalars by branch name (met_*, PV_npvs, PV_npvsGood)."""

    n: int
    collections: dict[str, Jagged]
    scalars: dict[str, np.ndarray]
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # per-event truth (e.g. process id)

    def take(self, index: np.ndarray) -> EventBatch:
        index = np.asarray(index)
        return EventBatch(
            len(index),
            {k: c.take(index) for k, c in self.collections.items()},
            {k: v[index] for k, v in self.scalars.items()},
            {k: v[index] for k, v in self.meta.items()},
        )

    @classmethod
    def concatenate(cls, parts: list[EventBatch]) -> EventBatch:
        meta_keys = [k for k in parts[0].meta if all(k in p.meta for p in parts)]
        return cls(
            sum(p.n for p in parts),
            {k: Jagged.concatenate([p.collections[k] for p in parts]) for k in parts[0].collections},
            {k: np.concatenate([p.scalars[k] for p in parts]) for k in parts[0].scalars},
            {k: np.concatenate([p.meta[k] for p in parts]) for k in meta_keys},
        )

    def branches(self) -> dict[str, np.ndarray | ak.Array]:
        """Branch name -> array, in file order, without the per-branch counters (uproot adds them)."""
        out: dict[str, np.ndarray | ak.Array] = {}
        for coll in COLLECTIONS:
            data = self.collections.get(coll.name)  # None for a collection of event scalars only (MET)
            if data is None and (coll.counter is not None or coll.fields):
                raise ValueError(f"event batch lacks the {coll.name!r} collection")
            if data is not None:
                if coll.counter is not None:
                    out[coll.counter] = data.counts.astype(np.int32)
                for f, dtype in coll.fields:
                    out[coll.branch(f)] = data.to_awkward(data.fields[f].astype(dtype, copy=False))
            for f, dtype in coll.scalars:
                out[coll.branch(f)] = self.scalars[coll.branch(f)].astype(dtype, copy=False)
        return out

    def truth_array(self, collection: str, name: str) -> ak.Array:
        data = self.collections[collection]
        return data.to_awkward(data.truth[name])


def empty_jagged(n: int, names: Mapping[str, np.dtype]) -> Jagged:
    return Jagged(np.zeros(n, np.int32), {k: np.zeros(0, dtype=dt) for k, dt in names.items()})
