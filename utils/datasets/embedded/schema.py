"""The 2015 CMS "POET" ntuple layout that the generated files reproduce.

One TTree ``events``. Each collection has an int32 object counter ``number<name>`` (GenPart:
``numGenPart``; PV has none) and, as written by uproot in the real merged files, one int32
counter ``n<name>_<field>`` per jagged branch. Branch order follows the real files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

TREE_NAME = "events"

F4, F8, I4, B1 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.bool_)

_MOMENTUM = ("e", "pt", "px", "py", "pz", "eta", "phi")


@dataclass(frozen=True)
class Collection:
    """One object collection: its jagged fields and the per-event scalars that belong to it."""

    name: str
    counter: str | None  # the ``number<name>`` branch, None where the real files have none
    fields: tuple[tuple[str, np.dtype], ...]
    scalars: tuple[tuple[str, np.dtype], ...] = ()
    jagged: bool = True

    def branch(self, field: str) -> str:
        return f"{self.name}_{field}"

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.fields)


def _f4(*names: str) -> tuple[tuple[str, np.dtype], ...]:
    return tuple((n, F4) for n in names)


def _typed(dtype: np.dtype, *names: str) -> tuple[tuple[str, np.dtype], ...]:
    return tuple((n, dtype) for n in names)


COLLECTIONS: tuple[Collection, ...] = (
    Collection(
        "electron",
        "numberelectron",
        _f4(*_MOMENTUM, "ch", "iso")
        + _typed(B1, "isLoose", "isMedium", "isTight")
        + _f4("dxy", "dz", "dxyError", "dzError"),
    ),
    Collection(
        "GenPart",
        "numGenPart",
        _f4("pt", "eta", "mass") + _typed(I4, "pdgId") + _f4("phi", "px", "py", "pz") + _typed(I4, "status"),
    ),
    Collection(
        "jet",
        "numberjet",
        _f4(*_MOMENTUM, "ch", "mass") + _typed(F8, "btag") + _f4("pt_uncorr"),
    ),
    Collection(
        "met",
        None,
        (),
        scalars=_f4("e", "pt", "px", "py", "phi", "significance", "rawpt", "rawphi", "rawe"),
        jagged=False,
    ),
    Collection(
        "muon",
        "numbermuon",
        _f4(*_MOMENTUM, "ch")
        + _typed(I4, "isSoft", "isTight")
        + _f4("dxy", "dz", "dxyError", "dzError", "pfreliso03all", "pfreliso04all", "jetidx", "genpartidx"),
    ),
    Collection(
        "photon",
        "numberphoton",
        _f4(*_MOMENTUM, "ch", "chIso", "nhIso", "phIso") + _typed(B1, "isLoose", "isMedium", "isTight"),
    ),
    Collection(
        "PV",
        None,
        _f4("chi2", "ndof", "x", "y", "z"),
        scalars=_typed(I4, "npvs", "npvsGood"),
    ),
    Collection(
        "tau",
        "numbertau",
        _f4(
            *_MOMENTUM,
            "ch",
            "mass",
            "decaymode",
            "iddecaymode",
            "idisoraw",
            "idisovloose",
            "idisoloose",
            "idisomedium",
            "idisotight",
            "idantieletight",
            "idantimutight",
        ),
    ),
    Collection("trigobj", "numbertrigobj", _f4(*_MOMENTUM)),
)

COLLECTION_BY_NAME: dict[str, Collection] = {c.name: c for c in COLLECTIONS}

# The branches the analysis reads (its byte share of a file is a property the generator tunes).
ANALYSIS_BRANCHES: tuple[str, ...] = (
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_e",
    "jet_btag",
    "electron_pt",
    "muon_pt",
)


def counter_name(branch: str) -> str:
    """uproot-style per-branch counter: ``jet_pt`` -> ``njet_pt`` (as in the real files)."""
    return "n" + branch


def _uproot_type(dtype: np.dtype, jagged: bool) -> np.dtype | ak.types.Type:
    # type objects, not strings: uproot would run awkward's datashape parser once per branch
    return ak.types.ListType(ak.types.NumpyType(ak.types.numpytype.dtype_to_primitive(dtype))) if jagged else dtype


def branch_types() -> dict[str, np.dtype | ak.types.Type]:
    """``{branch: type}`` in file order, for ``WritableDirectory.mktree``.

    The per-branch counters are not listed: uproot inserts them via ``counter_name``.
    PV's scalars sit between its ``ndof`` and ``x`` fields, as in the real files.
    """
    types: dict[str, Any] = {}
    for coll in COLLECTIONS:
        if coll.counter is not None:
            types[coll.counter] = I4
        jagged = [(coll.branch(f), _uproot_type(dt, True)) for f, dt in coll.fields]
        scalars = [(coll.branch(f), _uproot_type(dt, False)) for f, dt in coll.scalars]
        split = 2 if coll.name == "PV" else len(jagged)
        for name, typ in jagged[:split] + scalars + jagged[split:]:
            types[name] = typ
    return types


def expected_dtypes() -> dict[str, np.dtype]:
    """Every branch of a generated file (counters included) and its numpy dtype."""
    out: dict[str, np.dtype] = {}
    for coll in COLLECTIONS:
        if coll.counter is not None:
            out[coll.counter] = I4
        for f, dt in coll.fields:
            out[coll.branch(f)] = dt
            out[counter_name(coll.branch(f))] = I4
        for f, dt in coll.scalars:
            out[coll.branch(f)] = dt
    return out
