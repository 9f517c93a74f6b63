"""Provenance records: what went into a preserved result, so that it can be checked and rerun.

Every result of :mod:`utils.preservation` (sample histograms, the published likelihood, a
reinterpretation) is written with a JSON record beside it: the input files with their event
counts and sha256 checksums, the checksums of the configuration files, seeds, parameters,
package versions, the git commit, and the checksums of the outputs.
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from utils.io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

PROVENANCE_NAME = "provenance.json"
#: packages a reinterpretation depends on beyond the pipeline's own list (utils.runinfo.PACKAGES)
EXTRA_PACKAGES = ("jsonpatch", "iminuit", "snakemake")


@dataclass(frozen=True)
class FileRecord:
    """One file: where it was, how big, its checksum, and (input files) its number of events."""

    path: str
    bytes: int
    sha256: str
    nevts: int | None = None

    @classmethod
    def of(cls, path: str | Path, nevts: int | None = None) -> FileRecord:
        path = Path(path)
        return cls(str(path.resolve()), path.stat().st_size, sha256_file(path), nevts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.nevts is None:
            del out["nevts"]
        return out


@dataclass(frozen=True)
class SampleInputs:
    """The input files of one sample (``process__variation``) as processed."""

    sample: str
    process: str
    variation: str
    xsec: float | None
    nevts: int
    files: tuple[FileRecord, ...]
    generator: Mapping[str, Any] | None = None  # the embedded generator's name, version, preset, seed

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "process": self.process,
            "variation": self.variation,
            "xsec": self.xsec,
            "nevts": self.nevts,
            "files": [f.to_dict() for f in self.files],
            "generator": dict(self.generator) if self.generator is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleInputs:
        return cls(
            data["sample"],
            data["process"],
            data["variation"],
            data["xsec"],
            int(data["nevts"]),
            tuple(FileRecord(**f) for f in data["files"]),
            data.get("generator"),
        )


def sample_inputs(fileset: Mapping[str, Any], generators: Mapping[str, Any] | None = None) -> list[SampleInputs]:
    """Input records of every sample of a coffea fileset (:func:`utils.datasets.fileset.build_fileset`).

    Local files get their size and sha256; remote ones (URLs) are recorded by path and event
    count only. ``generators``: ``{sample: generator entry}`` of the dataset description.
    """
    out = []
    for sample, entry in fileset.items():
        meta = entry["metadata"]
        files = []
        for path, nevts in entry["file_nevts"].items():
            local = "://" not in path and not path.startswith("root:")
            files.append(FileRecord.of(path, nevts) if local else FileRecord(path, -1, "", nevts))
        out.append(
            SampleInputs(
                sample,
                meta["process"],
                meta["variation"],
                meta["xsec"],
                int(meta["nevts"]),
                tuple(files),
                (generators or {}).get(sample),
            )
        )
    return out


def generator_entries(description: Mapping[str, Any]) -> dict[str, Any]:
    """``{process__variation: generator}`` of a dataset description (embedded datasets only)."""
    return {
        f"{process}__{variation}": entry["generator"]
        for process, variations in description.items()
        for variation, entry in variations.items()
        if isinstance(entry, Mapping) and "generator" in entry
    }


def config_records(paths: Mapping[str, str | Path]) -> dict[str, dict[str, Any]]:
    """``{name: {path, bytes, sha256}}`` of configuration files."""
    return {name: FileRecord.of(path).to_dict() for name, path in paths.items()}


@dataclass
class Provenance:
    """The provenance record of one result."""

    kind: str  # "sample-histograms", "published-likelihood", "reinterpretation", ...
    inputs: dict[str, Any]
    configuration: dict[str, dict[str, Any]]
    seeds: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_utc: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat())
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    packages: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None

    def __post_init__(self) -> None:
        from utils.runinfo import git_commit, package_versions

        if not self.packages:
            self.packages = {**package_versions(), **package_versions(EXTRA_PACKAGES)}
        if self.git_commit is None:
            self.git_commit = git_commit()

    def record_outputs(self, folder: Path, paths: Iterable[Path]) -> None:
        """Add the outputs (relative to ``folder``) with their checksums."""
        for path in sorted(paths):
            record = FileRecord.of(path).to_dict()
            record["path"] = str(Path(path).relative_to(folder))
            self.outputs[record["path"]] = record

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        write_json_atomic(path, self.to_dict())
        log.info("provenance written to %s", path)
        return Path(path)
