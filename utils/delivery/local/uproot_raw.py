"""Runtime of the local ``uproot-raw`` transformer: run the sub-queries of one request on one file.

Semantics follow the ServiceX uproot-raw code generator: each sub-query is either a tree query
(``treename``, ``filter_name``, ``filter_typename``, ``expressions``, ``cut``, ``aliases``) passed to
``uproot``'s ``arrays()``, or ``copy_histograms``. Awkward reductions in expressions act per event
(``axis=1``) unless ``use_standard_awkward_axis`` is true; missing trees are skipped unless
``fail_on_missing_trees`` is true. Expressions, cuts and aliases are the checked language of
:mod:`utils.delivery.local.expressions` (never handed to uproot's ``eval``-based language); branches
are read one by one with ``TBranch.array``.
"""

from __future__ import annotations

import ast
import logging
from typing import Any

from utils.delivery.local.expressions import QueryError, check_identifier, evaluate, functions, names, parse

log = logging.getLogger(__name__)

_TREE_KEYS = ("expressions", "cut", "filter_name", "filter_typename", "aliases")
_SUB_KEYS = frozenset(
    (*_TREE_KEYS, "treename", "copy_histograms", "use_standard_awkward_axis", "fail_on_missing_trees")
)


def _tree_map(treename: Any) -> dict[str, str]:
    if isinstance(treename, str):
        return {treename: treename}
    if isinstance(treename, list):
        return {t: t for t in treename}
    if isinstance(treename, dict):
        return dict(treename)
    raise QueryError(f"treename must be a string, list or mapping, got {type(treename).__name__}")


def _filter(value: Any, what: str) -> Any:
    if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise QueryError(f"{what} must be a string or a list of strings")


def _expressions(sub: dict, i: int) -> dict[str, Any]:
    """``{output name: checked expression}`` of a tree sub-query (empty: the filtered branches)."""
    expressions = sub.get("expressions")
    if expressions is None:
        return {}
    if isinstance(expressions, str):
        expressions = [expressions]
    if not isinstance(expressions, list) or not expressions:
        raise QueryError(f"sub-query {i}: 'expressions' must be a string or a non-empty list of strings")
    return {text: parse(text, f"sub-query {i} expression") for text in expressions}


def _aliases(sub: dict, i: int) -> dict[str, Any]:
    aliases = sub.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise QueryError(f"sub-query {i}: 'aliases' must be a mapping of name to expression")
    return {
        check_identifier(name, f"sub-query {i} alias"): parse(text, f"sub-query {i} alias {name!r}")
        for name, text in aliases.items()
    }


def validate_subqueries(query: Any) -> list[dict]:
    """Check the JSON of an uproot-raw request; raise ValueError (QueryError) with the reason."""
    if isinstance(query, dict):
        query = [query]
    if not isinstance(query, list) or not query:
        raise QueryError("uproot-raw selection must be a non-empty JSON list of sub-queries")
    for i, sub in enumerate(query):
        if not isinstance(sub, dict):
            raise QueryError(f"sub-query {i} is not a JSON object")
        unknown = sorted(set(sub) - _SUB_KEYS)
        if unknown:
            raise QueryError(f"sub-query {i}: unknown keys {unknown}; known: {sorted(_SUB_KEYS)}")
        if ("treename" in sub) == ("copy_histograms" in sub):
            raise QueryError(f"sub-query {i} needs exactly one of 'treename' or 'copy_histograms'")
        if "copy_histograms" in sub:
            _filter(sub["copy_histograms"], f"sub-query {i}: 'copy_histograms'")
            continue
        trees = _tree_map(sub["treename"])
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in trees.items()):
            raise QueryError(f"sub-query {i}: tree names must be strings")
        _filter(sub.get("filter_name"), f"sub-query {i}: 'filter_name'")
        _filter(sub.get("filter_typename"), f"sub-query {i}: 'filter_typename'")
        _expressions(sub, i)
        _aliases(sub, i)
        if sub.get("cut") is not None:
            parse(sub["cut"], f"sub-query {i} cut")
    return query


def _tree_arrays(tree: Any, sub: dict, i: int, where: str) -> Any:
    """The awkward array of one tree sub-query (what uproot's ``arrays()`` would give)."""
    import awkward as ak

    outputs = _expressions(sub, i)
    aliases = _aliases(sub, i)
    cut = parse(sub["cut"], f"sub-query {i} cut") if sub.get("cut") is not None else None
    branches = set(tree.keys())
    if not outputs:
        filters = {k: sub[k] for k in ("filter_name", "filter_typename") if sub.get(k) is not None}
        outputs = {name: ast.Name(id=name, ctx=ast.Load()) for name in tree.keys(**filters)}  # from the file
    needed: set[str] = set()
    pending = [*outputs.values(), *([cut] if cut is not None else [])]
    seen_aliases: set[str] = set()
    while pending:
        for name in names(pending.pop()):
            if name in aliases:
                if name not in seen_aliases:
                    seen_aliases.add(name)
                    pending.append(aliases[name])
            elif name in branches:
                needed.add(name)
            elif name not in ("pi", "e", "inf", "nan"):
                raise QueryError(f"{where}: sub-query {i}: {name!r} is not a branch of the tree nor an alias")
    scope = _Scope(
        {name: tree[name].array(library="ak") for name in sorted(needed)}, aliases, sub, f"{where}: sub-query {i}"
    )
    columns = {text: evaluate(node, scope, scope.table) for text, node in outputs.items()}
    result = ak.zip(columns, depth_limit=1) if columns else ak.Array([{}] * tree.num_entries)
    if cut is not None:
        result = result[evaluate(cut, scope, scope.table)]
    return result


class _Scope:
    """Branches by name; aliases computed on first use (a cycle is an error)."""

    def __init__(self, branches: dict[str, Any], aliases: dict[str, Any], sub: dict, where: str):
        self.values, self.aliases, self.where = dict(branches), aliases, where
        self.table = functions(bool(sub.get("use_standard_awkward_axis")))
        self._resolving: set[str] = set()

    def __contains__(self, name: object) -> bool:
        return name in self.values or name in self.aliases

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            if name in self._resolving:
                raise QueryError(f"{self.where}: alias {name!r} refers to itself")
            self._resolving.add(name)
            self.values[name] = evaluate(self.aliases[name], self, self.table)
            self._resolving.discard(name)
        return self.values[name]


def run_subqueries(input_path: str, query: list[dict]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``({output tree: awkward array}, {name: histogram object})`` for one input file."""
    import uproot

    trees: dict[str, Any] = {}
    histograms: dict[str, Any] = {}
    with uproot.open(input_path) as source:
        for i, sub in enumerate(validate_subqueries(query)):
            if "copy_histograms" in sub:
                for key in source.keys(filter_name=sub["copy_histograms"], cycle=False):
                    histograms[key] = source[key]
                continue
            for tree_name, out_name in _tree_map(sub["treename"]).items():
                if tree_name not in source:
                    if sub.get("fail_on_missing_trees"):
                        raise KeyError(f"{input_path}: no tree {tree_name!r}")
                    log.warning("%s: no tree %r, skipped", input_path, tree_name)
                    continue
                trees[out_name] = _tree_arrays(source[tree_name], sub, i, f"{input_path}:{tree_name}")
    return trees, histograms
