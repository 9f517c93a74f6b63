"""Which dataset description a dataset name means: ``embedded:<preset>``, ``cms-open-data-2015``
or a path to a dataset JSON."""

from __future__ import annotations

from pathlib import Path

from utils.config import REPO_ROOT
from utils.datasets.fileset import REAL_DATASET, REAL_NANOAOD_DATASET
from utils.errors import ConfigError

REAL_DATASET_NAME = "cms-open-data-2015"
REAL_NANOAOD_NAME = "cms-open-data-2015-nanoaod"


def resolve_dataset(spec: str, workers: int = 1) -> Path:
    """The dataset description JSON of ``embedded:<preset>``, ``cms-open-data-2015`` or a path.
    The embedded dataset is generated on first use (and cached)."""
    if spec.startswith("embedded:"):
        from utils.datasets.embedded import ensure_dataset

        return ensure_dataset(spec.split(":", 1)[1], workers=workers)
    if spec == REAL_DATASET_NAME:
        return REAL_DATASET
    if spec == REAL_NANOAOD_NAME:
        return REAL_NANOAOD_DATASET
    path = Path(spec)
    if not path.is_absolute():
        path = (REPO_ROOT / path) if (REPO_ROOT / path).exists() else path
    if not path.is_file():
        raise ConfigError(
            f"dataset {spec!r}: not 'embedded:<preset>', {REAL_DATASET_NAME!r}, {REAL_NANOAOD_NAME!r}, "
            "or an existing JSON file"
        )
    return path


def dataset_input_format(spec: str) -> str:
    """The input format of a dataset name: ``nanoaod`` for the real NanoAOD list, else ``ntuple``."""
    return "nanoaod" if spec == REAL_NANOAOD_NAME else "ntuple"


def dataset_tag(spec: str) -> str:
    """A short name of a dataset for folder names (``embedded:tiny`` -> ``tiny``)."""
    return Path(spec.replace("embedded:", "")).name.removesuffix(".json").replace("/", "_") or "dataset"
