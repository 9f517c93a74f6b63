"""The notebook's parameters, validated, and the one mapping from them to each stage's options.

The main notebook's ``parameters`` cell, ``agc run -p NAME VALUE``, the benchmark grids and the
preservation steps all speak the notebook's names (``NUM_CORES``, ``USE_DASK``, ...).
:class:`RunParameters` holds them (field = lower-cased name); :meth:`RunParameters.from_notebook`
is the only place that reads those names, and :meth:`RunParameters.processing_options` the only
place that turns them into :class:`~utils.processing.run.ProcessingOptions`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.datasets.resolve import dataset_input_format
from utils.errors import ConfigError
from utils.inference.config import FIT_DATA
from utils.processing.processor import INPUT_FORMATS, IO_BRANCH_SETS
from utils.processing.reference_style import PROCESSORS
from utils.processing.run import ProcessingOptions

log = logging.getLogger(__name__)

PIPELINES = ("direct", "servicex")
#: The AGC reference notebook's values of PIPELINE, and what they are here: ``coffea`` reads the
#: files directly; both ServiceX pipelines of the reference (a ServiceX processor, or ServiceX
#: output downloaded and then processed with coffea) are the ServiceX pipeline here, which
#: delivers the skimmed files and processes them with the same coffea processor.
PIPELINE_ALIASES = {"coffea": "direct", "servicex_processor": "servicex", "servicex_databinder": "servicex"}
#: DATASET = "auto": the quick-start dataset, or the tiny one on Binder or with little memory
AUTO_DATASET = "auto"
SMALL_MEMORY_BYTES = 6 * 1024**3  # the quick start (1.1 GB of files) needs more than a Binder pod's 2 GB
HOSTED_ENV_PREFIXES = ("BINDER_", "JUPYTERHUB_")


def default_dataset(environ: Mapping[str, str] | None = None, memory_bytes: int | None = None) -> tuple[str, str]:
    """The dataset of ``DATASET = "auto"`` and why: ``embedded:tiny`` on Binder or a JupyterHub
    (their ``BINDER_*``/``JUPYTERHUB_*`` variables) or with less than 6 GiB of memory (the
    machine's, or the container's limit), else ``embedded:quickstart``."""
    from utils.runinfo import memory_limit_bytes

    environ = os.environ if environ is None else environ
    hosted = sorted(k for k in environ if k.startswith(HOSTED_ENV_PREFIXES))
    if hosted:
        return "embedded:tiny", f"a hosted notebook ({hosted[0]} is set)"
    memory = memory_limit_bytes() if memory_bytes is None else memory_bytes
    if memory is not None and memory < SMALL_MEMORY_BYTES:
        return "embedded:tiny", f"{memory / 1024**3:.1f} GiB of memory"
    return "embedded:quickstart", "the quick start"


#: The reference notebook's parameter names that are another parameter here (``AF`` is the
#: facility, as ``AF_NAME``); the notebook name wins when both are given.
NAME_ALIASES = {"AF": "AF_NAME"}


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
JET_ASSIGNMENT_SWITCH = ("auto", "on", "off")


@dataclass
class RunParameters:
    """The knobs of a run (the notebook's ``parameters`` cell), validated."""

    dataset: str = AUTO_DATASET  # auto | embedded:<preset> | cms-open-data-2015 | path to a JSON
    input_format: str = "auto"  # auto (from the dataset) | ntuple (2015 POET ntuples) | nanoaod (CMS NanoAOD)
    n_files_max_per_sample: int = -1
    max_events_per_sample: int = -1  # whole files until at least this many events (-1: all)
    input_urls: str = "as-listed"  # a rule set of datasets/url_rules.yml, or "FROM=>TO"
    read_timeout_s: int = 60
    pipeline: str = "direct"  # direct | servicex (AGC reference: coffea | servicex_processor | servicex_databinder)
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
    processor: str = "fused"  # fused (the project's) | reference (benchmarks/reference_processor.py, AGC style)
    use_ml: bool = True
    use_jet_assignment: str = "auto"  # auto (NanoAOD with models/jet_assignment_* present) | on | off
    on_bad_input: str = "fail"  # fail | skip
    cores_per_worker: int = 1
    run_fit: bool = True
    run_ranking: bool = False
    fit_data: str = "pseudodata"  # pseudodata | data (the dataset's data sample)
    output_dir: str | None = None  # None: a new folder outputs/<timestamp>-<dataset>
    overwrite: bool = False  # OUTPUT_DIR may hold an earlier run: clear it first (else refused)

    def __post_init__(self) -> None:
        if self.dataset == AUTO_DATASET:
            self.dataset, reason = default_dataset()
            log.info("DATASET='auto': %s (%s); set DATASET to choose", self.dataset, reason)
        if self.pipeline in PIPELINE_ALIASES:
            log.info("PIPELINE=%r (AGC reference notebook) is PIPELINE=%r here", self.pipeline,
                     PIPELINE_ALIASES[self.pipeline])  # fmt: skip
            self.pipeline = PIPELINE_ALIASES[self.pipeline]
        problems = _type_problems(self)
        if problems:  # the value checks below assume the types
            raise ConfigError("invalid run parameters:\n  " + "\n  ".join(problems))
        if self.pipeline not in PIPELINES:
            problems.append(
                f"PIPELINE={self.pipeline!r}: allowed {list(PIPELINES)} (or the AGC reference's {list(PIPELINE_ALIASES)})"
            )
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
        if self.input_format not in ("auto", *INPUT_FORMATS):
            problems.append(f"INPUT_FORMAT={self.input_format!r}: allowed {['auto', *INPUT_FORMATS]}")
        elif self.resolved_input_format == "nanoaod" and self.use_ml:
            problems.append("USE_ML=True with INPUT_FORMAT='nanoaod': the classifier is trained on ntuple features")
        if self.use_jet_assignment not in JET_ASSIGNMENT_SWITCH:
            problems.append(f"USE_JET_ASSIGNMENT={self.use_jet_assignment!r}: allowed {list(JET_ASSIGNMENT_SWITCH)}")
        elif self.use_jet_assignment == "on" and self.resolved_input_format != "nanoaod":
            problems.append("USE_JET_ASSIGNMENT='on' needs NanoAOD input (INPUT_FORMAT='nanoaod')")
        if self.processor not in PROCESSORS:
            problems.append(f"PROCESSOR={self.processor!r}: allowed {list(PROCESSORS)}")
        elif self.processor == "reference":
            problems += self._reference_problems()
        if self.num_cores < 1:
            problems.append(f"NUM_CORES={self.num_cores!r}: must be at least 1")
        if self.chunksize < 1:
            problems.append(f"CHUNKSIZE={self.chunksize!r}: must be at least 1")
        if self.n_files_max_per_sample == 0 or self.n_files_max_per_sample < -1:
            problems.append(f"N_FILES_MAX_PER_SAMPLE={self.n_files_max_per_sample!r}: -1 (all) or a positive number")
        if self.max_events_per_sample == 0 or self.max_events_per_sample < -1:
            problems.append(f"MAX_EVENTS_PER_SAMPLE={self.max_events_per_sample!r}: -1 (all) or a positive number")
        if self.fit_data not in FIT_DATA:
            problems.append(
                f"FIT_DATA={self.fit_data!r}: allowed {list(FIT_DATA)} ('pseudodata': built from the MC templates; "
                "'data': the dataset's data sample)"
            )
        if self.read_timeout_s < 1:
            problems.append(f"READ_TIMEOUT_S={self.read_timeout_s!r}: must be at least 1 (seconds)")
        if problems:
            raise ConfigError("invalid run parameters:\n  " + "\n  ".join(problems))

    def _reference_problems(self) -> list[str]:
        """What ``PROCESSOR="reference"`` cannot be combined with."""
        problems = []
        if self.use_ml:
            problems.append("PROCESSOR='reference' with USE_ML=True: the reference-style processor does not classify "
                            "(the AGC classifier is not part of it); set USE_ML=False")  # fmt: skip
        if self.disable_processing:
            problems.append("PROCESSOR='reference' with DISABLE_PROCESSING=True: the I/O-only mode is the fused "
                            "processor's (it reads the same branches for both); set PROCESSOR='fused'")  # fmt: skip
        if self.input_format in ("auto", *INPUT_FORMATS) and self.resolved_input_format != "ntuple":
            problems.append(f"PROCESSOR='reference' with INPUT_FORMAT={self.resolved_input_format!r}: the "
                            "reference-style processor reads the 2015 ntuples only")  # fmt: skip
        return problems

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
            unknown = sorted(k for k in values if k not in names and k not in NAME_ALIASES)
            if unknown:
                raise ConfigError(f"unknown notebook parameter(s) {unknown}: allowed {sorted(names)}")
        aliased = {NAME_ALIASES[k]: v for k, v in values.items() if k in NAME_ALIASES and NAME_ALIASES[k] not in values}
        return cls(**{k.lower(): v for k, v in {**values, **aliased}.items() if k in names})

    def to_notebook(self) -> dict[str, Any]:
        """The notebook-named values of these parameters."""
        return {k.upper(): v for k, v in dataclasses.asdict(self).items()}

    # --- per-stage options -----------------------------------------------------------------------

    @property
    def resolved_input_format(self) -> str:
        """``INPUT_FORMAT``, with ``auto`` resolved from the dataset name."""
        return dataset_input_format(self.dataset) if self.input_format == "auto" else self.input_format

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
            input_format=self.resolved_input_format,
            read_timeout_s=self.read_timeout_s,
            processor=self.processor,
        )

    @property
    def runs_fit(self) -> bool:
        """Whether the inference stage runs (it needs the systematic variations)."""
        return self.run_fit and self.systematics == "all" and not self.disable_processing
