"""Which dataset description a dataset name means: ``embedded:<preset>``, ``cms-open-data-2015``
or a path to a dataset JSON."""

from __future__ import annotations

from pathlib import Path

from utils.config import REPO_ROOT
from utils.datasets.fileset import REAL_DATASET, REAL_NANOAOD_DATASET
from utils.errors import ConfigError

REAL_DATASET_NAME = "cms-open-data-2015"
REAL_NANOAOD_NAME = "cms-open-data-2015-nanoaod"
NANOAOD_SUFFIX = "-nanoaod"  # embedded:<preset>-nanoaod: the generated dataset in NanoAOD


def resolve_dataset(spec: str, workers: int = 1) -> Path:
    """The dataset description JSON of ``embedded:<preset>``, ``cms-open-data-2015`` or a path.
    The embedded dataset is generated on first use (and cached)."""
    if spec.startswith("embedded:"):
        from utils.datasets.embedded import ensure_dataset

        preset, input_format = embedded_preset(spec)
        return ensure_dataset(preset, workers=workers, input_format=input_format)
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


def embedded_preset(spec: str) -> tuple[str, str]:
    """(preset, input format) of ``embedded:<preset>`` (ntuples) or ``embedded:<preset>-nanoaod``."""
    name = spec.split(":", 1)[1]
    if name.endswith(NANOAOD_SUFFIX):
        return name.removesuffix(NANOAOD_SUFFIX), "nanoaod"
    return name, "ntuple"


def recorded_input_format(path: Path) -> str | None:
    """The ``input_format`` a dataset description records (generated datasets do), else None."""
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):  # not JSON (a ROOT file), or not text
        return None
    formats = {
        str(entry["input_format"])
        for variations in (data.values() if isinstance(data, dict) else ())
        if isinstance(variations, dict)
        for entry in variations.values()
        if isinstance(entry, dict) and entry.get("input_format") is not None
    }
    if len(formats) > 1:
        raise ConfigError(f"{path}: entries record different input formats {sorted(formats)}; use one per dataset")
    return formats.pop() if formats else None


def dataset_input_format(spec: str) -> str:
    """The input format of a dataset name: ``nanoaod`` for the real NanoAOD list and
    ``embedded:<preset>-nanoaod``, what a dataset JSON records, else ``ntuple``."""
    if spec == REAL_NANOAOD_NAME:
        return "nanoaod"
    if spec.startswith("embedded:"):
        return embedded_preset(spec)[1]
    if spec != REAL_DATASET_NAME:
        path = Path(spec)
        path = path if path.is_absolute() or path.is_file() else REPO_ROOT / path
        if path.is_file():
            return recorded_input_format(path) or "ntuple"
    return "ntuple"


def dataset_tag(spec: str) -> str:
    """A short name of a dataset for folder names (``embedded:tiny`` -> ``tiny``)."""
    return Path(spec.replace("embedded:", "")).name.removesuffix(".json").replace("/", "_") or "dataset"
