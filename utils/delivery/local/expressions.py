"""The expression language of the local endpoint's queries: parsed and checked, never run as Python.

A request's cuts, expressions and aliases are parsed with :mod:`ast` and checked against a
whitelist of node types, operators and function names (:func:`parse`) before anything runs; names
must be branches of the input tree or aliases, which is checked against the file
(:func:`check_names`). :func:`evaluate` then walks the checked tree, computing with awkward arrays
and numpy scalars: no ``eval``, ``exec`` or attribute access exists in this language.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

MAX_EXPRESSION_CHARS = 20_000
MAX_NODES = 5_000


class QueryError(ValueError):
    """A query uses something the local endpoint does not serve; the message says what."""


# numpy functions by the names uproot's expression language gives them
_NUMPY = {
    **{n: n for n in ("absolute", "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2", "arctanh")},
    **{n: n for n in ("cbrt", "ceil", "conj", "conjugate", "copysign", "cos", "cosh", "exp", "exp2", "expm1")},
    **{n: n for n in ("fabs", "floor", "fmax", "fmin", "hypot", "imag", "isfinite", "isinf", "isnan", "log")},
    **{n: n for n in ("log10", "log1p", "log2", "logical_and", "logical_or", "logical_not", "nextafter", "real")},
    **{n: n for n in ("rint", "round", "signbit", "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "sign")},
    "abs": "absolute",
    "acos": "arccos",
    "acosh": "arccosh",
    "asin": "arcsin",
    "asinh": "arcsinh",
    "atan": "arctan",
    "atan2": "arctan2",
    "atanh": "arctanh",
    "neg": "negative",
}
# awkward functions with an ``axis`` argument that ServiceX's uproot-raw defaults to per event
REDUCERS = (
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
_AWKWARD = ("where", "flatten", "is_none", "drop_none", "pad_none", "fill_none", "isclose", "concatenate")
FUNCTION_NAMES = frozenset(_NUMPY) | frozenset(REDUCERS) | frozenset(_AWKWARD)
_KEYWORDS = frozenset(("axis", "keepdims", "mask_identity", "ascending", "clip", "target", "value"))
CONSTANTS = {"pi": 3.141592653589793, "e": 2.718281828459045, "inf": float("inf"), "nan": float("nan")}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def check_identifier(name: str, what: str) -> str:
    """``name`` as a plain identifier, never a dunder or private name."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise QueryError(f"{what} {name!r} is not allowed (plain names only, none starting with '_')")
    return name


def _number(value: Any, text: str) -> Any:
    if isinstance(value, (bool, float)):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    raise QueryError(f"{text!r}: constant {value!r} is not allowed (numbers and True/False only)")


def _check(node: ast.AST, text: str, calls: bool = True) -> None:
    """Raise QueryError unless every node of ``node`` is whitelisted."""
    if isinstance(node, ast.Constant):
        _number(node.value, text)
    elif isinstance(node, ast.Name):
        check_identifier(node.id, "name")
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.UnaryOp) and (type(node.op) in _UNARY or isinstance(node.op, ast.Not)):
        _check(node.operand, text)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        for value in (node.left, *node.comparators):
            _check(value, text)
    elif isinstance(node, ast.Call) and calls:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTION_NAMES:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise QueryError(
                f"{text[:200]!r}: function {what[:200]!r} is not allowed (only named math and awkward "
                "functions: sqrt, abs, where, count_nonzero, sum, max, ...)"
            )
        for arg in node.args:
            _check(arg, text)
        for kw in node.keywords:
            if kw.arg not in _KEYWORDS:
                raise QueryError(f"{text!r}: keyword argument {kw.arg!r} is not allowed; allowed: {sorted(_KEYWORDS)}")
            value = kw.value
            if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
                value = value.operand
            if not isinstance(value, ast.Constant) or (value.value is not None and not isinstance(value.value, int)):
                raise QueryError(f"{text!r}: keyword {kw.arg!r} takes an integer, True/False or None")
    elif isinstance(node, ast.Subscript):
        _check(node.value, text)
        _check_index(node.slice, text)
    else:
        raise QueryError(
            f"{text[:200]!r}: {type(node).__name__} ({ast.unparse(node)[:200]!r}) is not allowed in an expression"
        )


