"""Benchmark grids: a YAML file of notebook parameters, validated, expanded into points."""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import load_schema, read_yaml, validate_against_schema
from utils.errors import ConfigError
from utils.run.parameters import RunParameters

log = logging.getLogger(__name__)

RUNNER_DEFAULTS: dict[str, Any] = {"RUN_FIT": False, "RUN_RANKING": False}
SET_BY_RUNNER = ("OUTPUT_DIR",)
# keys that do not change which files are read or how: an I/O-only point is the reference of
# every processing point that agrees with it on all other keys (the fused and the reference-style
# processor, with and without the jet-parton assignment alike)
IO_INDEPENDENT_KEYS = ("DISABLE_PROCESSING", "IO_FILE_PERCENT", "USE_ML", "SYSTEMATICS", "RUN_FIT", "RUN_RANKING",
                       "PROCESSOR", "USE_JET_ASSIGNMENT")  # fmt: skip
EXECUTOR_KEYS = ("USE_DASK", "EXECUTOR")


# --- grid ---------------------------------------------------------------------------------------------


def _grid_schema() -> dict[str, Any]:
    schema = load_schema("benchmark_grid")
    values = schema["$defs"]["values"]
    schema["$defs"]["parameters"] = {"type": "object", "additionalProperties": False, "properties": values}
    schema["$defs"]["grid"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: {"type": "array", "minItems": 1, "uniqueItems": True, "items": v} for k, v in values.items()},
    }
    return schema


def grid_parameter_names() -> tuple[str, ...]:
    """The notebook parameters a grid may set."""
    return tuple(load_schema("benchmark_grid")["$defs"]["values"])


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: ``varied`` are its grid values, ``parameters`` what papermill gets."""

    index: int
    varied: dict[str, Any]
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        parts = [f"{k.lower()}={_fmt_value(v)}" for k, v in self.varied.items()] or ["base"]
        return re.sub(r"[^A-Za-z0-9=._-]+", "_", f"{self.index:02d}-" + "-".join(parts))


def _fmt_value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) or v is None else str(v)


@dataclass(frozen=True)
class BenchmarkGrid:
    name: str
    source: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    repeat: int = 1
    description: str = ""
    exclude: tuple[dict[str, Any], ...] = ()

    def points(self) -> list[GridPoint]:
        """The cartesian product of the grid's values, less the excluded points, numbered."""
        keys = list(self.grid)
        combos = [dict(zip(keys, c, strict=True)) for c in itertools.product(*(self.grid[k] for k in keys))]
        kept = [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items()) for ex in self.exclude)]
        return [GridPoint(i, c, {**RUNNER_DEFAULTS, **self.base, **c}) for i, c in enumerate(kept)]


def run_parameters(parameters: dict[str, Any]) -> RunParameters:
    """The run parameters of a point's notebook parameters (the runner sets ``OUTPUT_DIR``)."""
    return RunParameters.from_notebook({k: v for k, v in parameters.items() if k not in SET_BY_RUNNER})


def parse_grid(data: Any, source: str | Path = "<grid>") -> BenchmarkGrid:
    """Validate a grid (schema, then semantics); errors name the file and the key."""
    if isinstance(data, dict):
        for section in ("base", "grid"):
            for key in SET_BY_RUNNER:
                if isinstance(data.get(section), dict) and key in data[section]:
                    raise ConfigError(
                        f"{source}: at [{section!r}][{key!r}]: set by the runner (--output), not by the grid"
                    )
    validate_against_schema(data, _grid_schema(), str(source))
    base, grid = dict(data.get("base") or {}), dict(data.get("grid") or {})
    both = sorted(set(base) & set(grid))
    if both:
        raise ConfigError(f"{source}: {both} set in both 'base' and 'grid'; keep each key in one of them")
    exclude = tuple(dict(e) for e in data.get("exclude") or ())
    for i, ex in enumerate(exclude):
        unknown = sorted(set(ex) - set(grid))
        if unknown:
            raise ConfigError(f"{source}: at ['exclude'][{i}]: {unknown} not in 'grid'; exclude matches grid values")
    result = BenchmarkGrid(
        data["name"], Path(source), base, grid, int(data.get("repeat", 1)), data.get("description", ""), exclude
    )
    if not result.points():
        raise ConfigError(f"{source}: 'exclude' leaves no point of the grid")
    for point in result.points():
        try:
            run_parameters(point.parameters)
        except ConfigError as err:
            raise ConfigError(f"{source}: point {point.name}: {err}") from None
    return result


def load_grid(path: str | Path) -> BenchmarkGrid:
    return parse_grid(read_yaml(path), path)


@dataclass
class RunRecord:
    """One execution of one grid point."""

    point: GridPoint
    repeat: int
    path: Path
    metrics: dict[str, Any]
    notebook_walltime_s: float | None = None
    loadavg: tuple[float, ...] = ()  # 1-minute load average of the machine before and after the run
    cores: int | None = None  # cores of the machine the run had

    @property
    def quiet(self) -> bool:
        """Whether the machine was quiet around the run: the load average before and after it at
        most the core count (unknown load or cores: not quiet)."""
        return bool(self.loadavg) and self.cores is not None and max(self.loadavg) <= self.cores
