"""FuncADL (qastle) queries of the local ``uproot`` code generator, translated without running code.

The qastle text is parsed into a tree (qastle's own parser: a grammar, no evaluation) and checked
against what FuncADL on flat ntuples needs: ``EventDataset(file, tree)``, ``Select``/``Where`` with
one-argument lambdas, attribute access of branch and record-field names, ``Zip`` of a dict,
``Count``/``Sum``/``Min``/``Max``/``First``, comparisons, arithmetic, ``and``/``or``/``not`` and the
math functions of :mod:`utils.delivery.local.expressions`. Anything else is refused with the
reason. :func:`run_func_adl` evaluates the checked tree on awkward arrays, vectorised over events.
"""

from __future__ import annotations

import ast
import functools
import operator
from typing import Any

from utils.delivery.local import expressions as ex
from utils.delivery.local.expressions import QueryError, check_identifier

OUTPUT_TREE = "servicex"
MAX_QASTLE_CHARS = 200_000
_SEQUENCE_CALLS = ("Select", "Where")
_AGGREGATES = ("Count", "Sum", "Min", "Max", "First")
_MATH = frozenset(ex.FUNCTION_NAMES) - frozenset(ex.REDUCERS)


def parse_qastle(text: Any) -> ast.AST:
    """The checked query tree of a qastle text; raise QueryError naming what is refused."""
    import qastle

    if not isinstance(text, str) or not text.strip():
        raise QueryError("func_adl selection must be a non-empty qastle text")
    if len(text) > MAX_QASTLE_CHARS:
        raise QueryError(f"func_adl selection is longer than {MAX_QASTLE_CHARS} characters")
    try:
        module = qastle.text_ast_to_python_ast(text)
    except RecursionError:
        raise QueryError("func_adl selection is nested too deeply") from None
    except Exception as err:  # lark raises many types for malformed text
        raise QueryError(f"func_adl selection is not valid qastle: {type(err).__name__}: {err}") from None
    if not isinstance(module, ast.Module) or len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
        raise QueryError("func_adl selection must be one query expression")
    query = module.body[0].value
    try:
        _check_sequence(query)
    except RecursionError:
        raise QueryError("func_adl selection is nested too deeply") from None
    return query


def _name(node: ast.AST) -> str:
    return type(node).__name__


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        func = node.func
        label = func.id if isinstance(func, ast.Name) else f".{func.attr}()" if isinstance(func, ast.Attribute) else ""
        return f"call of {label or _name(func)!r}"
    return _name(node)


def _refuse(node: ast.AST, where: str) -> QueryError:
    allowed = "EventDataset, Select, Where, Zip, Count, Sum, Min, Max, First, lambdas, branch attributes, operators"
    return QueryError(f"func_adl: {_describe(node)} is not allowed {where}; the local endpoint serves {allowed}")


def _check_sequence(node: ast.AST) -> None:
    """The event-level query: ``EventDataset(...)`` followed by Select/Where steps."""
    if _name(node) in _SEQUENCE_CALLS:
        _check_sequence(node.source)
        _check_lambda(_step_lambda(node), frozenset())
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "EventDataset":
        if node.keywords or not 1 <= len(node.args) <= 2:
            raise QueryError("func_adl: EventDataset takes a file name and a tree name")
        for arg in node.args:
            if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
                raise QueryError("func_adl: EventDataset arguments must be string constants")
        if len(node.args) < 2:
            raise QueryError("func_adl: EventDataset needs the tree name (EventDataset('bogus.root', 'events'))")
        return
    raise _refuse(node, "as the source of the query")


def _step_lambda(node: ast.AST) -> ast.Lambda:
    function = node.selector if _name(node) == "Select" else node.predicate
    if not isinstance(function, ast.Lambda):
        raise _refuse(function, f"as the argument of {_name(node)} (a lambda is needed)")
    return function


def _check_lambda(function: ast.Lambda, bound: frozenset[str]) -> None:
    args = function.args
    if args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg or args.defaults or len(args.args) != 1:
        raise QueryError("func_adl: lambdas take exactly one plain argument")
    _check_value(function.body, bound | {check_identifier(args.args[0].arg, "func_adl lambda argument")})


def _check_value(node: ast.AST, bound: frozenset[str]) -> None:
    """Check a value inside lambdas whose arguments are ``bound``."""
    kind = _name(node)
    if kind in _SEQUENCE_CALLS:
        _check_value(node.source, bound)
        _check_lambda(_step_lambda(node), bound)
    elif kind in _AGGREGATES or kind == "Zip":
        _check_value(node.source, bound)
    elif isinstance(node, ast.Attribute):
        check_identifier(node.attr, "func_adl attribute")
        _check_value(node.value, bound)
    elif isinstance(node, ast.Name):
        if node.id not in bound:
            raise QueryError(f"func_adl: name {node.id[:100]!r} is not a lambda argument")
    elif isinstance(node, ast.Constant):
        ex._number(node.value, "func_adl constant")
    elif isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if not isinstance(key, ast.Constant) or not isinstance(key.value, str):
                raise QueryError("func_adl: dict keys must be string constants")
            _check_value(value, bound)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _MATH or node.keywords:
            raise _refuse(node, "in a lambda")
        for arg in node.args:
            _check_value(arg, bound)
    elif isinstance(node, ast.BinOp) and type(node.op) in ex._BINARY:
        _check_value(node.left, bound)
        _check_value(node.right, bound)
    elif isinstance(node, ast.UnaryOp) and (type(node.op) in ex._UNARY or isinstance(node.op, ast.Not)):
        _check_value(node.operand, bound)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_value(value, bound)
    elif isinstance(node, ast.Compare) and all(type(op) in ex._COMPARE for op in node.ops):
        for value in (node.left, *node.comparators):
            _check_value(value, bound)
    else:
        raise _refuse(node, "in a lambda")


