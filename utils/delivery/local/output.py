"""Writing transformed arrays: ROOT TTrees (via ``uproot`` ``mktree``, never RNTuple) and parquet.

Flat branches named ``<collection>_<field>`` whose jagged lengths agree are written as one
collection with a single int32 counter named as in the input: ``number<collection>`` (the 2015
ntuples) or ``n<collection>`` (NanoAOD), so a delivered file reads like an input file with fewer
branches and events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COUNTER_PREFIX = "number"
NANOAOD_COUNTER_PREFIX = "n"


def counter_prefix_of(branch_names: Any) -> str:
    """The collection-counter prefix of an input tree: ``number`` for the 2015 ntuples (their
    ``number<collection>`` counters), ``n`` for NanoAOD (``nJet`` beside ``Jet_pt``)."""
    names = set(branch_names)
    if any(n.startswith(COUNTER_PREFIX) for n in names):
        return COUNTER_PREFIX
    collections = {n.split("_", 1)[0] for n in names if "_" in n}
    return NANOAOD_COUNTER_PREFIX if any(NANOAOD_COUNTER_PREFIX + c in names for c in collections) else COUNTER_PREFIX


def _is_jagged(array: Any) -> bool:
    """A variable-length list of numbers per entry (whatever the layout: filtering adds indexes)."""
    import awkward as ak

    inner = array.type.content
    return isinstance(inner, ak.types.ListType) and isinstance(inner.content, ak.types.NumpyType)


def group_collections(array: Any) -> dict[str, Any]:
    """``{branch or collection: array}``: jagged ``<coll>_<field>`` columns of equal lengths are
    zipped into one record array per collection (uproot then writes ``<coll>_<field>`` branches
    with one ``number<coll>`` counter); everything else is passed through."""
    import awkward as ak
    import numpy as np

    groups: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {}
    for name in array.fields:
        column = array[name]
        if "_" in name and _is_jagged(column):
            collection, field = name.split("_", 1)
            groups.setdefault(collection, {})[field] = column
        else:
            out[name] = column
    for collection, fields in groups.items():
        columns = list(fields.values())
        counts = ak.num(columns[0], axis=1)
        if all(np.array_equal(ak.num(c, axis=1), counts) for c in columns[1:]) and collection not in out:
            out[collection] = ak.zip(fields, depth_limit=2)
        else:  # lengths disagree: keep them as separate branches with their own counters
            out.update({f"{collection}_{f}": c for f, c in fields.items()})
    return out


def _branch_types(columns: dict[str, Any]) -> dict[str, Any]:
    return {name: column.type.content for name, column in columns.items()}


def write_root(
    path: str | Path,
    trees: dict[str, Any],
    histograms: dict[str, Any] | None = None,
    counter_prefix: str = COUNTER_PREFIX,
) -> int:
    """Write each array of ``trees`` as a TTree (empty arrays give empty, fully typed trees) and
    copy ``histograms``; collections get ``<counter_prefix><collection>`` counters. Return the
    total number of entries written."""
    import uproot

    entries = 0
    with uproot.recreate(str(path)) as out:
        for tree_name, array in trees.items():
            columns = group_collections(array)
            tree = out.mktree(tree_name, _branch_types(columns), counter_name=lambda c: counter_prefix + c)
            if len(array):
                tree.extend(columns)
            entries += len(array)
        for name, obj in (histograms or {}).items():
            out[name] = obj
    return entries


def write_parquet(path: str | Path, array: Any) -> int:
    """Write ``array`` as parquet with the same column names as the ROOT output (``<coll>_<field>``
    lists plus ``number<coll>`` int32 counters). Return the number of rows."""
    import awkward as ak
    import numpy as np

    flat: dict[str, Any] = {}
    for name, column in group_collections(array).items():
        if column.fields and _is_jagged(column[column.fields[0]]):
            flat[COUNTER_PREFIX + name] = ak.values_astype(ak.num(column, axis=1), np.int32)
            flat.update({f"{name}_{f}": column[f] for f in column.fields})
        else:
            flat[name] = column
    ak.to_parquet(ak.zip(flat, depth_limit=1), str(path))
    return len(array)
