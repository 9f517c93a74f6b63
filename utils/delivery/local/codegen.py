"""Code generation of the local endpoint: turn a request's selection into Python source.

The source defines ``run_query(input_path)`` returning ``({tree: awkward array}, {name: object})``;
it is stored with the request (ServiceX's ``generated-code-cm``) and executed by the workers.
Generation happens when a request is submitted, so an invalid query is refused with HTTP 400.
"""

from __future__ import annotations

import json

from utils.delivery.local.uproot_raw import validate_subqueries

FUNC_ADL_OUTPUT_TREE = "servicex"

CODE_GENERATORS = {
    "uproot-raw": "agc-local/uproot-raw-transformer",
    "uproot": "agc-local/func-adl-uproot-transformer",
}
"""Code generators the local endpoint serves (name -> nominal image name)."""


class CodegenError(ValueError):
    """The selection cannot be turned into code; the message says why."""


def _uproot_raw(selection: str) -> str:
    try:
        query = validate_subqueries(json.loads(selection))
    except json.JSONDecodeError as err:
        raise CodegenError(f"uproot-raw selection is not valid JSON: {err}") from None
    except ValueError as err:
        raise CodegenError(f"uproot-raw selection: {err}") from None
    return (
        "import json\n"
        "from utils.delivery.local.uproot_raw import run_subqueries\n\n"
        f"QUERY = json.loads({json.dumps(query)!r})\n\n\n"
        "def run_query(input_path):\n"
        "    return run_subqueries(input_path, QUERY)\n"
    )


def _func_adl_uproot(selection: str) -> str:
    from func_adl_uproot import generate_python_source

    try:
        body = generate_python_source(selection, function_name="_func_adl_query")
    except Exception as err:  # qastle/func_adl raise many types for a malformed query
        raise CodegenError(f"func_adl (uproot) selection cannot be translated: {type(err).__name__}: {err}") from None
    return (
        body
        + "\n\n"
        + "def run_query(input_path):\n"
        + "    import dask\n"
        + "    import dask_awkward  # noqa: F401  (sets its defaults, which the next line overrides)\n"
        + "    # dask 2026 + dask-awkward 2025.3 cannot fuse func_adl_uproot's graphs; projection only\n"
        + "    with dask.config.set({'awkward.optimization.which': ['columns']}):\n"
        + "        result = _func_adl_query(input_path)\n"
        + "    import awkward as ak\n"
        + "    if not isinstance(result, ak.Array) or not result.fields:\n"
        + "        result = ak.zip({'col1': result}, depth_limit=1)\n"
        + f"    return {{{FUNC_ADL_OUTPUT_TREE!r}: result}}, {{}}\n"
    )


def generate_source(codegen: str, selection: str) -> str:
    """Python source for ``codegen`` (a key of :data:`CODE_GENERATORS`); raise CodegenError."""
    if codegen == "uproot-raw":
        return _uproot_raw(selection)
    if codegen == "uproot":
        return _func_adl_uproot(selection)
    raise CodegenError(f"code generator {codegen!r} is not served here; available: {sorted(CODE_GENERATORS)}")
