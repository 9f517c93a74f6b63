"""The embedded dataset: a generated stand-in for the 2015 CMS ttbar ntuples (toy Monte Carlo).

Public API:

- :func:`ensure_dataset` -- the dataset JSON of a preset, generated only if the cache lacks it;
- :func:`build_dataset` -- the same, returning a :class:`DatasetResult` with sizes and timings;
- :func:`generate_file` -- one ROOT file of one sample; :func:`generate_events` -- events in memory;
- :data:`PROCESSES` / :func:`register_process` -- the process registry (new signals go there);
- :func:`load_presets` / :func:`get_preset` -- ``datasets/embedded/presets.yml``, validated.

CLI: ``agc generate --preset tiny|quickstart|benchmark`` (see ``utils/datasets/embedded/cli.py``).
"""

from utils.datasets.embedded.dataset import (
    DEFAULT_OUTPUT_ROOT,
    DatasetResult,
    build_dataset,
    ensure_dataset,
    plan_dataset,
    sample_paths,
)
from utils.datasets.embedded.events import EventBatch
from utils.datasets.embedded.generator import (
    GENERATOR_VERSION,
    DataMixture,
    FileResult,
    generate_data_events,
    generate_events,
    generate_file,
)
from utils.datasets.embedded.params import DetectorParams
from utils.datasets.embedded.presets import Preset, get_preset, load_presets
from utils.datasets.embedded.processes import PROCESSES, ProcessSpec, Variation, register_process
from utils.datasets.embedded.schema import ANALYSIS_BRANCHES, COLLECTIONS, TREE_NAME

__all__ = [
    "ANALYSIS_BRANCHES",
    "COLLECTIONS",
    "DEFAULT_OUTPUT_ROOT",
    "GENERATOR_VERSION",
    "PROCESSES",
    "TREE_NAME",
    "DataMixture",
    "DatasetResult",
    "DetectorParams",
    "EventBatch",
    "FileResult",
    "Preset",
    "ProcessSpec",
    "Variation",
    "build_dataset",
    "ensure_dataset",
    "generate_data_events",
    "generate_events",
    "generate_file",
    "get_preset",
    "load_presets",
    "plan_dataset",
    "register_process",
    "sample_paths",
]