def _attributes(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def _dataset(node: ast.AST) -> ast.Call:
    while _name(node) in _SEQUENCE_CALLS:
        node = node.source
    return node


def run_func_adl(input_path: str, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({"servicex": awkward array}, {})`` of a checked qastle query on one input file."""
    import awkward as ak
    import uproot

    query = parse_qastle(text)
    tree_name = _dataset(query).args[1].value
    with uproot.open(input_path) as source:
        if tree_name not in source:
            raise QueryError(f"{input_path}: no tree {tree_name!r}")
        tree = source[tree_name]
        needed = sorted(_attributes(query) & set(tree.keys()))
        if not needed:
            raise QueryError(f"{input_path}:{tree_name}: the query reads no branch of the tree")
        events = ak.zip({name: tree[name].array(library="ak") for name in needed}, depth_limit=1)
    result = _Evaluator(f"{input_path}:{tree_name}").sequence(query, events)
    if isinstance(result, dict):
        result = ak.zip(result, depth_limit=1)
    if not isinstance(result, ak.Array) or not result.fields:
        result = ak.zip({"col1": result}, depth_limit=1)
    return {OUTPUT_TREE: result}, {}


class _Evaluator:
    """Walks a checked query; ``level`` is the list depth of the value a lambda receives."""

    def __init__(self, where: str):
        self.where = where
        self.table = ex.functions(True)

    def sequence(self, node: ast.AST, events: Any) -> Any:
        if _name(node) not in _SEQUENCE_CALLS:
            return events
        return self._step(node, self.sequence(node.source, events), {}, 0)

    def _step(self, node: ast.AST, source: Any, scope: dict[str, Any], level: int) -> Any:
        function = _step_lambda(node)
        bound = {**scope, function.args.args[0].arg: source}
        value = self.value(function.body, bound, level + 1)
        if _name(node) == "Where":
            return source[value]
        return value

    def value(self, node: ast.AST, scope: dict[str, Any], level: int) -> Any:
        import awkward as ak

        kind = _name(node)
        if kind in _SEQUENCE_CALLS:
            return self._step(node, self._array(self.value(node.source, scope, level)), scope, level)
        if kind == "Zip":
            source = self.value(node.source, scope, level)
            return ak.zip(source) if isinstance(source, dict) else source
        if kind in _AGGREGATES:
            if level == 0:
                raise QueryError(f"func_adl: {kind} of the event sequence is not served; use it inside a lambda")
            source = self._array(self.value(node.source, scope, level))
            reduce = {"Count": ak.num, "Sum": ak.sum, "Min": ak.min, "Max": ak.max, "First": ak.firsts}[kind]
            return reduce(source, axis=level)
        if isinstance(node, ast.Attribute):
            source = self.value(node.value, scope, level)
            if isinstance(source, dict):
                source = ak.zip(source, depth_limit=1)
            if not isinstance(source, ak.Array) or node.attr not in (source.fields or ()):
                raise QueryError(f"{self.where}: func_adl: no branch or field {node.attr!r}")
            return source[node.attr]
        if isinstance(node, ast.Name):
            if node.id not in scope:
                raise QueryError(f"func_adl: name {node.id!r} is not a lambda argument")
            return scope[node.id]
        if isinstance(node, ast.Constant):
            return ex._scalar(node.value)
        if isinstance(node, ast.Dict):
            return {k.value: self.value(v, scope, level) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.Call):
            return self.table[node.func.id](*(self.value(a, scope, level) for a in node.args))
        if isinstance(node, ast.BinOp):
            return ex._BINARY[type(node.op)](self.value(node.left, scope, level), self.value(node.right, scope, level))
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand, scope, level)
            return ~operand if isinstance(node.op, ast.Not) else ex._UNARY[type(node.op)](operand)
        if isinstance(node, ast.BoolOp):
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            return functools.reduce(combine, (self.value(v, scope, level) for v in node.values))
        if isinstance(node, ast.Compare):
            left, result = self.value(node.left, scope, level), None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.value(comparator, scope, level)
                term = ex._COMPARE[type(op)](left, right)
                result = term if result is None else result & term
                left = right
            return result
        raise _refuse(node, "in a lambda")  # unreachable after parse_qastle()

    @staticmethod
    def _array(value: Any) -> Any:
        import awkward as ak

        return ak.zip(value, depth_limit=1) if isinstance(value, dict) else value
