"""The inputs of a ServiceX delivery: the fileset's samples, normalised, and the fingerprints
(size, mtime, ROOT UUID) that complete the client's cache key.

The servicex client caches a transform by its query and its file names. A file rewritten at the
same path would get the old skim from the cache; :class:`InputFingerprints` records, beside the
client's cache, what each cached request's inputs were, so that a changed input is delivered again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.io import write_json_atomic

log = logging.getLogger(__name__)

FINGERPRINTS_FILE = "agc_input_fingerprints.json"


@dataclass(frozen=True)
class SampleInput:
    name: str
    tree: str
    inputs: tuple[str, ...]
    metadata: dict[str, Any]


def _normalise_path(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def normalise_fileset(fileset: Mapping[str, Any]) -> list[SampleInput]:
    """The samples of a fileset: one tree name each, absolute local paths, no file twice."""
    if not isinstance(fileset, Mapping) or not fileset:
        raise ConfigError("fileset: expected a non-empty mapping {sample: {'files': {path: tree}, 'metadata': {...}}}")
    samples = []
    for name, entry in fileset.items():
        where = f"fileset[{name!r}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("files"), Mapping) or not entry["files"]:
            raise ConfigError(f"{where}['files']: expected a non-empty mapping of file path to tree name")
        trees = set()
        inputs = []
        for path, tree in entry["files"].items():
            tree_name = tree.get("object_path") if isinstance(tree, Mapping) else tree
            if not isinstance(tree_name, str) or not tree_name:
                raise ConfigError(f"{where}['files'][{path!r}]: expected the tree name, got {tree!r}")
            trees.add(tree_name)
            inputs.append(_normalise_path(str(path)))
        if len(trees) != 1:
            raise ConfigError(f"{where}['files']: all files of a sample must use one tree name, got {sorted(trees)}")
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"{where}['files']: the same file is listed twice")
        samples.append(SampleInput(str(name), trees.pop(), tuple(sorted(inputs)), dict(entry.get("metadata") or {})))
    return samples


def file_fingerprint(path: str) -> list[Any] | None:
    """``[size, mtime_ns, ROOT UUID]`` of a local file (None for a remote one, or one that cannot
    be read: then the client's own key decides)."""
    if "://" in path:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    uuid = None
    try:
        import uproot

        with uproot.open(path) as f:
            uuid = str(f.file.uuid)
    except Exception:  # not ROOT (parquet, a broken file): size and mtime still change with it
        uuid = None
    return [st.st_size, st.st_mtime_ns, uuid]


def sample_fingerprint(sample: SampleInput) -> dict[str, Any]:
    return {path: file_fingerprint(path) for path in sample.inputs}


class InputFingerprints:
    """What the inputs of each cached request were, by the request's hash (a JSON file in the
    client's cache folder)."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / FINGERPRINTS_FILE
        try:
            self.table: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}

    def matches(self, request: Any, sample: SampleInput) -> bool:
        """Whether the inputs are as they were when ``request`` was cached (unknown: no)."""
        return self.table.get(request.compute_hash()) == sample_fingerprint(sample)

    def record(self, delivered: list[tuple[Any, SampleInput]]) -> None:
        """Record the inputs of the requests just delivered ((request, sample) pairs)."""
        for request, sample in delivered:
            self.table[request.compute_hash()] = sample_fingerprint(sample)
        try:
            write_json_atomic(self.path, self.table)
        except OSError as err:  # the cache still works; a changed input is then delivered again
            log.warning("cannot record the input fingerprints in %s: %s", self.path, err)
