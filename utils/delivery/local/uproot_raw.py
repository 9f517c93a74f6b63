"""Runtime of the local ``uproot-raw`` transformer: run the sub-queries of one request on one file.

Semantics follow the ServiceX uproot-raw code generator: each sub-query is either a tree query
(``treename``, ``filter_name``, ``filter_typename``, ``expressions``, ``cut``, ``aliases``) passed to
``uproot``'s ``arrays()``, or ``copy_histograms``. Awkward reductions in expressions act per event
(``axis=1``) unless ``use_standard_awkward_axis`` is true; missing trees are skipped unless
``fail_on_missing_trees`` is true.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

# awkward functions with an ``axis`` argument that ServiceX defaults to per-event reductions
_REDUCERS = (
    "num",
    "count",
    "count_nonzero",
    "sum",
    "nansum",
    "prod",
    "nanprod",
    "any",
    "all",
    "min",
    "nanmin",
    "max",
    "nanmax",
    "argmin",
    "nanargmin",
    "argmax",
    "nanargmax",
    "mean",
    "nanmean",
    "var",
    "nanvar",
    "std",
    "nanstd",
    "sort",
    "argsort",
    "firsts",
    "singletons",
)
_PASS_THROUGH = (
    "concatenate",
    "where",
    "flatten",
    "moment",
    "softmax",
    "mask",
    "is_none",
    "drop_none",
    "pad_none",
    "fill_none",
    "broadcast_arrays",
    "broadcast_fields",
    "cartesian",
    "argcartesian",
    "combinations",
    "argcombinations",
    "isclose",
    "almost_equal",
)
_TREE_KEYS = ("expressions", "cut", "filter_name", "filter_typename", "aliases")


def _per_event(function):
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        kwargs.setdefault("axis", 1)
        return function(*args, **kwargs)

    return wrapped


@functools.lru_cache(maxsize=2)
def _language(standard_axis: bool):
    import awkward as ak
    import uproot

    functions = dict(uproot.language.python.PythonLanguage.default_functions)
    for name in _PASS_THROUGH:
        functions[name] = getattr(ak, name)
    for name in _REDUCERS:
        functions[name] = getattr(ak, name) if standard_axis else _per_event(getattr(ak, name))
    return uproot.language.python.PythonLanguage(functions=functions)


def _tree_map(treename: Any) -> dict[str, str]:
    if isinstance(treename, str):
        return {treename: treename}
    if isinstance(treename, list):
        return {t: t for t in treename}
    if isinstance(treename, dict):
        return dict(treename)
    raise ValueError(f"treename must be a string, list or mapping, got {type(treename).__name__}")


def validate_subqueries(query: Any) -> list[dict]:
    """Check the JSON of an uproot-raw request; raise ValueError with the reason."""
    if isinstance(query, dict):
        query = [query]
    if not isinstance(query, list) or not query:
        raise ValueError("uproot-raw selection must be a non-empty JSON list of sub-queries")
    for i, sub in enumerate(query):
        if not isinstance(sub, dict):
            raise ValueError(f"sub-query {i} is not a JSON object")
        if ("treename" in sub) == ("copy_histograms" in sub):
            raise ValueError(f"sub-query {i} needs exactly one of 'treename' or 'copy_histograms'")
        if "treename" in sub:
            _tree_map(sub["treename"])
            if sub.get("cut") is not None and not isinstance(sub["cut"], str):
                raise ValueError(f"sub-query {i}: 'cut' must be a string")
    return query


def run_subqueries(input_path: str, query: list[dict]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``({output tree: awkward array}, {name: histogram object})`` for one input file."""
    import uproot

    trees: dict[str, Any] = {}
    histograms: dict[str, Any] = {}
    with uproot.open(input_path) as source:
        for sub in validate_subqueries(query):
            if "copy_histograms" in sub:
                for key in source.keys(filter_name=sub["copy_histograms"], cycle=False):
                    histograms[key] = source[key]
                continue
            args = {k: sub.get(k) for k in _TREE_KEYS if sub.get(k) is not None}
            language = _language(bool(sub.get("use_standard_awkward_axis")))
            for tree_name, out_name in _tree_map(sub["treename"]).items():
                if tree_name not in source:
                    if sub.get("fail_on_missing_trees"):
                        raise KeyError(f"{input_path}: no tree {tree_name!r}")
                    log.warning("%s: no tree %r, skipped", input_path, tree_name)
                    continue
                trees[out_name] = source[tree_name].arrays(language=language, **args)
    return trees, histograms
