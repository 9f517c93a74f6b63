"""The branch layout of the embedded NanoAOD (``datasets/embedded/nanoaod_layout.json``: names,
types and byte shares of the real files' 947 branches) and the filler of the branches the
generator has no physics for."""

from __future__ import annotations

import functools
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

from utils.config import REPO_ROOT
from utils.errors import ConfigError

LAYOUT_PATH = REPO_ROOT / "datasets" / "embedded" / "nanoaod_layout.json"

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


def compressed_bytes(arrays: list[np.ndarray]) -> int:
    return sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 1)) for a in arrays)


#: lengths of the per-event weight lists (as in the real files)
FIXED_LENGTHS = {"LHEPdfWeight": 102, "LHEScaleWeight": 9, "PSWeight": 1, "LHEReweightingWeight": 0}
#: mean multiplicities of the filler collections in ttbar events (Poisson)
FILLER_MULTIPLICITY = {
    "CorrT1METJet": 4.0, "FatJet": 0.6, "FsrPhoton": 0.05, "GenJetAK8": 1.2, "GenVisTau": 0.2,
    "LHEPart": 8.0, "Photon": 1.0, "GenDressedLepton": 1.0, "GenIsolatedPhoton": 0.1,
    "SoftActivityJet": 6.0, "Tau": 1.0, "OtherPV": 3.0, "SV": 1.5,
}  # fmt: skip


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