def _check_index(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.Slice):
        for part in (node.lower, node.upper, node.step):
            if part is not None:
                _check(part, text)
    elif isinstance(node, ast.Tuple):
        for element in node.elts:
            _check_index(element, text)
    else:
        _check(node, text)


def parse(text: Any, what: str = "expression") -> ast.expr:
    """Parse and check one expression; raise QueryError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError(f"{what} must be a non-empty string, got {text!r}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise QueryError(f"{what} is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise QueryError(f"{what} {text!r} is not a valid expression: {err}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise QueryError(f"{what} has more than {MAX_NODES} parts")
    try:
        _check(tree.body, text)
    except RecursionError:
        raise QueryError(f"{what} is nested too deeply") from None
    return tree.body


def names(node: ast.AST) -> set[str]:
    """The variable names an expression reads (not the function names it calls)."""
    called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in called}


@functools.lru_cache(maxsize=2)
def functions(standard_axis: bool) -> dict[str, Callable]:
    """The callables behind :data:`FUNCTION_NAMES` (reducers per event unless ``standard_axis``)."""
    import awkward as ak
    import numpy as np

    table: dict[str, Callable] = {name: getattr(np, target) for name, target in _NUMPY.items()}
    for name in _AWKWARD:
        table[name] = getattr(ak, name)
    for name in REDUCERS:
        table[name] = getattr(ak, name) if standard_axis else _per_event(getattr(ak, name))
    return table


def _per_event(function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        kwargs.setdefault("axis", 1)
        return function(*args, **kwargs)

    return wrapped


def _scalar(value: Any) -> Any:
    """Constants as numpy scalars: ``10**10**10`` overflows like an array would, never hangs."""
    import numpy as np

    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    return np.float64(value)


def evaluate(node: ast.AST, scope: Mapping[str, Any], table: Mapping[str, Callable]) -> Any:
    """Value of a checked expression; names are looked up in ``scope`` (branches, aliases)."""
    if isinstance(node, ast.Constant):
        return _scalar(node.value)
    if isinstance(node, ast.Name):
        if node.id in scope:
            return scope[node.id]
        if node.id in CONSTANTS:
            return _scalar(CONSTANTS[node.id])
        raise QueryError(f"name {node.id!r} is neither a branch nor an alias")
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](evaluate(node.left, scope, table), evaluate(node.right, scope, table))
    if isinstance(node, ast.UnaryOp):
        operand = evaluate(node.operand, scope, table)
        return ~operand if isinstance(node.op, ast.Not) else _UNARY[type(node.op)](operand)
    if isinstance(node, ast.BoolOp):
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        return functools.reduce(combine, (evaluate(v, scope, table) for v in node.values))
    if isinstance(node, ast.Compare):
        left, result = evaluate(node.left, scope, table), None
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = evaluate(comparator, scope, table)
            term = _COMPARE[type(op)](left, right)
            result = term if result is None else result & term
            left = right
        return result
    if isinstance(node, ast.Call):
        args = [evaluate(a, scope, table) for a in node.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        return table[node.func.id](*args, **kwargs)
    if isinstance(node, ast.Subscript):
        return evaluate(node.value, scope, table)[_index(node.slice, scope, table)]
    raise QueryError(f"{type(node).__name__} is not allowed in an expression")  # unreachable after parse()


def _index(node: ast.AST, scope: Mapping[str, Any], table: Mapping[str, Callable]) -> Any:
    if isinstance(node, ast.Slice):
        parts = (None if p is None else int(evaluate(p, scope, table)) for p in (node.lower, node.upper, node.step))
        return slice(*parts)
    if isinstance(node, ast.Tuple):
        return tuple(_index(e, scope, table) for e in node.elts)
    value = evaluate(node, scope, table)
    return int(value) if isinstance(node, ast.Constant) else value
