"""The notebook's parameters, validated, and the one mapping from them to each stage's options.

The main notebook's ``parameters`` cell, ``agc run -p NAME VALUE``, the benchmark grids and the
preservation steps all speak the notebook's names (``NUM_CORES``, ``USE_DASK``, ...).
:class:`RunParameters` holds them (field = lower-cased name); :meth:`RunParameters.from_notebook`
is the only place that reads those names, and :meth:`RunParameters.processing_options` the only
place that turns them into :class:`~utils.processing.run.ProcessingOptions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError
from utils.processing.processor import IO_BRANCH_SETS
from utils.processing.run import ProcessingOptions

PIPELINES = ("direct", "servicex")
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "str | None": (str, type(None))}


def _type_problems(params: RunParameters) -> list[str]:
    """One line per parameter whose value has the wrong type, naming the parameter."""
    problems = []
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        allowed = _TYPES[str(f.type)]
        # bool is an int in Python: refuse True for a number and 1 for a flag
        ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
        if not ok:
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            problems.append(f"{f.name.upper()}={value!r}: expected {wanted}, got {type(value).__name__}")
    return problems


QUERY_LANGUAGES = ("uproot-raw", "func-adl")


@dataclass
class RunParameters:
    """The knobs of a run (the notebook's ``parameters`` cell), validated."""

    dataset: str = "embedded:quickstart"  # embedded:<preset> | cms-open-data-2015 | path to a JSON
    n_files_max_per_sample: int = -1
    pipeline: str = "direct"  # direct | servicex
    servicex_query_language: str = "uproot-raw"
    servicex_ignore_cache: bool = False
    use_dask: bool = False
    executor: str = "futures"  # iterative | futures (ignored when use_dask)
    num_cores: int = 2
    chunksize: int = 500_000
    af_name: str = "local"
    scheduler_address: str | None = None
    systematics: str = "all"  # all | none
    disable_processing: bool = False
    io_file_percent: int = 4
    use_ml: bool = True
    on_bad_input: str = "fail"  # fail | skip
    cores_per_worker: int = 1
    run_fit: bool = True
    run_ranking: bool = False
    output_dir: str | None = None  # None: a new folder outputs/<timestamp>-<dataset>
    overwrite: bool = False  # OUTPUT_DIR may hold an earlier run: clear it first (else refused)

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:  # the value checks below assume the types
            raise ConfigError("invalid run parameters:\n  " + "\n  ".join(problems))
        if self.pipeline not in PIPELINES:
            problems.append(f"PIPELINE={self.pipeline!r}: allowed {list(PIPELINES)}")
        if self.servicex_query_language not in QUERY_LANGUAGES:
            problems.append(
                f"SERVICEX_QUERY_LANGUAGE={self.servicex_query_language!r}: allowed {list(QUERY_LANGUAGES)}"
            )
        if self.executor not in ("iterative", "futures"):
            problems.append(f"EXECUTOR={self.executor!r}: allowed ['iterative', 'futures'] (or USE_DASK=True)")
        if self.systematics not in ("all", "none"):
            problems.append(f"SYSTEMATICS={self.systematics!r}: allowed ['all', 'none']")
        if self.io_file_percent not in IO_BRANCH_SETS:
            problems.append(f"IO_FILE_PERCENT={self.io_file_percent!r}: allowed {sorted(IO_BRANCH_SETS)}")
        if self.on_bad_input not in ("fail", "skip"):
            problems.append(f"ON_BAD_INPUT={self.on_bad_input!r}: allowed ['fail', 'skip']")
        if self.num_cores < 1:
            problems.append(f"NUM_CORES={self.num_cores!r}: must be at least 1")
        if self.chunksize < 1:
            problems.append(f"CHUNKSIZE={self.chunksize!r}: must be at least 1")
        if self.n_files_max_per_sample == 0 or self.n_files_max_per_sample < -1:
            problems.append(f"N_FILES_MAX_PER_SAMPLE={self.n_files_max_per_sample!r}: -1 (all) or a positive number")
        if problems:
            raise ConfigError("invalid run parameters:\n  " + "\n  ".join(problems))

    # --- the notebook's names ------------------------------------------------------------------

    @classmethod
    def notebook_names(cls) -> tuple[str, ...]:
        """The notebook parameter names, in the order of the ``parameters`` cell."""
        return tuple(f.name.upper() for f in dataclasses.fields(cls))

    @classmethod
    def from_notebook(cls, values: Mapping[str, Any], *, strict: bool = False) -> RunParameters:
        """The run parameters of notebook-named values (``{"NUM_CORES": 2, ...}``); names that
        are not parameters are ignored (a notebook's ``globals()`` may be passed), or refused
        with ``strict``. Unset parameters take their defaults."""
        names = set(cls.notebook_names())
        if strict:
            unknown = sorted(k for k in values if k not in names)
            if unknown:
                raise ConfigError(f"unknown notebook parameter(s) {unknown}: allowed {sorted(names)}")
        return cls(**{k.lower(): v for k, v in values.items() if k in names})

    def to_notebook(self) -> dict[str, Any]:
        """The notebook-named values of these parameters."""
        return {k.upper(): v for k, v in dataclasses.asdict(self).items()}

    # --- per-stage options -----------------------------------------------------------------------

    @property
    def executor_name(self) -> str:
        return "dask" if self.use_dask else self.executor

    def processing_options(self) -> ProcessingOptions:
        """The options of the processing stage."""
        return ProcessingOptions(
            executor=self.executor_name,
            workers=self.num_cores,
            chunksize=self.chunksize,
            scheduler_address=self.scheduler_address,
            af_name=self.af_name,
            systematics=self.systematics == "all",
            disable_processing=self.disable_processing,
            io_file_percent=self.io_file_percent,
            on_bad_input=self.on_bad_input,
        )

    @property
    def runs_fit(self) -> bool:
        """Whether the inference stage runs (it needs the systematic variations)."""
        return self.run_fit and self.systematics == "all" and not self.disable_processing
