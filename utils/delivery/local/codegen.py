"""Code generation of the local endpoint: check a request's selection and describe what will run.

No Python source is generated and nothing from a request is ever executed: ``uproot-raw``
selections are checked by :mod:`utils.delivery.local.uproot_raw` and FuncADL (qastle) ones by
:mod:`utils.delivery.local.funcadl`, when a request is submitted (an invalid query is refused with
HTTP 400) and again in the worker, which interprets the checked query (:func:`run_query`).
The stored "generated code" (ServiceX's ``generated-code-cm``) is the checked query as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from utils.delivery.local.expressions import QueryError
from utils.delivery.local.funcadl import OUTPUT_TREE, parse_qastle, run_func_adl
from utils.delivery.local.uproot_raw import run_subqueries, validate_subqueries

FUNC_ADL_OUTPUT_TREE = OUTPUT_TREE

CODE_GENERATORS = {
    "uproot-raw": "agc-local/uproot-raw-transformer",
    "uproot": "agc-local/func-adl-uproot-transformer",
}
"""Code generators the local endpoint serves (name -> nominal image name)."""


class CodegenError(ValueError):
    """The selection cannot be served; the message says why."""


def _uproot_raw_query(selection: str) -> list[dict]:
    try:
        return validate_subqueries(json.loads(selection))
    except json.JSONDecodeError as err:
        raise CodegenError(f"uproot-raw selection is not valid JSON: {err}") from None
    except (QueryError, RecursionError) as err:
        raise CodegenError(f"uproot-raw selection: {err}") from None


def generate_source(codegen: str, selection: str) -> str:
    """The checked query of ``codegen`` (a key of :data:`CODE_GENERATORS`) as JSON; raise CodegenError."""
    if codegen == "uproot-raw":
        return json.dumps({"codegen": codegen, "query": _uproot_raw_query(selection)})
    if codegen == "uproot":
        try:
            parse_qastle(selection)
        except QueryError as err:
            raise CodegenError(str(err)) from None
        return json.dumps({"codegen": codegen, "qastle": selection})
    raise CodegenError(f"code generator {codegen!r} is not served here; available: {sorted(CODE_GENERATORS)}")


def run_query(codegen: str, selection: str, input_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({tree: awkward array}, {name: histogram})`` of a request's selection on one input file."""
    if codegen == "uproot-raw":
        return run_subqueries(input_path, _uproot_raw_query(selection))
    if codegen == "uproot":
        return run_func_adl(input_path, selection)
    raise CodegenError(f"code generator {codegen!r} is not served here; available: {sorted(CODE_GENERATORS)}")
