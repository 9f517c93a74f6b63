"""Signal samples as inputs: a dataset description of one process that carries its own
cross-section, never something the analysis code knows about.

A signal description has the structure of every dataset description
(``{process: {variation: {"files": [{"path", "nevts"}], "nevts_total"}}}``) with exactly one
process and its ``nominal`` variation, plus

- ``"xsec"``: the signal cross-section in pb (required: a signal brings its own);
- ``"parameters"`` (optional): the model parameters of this signal point, numbers by name
  (e.g. ``{"mass": 1250}``); they label the point in the published patchset.

The process is processed as the sample the signal model names (``signal``), whatever the
description calls it, so that one statistical model serves every signal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config import AnalysisConfig
from utils.datasets.fileset import build_fileset, load_dataset_description
from utils.errors import ConfigError
from utils.io import write_json_atomic

log = logging.getLogger(__name__)

SIGNAL_VARIATION = "nominal"


@dataclass(frozen=True)
class SignalSample:
    """One signal point: its description file, name, cross-section and model parameters."""

    name: str  # the process name in the description
    description_path: Path
    xsec: float  # pb
    nevts: int
    n_files: int
    parameters: Mapping[str, float] = field(default_factory=dict)
    generator: Mapping[str, Any] | None = None

    def fileset(self, sample: str, n_files_max_per_sample: int = -1) -> dict[str, dict[str, Any]]:
        """The coffea fileset of this signal, processed as process ``sample``."""
        fileset = build_fileset(self.description_path, n_files_max_per_sample, cross_sections={})
        (entry,) = fileset.values()
        entry["metadata"] = {**entry["metadata"], "process": sample}
        return {f"{sample}__{SIGNAL_VARIATION}": entry}

    def generators(self, sample: str) -> dict[str, Any]:
        return {f"{sample}__{SIGNAL_VARIATION}": dict(self.generator)} if self.generator else {}

    def record(self) -> dict[str, Any]:
        """What identifies this signal point in results (patch metadata, provenance)."""
        return {
            "name": self.name,
            "description": str(self.description_path.resolve()),
            "xsec": self.xsec,
            "parameters": dict(self.parameters),
            "nevts": self.nevts,
        }


def process_signal(signal: SignalSample, output: str | Path, config: AnalysisConfig, sample: str, params=None) -> Path:
    """Process a signal as process ``sample`` with the analysis configuration ``config``
    (selection, binning, every systematic that applies to a nominal sample); write its
    per-sample histograms (:mod:`utils.preservation.samples`) with the signal's record."""
    from utils.preservation.samples import process_samples, write_sample_histograms

    result = process_samples(signal.fileset(sample), config, params, signal.generators(sample))
    return write_sample_histograms(result, output, config, parameters={"signal": signal.record()})


def load_signal(path: str | Path) -> SignalSample:
    """Read and check a signal description (see the module doc); errors name the file and key."""
    path = Path(path)
    description = load_dataset_description(path)
    if len(description) != 1:
        raise ConfigError(
            f"{path}: a signal description holds exactly one process, found {sorted(description)}; "
            "give one signal point per file"
        )
    ((name, variations),) = description.items()
    if set(variations) != {SIGNAL_VARIATION}:
        raise ConfigError(
            f"{path}: at [{name!r}]: a signal has one variation, {SIGNAL_VARIATION!r}; found {sorted(variations)} "
            "(the systematics that apply to a signal come from the nominal sample)"
        )
    entry = variations[SIGNAL_VARIATION]
    where = f"{path}: at [{name!r}][{SIGNAL_VARIATION!r}]"
    xsec = entry.get("xsec")
    if isinstance(xsec, bool) or not isinstance(xsec, int | float) or not math.isfinite(xsec) or xsec <= 0:
        raise ConfigError(f"{where}['xsec']: {xsec!r}; a signal brings its own cross-section, a positive number in pb")
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in parameters.values()
    ):
        raise ConfigError(f"{where}['parameters']: expected numbers by name, e.g. {{'mass': 1250}}; got {parameters!r}")
    if not entry["files"]:
        raise ConfigError(f"{where}['files']: the signal has no files")
    return SignalSample(
        name,
        path,
        float(xsec),
        sum(int(f["nevts"]) for f in entry["files"]),
        len(entry["files"]),
        {k: float(v) for k, v in parameters.items()},
        entry.get("generator"),
    )


def _absolute(path: str, base: Path) -> str:
    if "://" in path or path.startswith("root:") or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def standalone_description(description_path: str | Path) -> dict[str, Any]:
    """A dataset description with absolute file paths (valid wherever it is copied to)."""
    description_path = Path(description_path)
    description = load_dataset_description(description_path)
    return {
        process: {
            variation: {
                **entry,
                "files": [{**f, "path": _absolute(f["path"], description_path.parent)} for f in entry["files"]],
            }
            for variation, entry in variations.items()
        }
        for process, variations in description.items()
    }


def describe_signal(
    dataset: str | Path,
    process: str,
    variation: str,
    name: str,
    xsec: float,
    output: str | Path,
    parameters: Mapping[str, float] | None = None,
) -> SignalSample:
    """Write the signal description of one sample (``process``/``variation``) of a dataset
    description (a generated signal family, say) as signal ``name`` with cross-section
    ``xsec`` (pb) and model ``parameters``; return it, checked."""
    description = standalone_description(dataset)
    try:
        entry = description[process][variation]
    except KeyError:
        available = [f"{p}/{v}" for p, vs in description.items() for v in vs]
        raise ConfigError(f"{dataset}: no sample {process}/{variation}; available: {available}") from None
    entry = {
        **entry,
        "xsec": float(xsec),
        "parameters": dict(parameters or {}),
        "source": {"description": str(Path(dataset).resolve()), "process": process, "variation": variation},
    }
    write_json_atomic(output, {name: {SIGNAL_VARIATION: entry}})
    log.info("wrote signal %s (%s/%s, %g pb) to %s", name, process, variation, xsec, output)
    return load_signal(output)
