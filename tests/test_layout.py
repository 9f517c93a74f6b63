"""The shape of the codebase: stage packages, one-way imports, no import circle, small modules,
every click command under utils/cli/."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parents[1] / "utils"
STAGES = ("datasets", "delivery", "processing", "histograms", "ml", "inference", "preservation")
ABOVE_STAGES = ("run", "benchmark", "cli")
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = ["utils", *path.relative_to(UTILS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(UTILS.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The utils module an imported name refers to (a submodule, or the module defining it)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every utils module ``module`` imports, at module level or inside functions."""
    tree = ast.parse(modules()[module].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name == "utils" or name.startswith("utils."):
                target = _resolve(name)
                if target and target != module:
                    out.add(target)
    return frozenset(out)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and modules()[module].name == "__init__.py") else ""


def test_the_stage_packages_exist():
    for pkg in (*STAGES, *ABOVE_STAGES, "schemas"):
        assert (UTILS / pkg).is_dir(), pkg
    flat = sorted(p.name for p in UTILS.glob("*.py"))
    assert flat == ["__init__.py", "config.py", "errors.py", "io.py", "runinfo.py"]


def test_no_import_circle():
    graph = {m: imports_of(m) for m in modules()}
    # a package's __init__ importing its own submodules is not a circle through the package
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if m.startswith(n + ".") or n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                cycles.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("stage", STAGES)
def test_stages_never_import_the_layers_above(stage):
    bad = {
        m: sorted(n for n in imports_of(m) if package_of(n) in ABOVE_STAGES)
        for m in modules()
        if package_of(m) == stage
    }
    assert not {m: v for m, v in bad.items() if v}


def test_nothing_imports_cli():
    bad = {m: sorted(n for n in imports_of(m) if package_of(n) == "cli") for m in modules() if package_of(m) != "cli"}
    assert not {m: v for m, v in bad.items() if v}


def test_modules_are_small():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_every_click_command_is_under_cli():
    outside = []
    for m, p in modules().items():
        if package_of(m) == "cli":
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    text = ast.unparse(target)
                    if text.startswith("click.") and text.split(".")[-1] in ("command", "group"):
                        outside.append(f"{m}.{node.name}")
        assert "import click" not in p.read_text(), f"{m} imports click; commands belong in utils/cli/"
    assert not outside


def test_preservation_fits_through_inference():
    """One inference layer: preservation never calls pyhf's or cabinetry's fitting directly."""
    for m, p in modules().items():
        if package_of(m) != "preservation":
            continue
        text = p.read_text()
        for call in ("pyhf.infer", "pyhf.set_backend", "cabinetry.fit"):
            assert call not in text, f"{m} calls {call}; use utils.inference"


def test_test_modules_have_unique_names():
    """tests/ has no packages, so pytest imports test modules by their base name: two
    ``test_figures.py`` in different folders cannot both be collected in one run."""
    tests = Path(__file__).resolve().parent
    names: dict[str, list[str]] = {}
    for p in sorted(tests.rglob("test_*.py")):
        names.setdefault(p.name, []).append(str(p.relative_to(tests)))
    assert not {n: ps for n, ps in names.items() if len(ps) > 1}
