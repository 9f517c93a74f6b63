"""Training tables: the processor's own selection run over training files.

The features are never re-implemented here. Each training file is read with the processor's
schema (:class:`utils.processing.schema.AGCSchema`), its columns are taken by
:func:`utils.processing.selection.chunk_arrays` and the events are selected by
:func:`utils.processing.selection.select_events` under the nominal jet variation, exactly what
:class:`utils.processing.processor.TtbarAnalysis` does for the nominal histograms. The feature matrix the
models see is :meth:`FeatureTable.matrix` with the region's configured feature order, the same
column selection as :meth:`utils.processing.selection.EventSelection.feature_matrix`.

Train/validation/test split: by a stable hash of each selected event's content (the float64 bit
patterns of its ``FEATURE_NAMES`` values, mixed with SplitMix64 and a named salt). An event's
split therefore depends only on the event, never on file order, chunking or worker count.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import REPO_ROOT, AnalysisConfig
from utils.datasets.fileset import DATA_PROCESS, TREE_NAME, normalisation
from utils.errors import ModelError
from utils.io import sha256_file
from utils.processing.randoms import GOLDEN_GAMMA, splitmix64
from utils.processing.selection import FEATURE_NAMES, chunk_arrays, select_events

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: fractions of events in the train and validation splits; the rest is the test split
SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
#: salt of the split hash (change it to draw a different split)
SPLIT_SALT = 0x5EED_7A1E_0F_2015
SPLIT_METHOD = (
    "SplitMix64 hash of the float64 bit patterns of the event's selected-event features "
    f"{list(FEATURE_NAMES)} (salt {SPLIT_SALT:#x}); u = hash/2**64: train u < {SPLIT_FRACTIONS[0]}, "
    f"validation u < {SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]}, test otherwise"
)
DEFAULT_CHUNKSIZE = 500_000

_GOLDEN = np.uint64(GOLDEN_GAMMA)


def content_hash_uniform(features: np.ndarray, salt: int = SPLIT_SALT) -> np.ndarray:
    """A uniform number in [0, 1) per row, a pure function of the row's float64 bit patterns."""
    bits = np.ascontiguousarray(features, dtype=np.float64).view(np.uint64)
    h = np.full(len(bits), np.uint64(salt), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in range(bits.shape[1]):
            h = splitmix64(h ^ (bits[:, col] + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def assign_split(features: np.ndarray) -> np.ndarray:
    """Split code per event: 0 train, 1 validation, 2 test (see :data:`SPLIT_METHOD`)."""
    u = content_hash_uniform(features)
    edges = np.cumsum(SPLIT_FRACTIONS[:2])
    return np.searchsorted(edges, u, side="right").astype(np.int8)


@dataclass(frozen=True)
class SourceFile:
    """One training file and the entries of it that were read."""

    sample: str
    process: str
    path: str
    entry_start: int
    entry_stop: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "process": self.process,
            "path": display_path(self.path),
            "entry_start": self.entry_start,
            "entry_stop": self.entry_stop,
            "sha256": self.sha256,
        }


@dataclass
class FeatureTable:
    """Selected events (nominal jet variation) of the training files, all regions together.

    ``features`` has the columns :data:`utils.processing.selection.FEATURE_NAMES` (float64, as the kernel
    computes them); ``region`` indexes the configuration's regions; ``process`` indexes
    ``processes``; ``weight`` is the physics weight xsec x lumi / nevts of the event's sample;
    ``file_index`` and ``entry`` locate the event (``files[file_index]``, entry in that file);
    ``split`` is 0 train, 1 validation, 2 test.
    """

    features: np.ndarray
    region: np.ndarray
    process: np.ndarray
    weight: np.ndarray
    file_index: np.ndarray
    entry: np.ndarray
    split: np.ndarray
    processes: tuple[str, ...]
    files: tuple[SourceFile, ...]
    region_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.region)

    def mask(self, region: str, split: str | None = None) -> np.ndarray:
        """Events of a region (and of one split, if given)."""
        if region not in self.region_names:
            raise KeyError(f"unknown region {region!r}; regions: {list(self.region_names)}")
        m = self.region == self.region_names.index(region)
        if split is not None:
            m &= self.split == SPLITS.index(split)
        return m

    def matrix(self, names: tuple[str, ...] | list[str], mask: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix (float32) in the given column order, as the processor builds it."""
        cols = [FEATURE_NAMES.index(n) for n in names]
        rows = self.features if mask is None else self.features[mask]
        return np.ascontiguousarray(rows[:, cols], dtype=np.float32)

    def column(self, name: str, mask: np.ndarray | None = None) -> np.ndarray:
        col = self.features[:, FEATURE_NAMES.index(name)]
        return col if mask is None else col[mask]

    def labels(self, signal_process: str, mask: np.ndarray | None = None) -> np.ndarray:
        """1 for the signal process, 0 otherwise."""
        lab = (self.process == self.processes.index(signal_process)).astype(np.int8)
        return lab if mask is None else lab[mask]

    def process_names(self, mask: np.ndarray | None = None) -> np.ndarray:
        names = np.asarray(self.processes, dtype=object)[self.process]
        return names if mask is None else names[mask]

    def counts(self, region: str) -> dict[str, dict[str, int]]:
        """Selected events per split and process in a region."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            m = self.mask(region, split)
            out[split] = {p: int(np.count_nonzero(self.process[m] == i)) for i, p in enumerate(self.processes)}
        return out


def display_path(path: str | Path) -> str:
    """A path relative to the repository when inside it (model cards stay machine-independent)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


@dataclass(frozen=True)
class _FileJob:
    sample: str
    process: str
    path: str
    chunksize: int
    config: AnalysisConfig


@dataclass
class _FilePart:
    source: SourceFile
    features: np.ndarray
    region: np.ndarray
    entry: np.ndarray


def _select_file(job: _FileJob) -> _FilePart:
    """Run the processor's selection (nominal) over one file, chunk by chunk."""
    import uproot
    from coffea.nanoevents import NanoEventsFactory

    from utils.processing.schema import AGCSchema

    try:
        with uproot.open(job.path) as f:
            n_entries = int(f[TREE_NAME].num_entries)
    except (OSError, KeyError, ValueError) as err:
        raise ModelError(f"{job.path}: cannot read tree {TREE_NAME!r} of training file: {err}") from None
    feats, regions, entries = [], [], []
    for start in range(0, n_entries, job.chunksize):
        stop = min(n_entries, start + job.chunksize)
        events = NanoEventsFactory.from_root(
            {job.path: TREE_NAME}, schemaclass=AGCSchema, mode="virtual", entry_start=start, entry_stop=stop
        ).events()
        sel = select_events(chunk_arrays(events), job.config, "nominal")
        feats.append(sel.features)
        regions.append(sel.region)
        entries.append(sel.index + start)
    source = SourceFile(job.sample, job.process, job.path, 0, n_entries, sha256_file(job.path))
    if not feats:
        return _FilePart(source, np.empty((0, len(FEATURE_NAMES))), np.empty(0, np.int64), np.empty(0, np.int64))
    return _FilePart(source, np.concatenate(feats), np.concatenate(regions), np.concatenate(entries))


def build_feature_table(
    fileset: Mapping[str, Mapping[str, Any]],
    config: AnalysisConfig,
    *,
    chunksize: int = DEFAULT_CHUNKSIZE,
    workers: int = 1,
    source: dict[str, Any] | None = None,
) -> FeatureTable:
    """Select the events of every nominal MC sample of ``fileset`` (a :func:`utils.datasets.fileset.build_fileset`
    result) and collect their features, regions, physics weights and locations.

    Alternative samples (ttbar scaleup, ME_var, ...) and data are not used for training.
    ``workers`` > 1 reads files in parallel processes; the result does not depend on it.
    """
    jobs = _feature_jobs(fileset, config, chunksize)
    log.info("selecting training events from %d files with %d worker(s)", len(jobs), workers)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_select_file, jobs))
    else:
        parts = [_select_file(job) for job in jobs]
    return _assemble(fileset, config, jobs, parts, source)


def _feature_jobs(fileset: Mapping[str, Mapping[str, Any]], config: AnalysisConfig, chunksize: int) -> list[_FileJob]:
    jobs = []
    for sample in sorted(fileset):
        meta = fileset[sample]["metadata"]
        if meta["variation"] != "nominal" or meta["process"] == DATA_PROCESS:
            continue
        for path in fileset[sample]["files"]:
            jobs.append(_FileJob(sample, meta["process"], str(path), chunksize, config))
    if not jobs:
        raise ModelError(
            "no nominal MC samples in the training fileset; a training dataset needs ttbar and backgrounds"
        )
    return jobs


def _assemble(
    fileset: Mapping[str, Mapping[str, Any]],
    config: AnalysisConfig,
    jobs: list[_FileJob],
    parts: list[_FilePart],
    source: dict[str, Any] | None,
) -> FeatureTable:
    weights = normalisation({k: dict(v) for k, v in fileset.items()}, config)
    processes = tuple(sorted({job.process for job in jobs}))
    samples = [job.sample for job in jobs]
    n = [len(p.region) for p in parts]
    features = np.concatenate([p.features for p in parts])
    table = FeatureTable(
        features=features,
        region=np.concatenate([p.region for p in parts]).astype(np.int64),
        process=np.repeat([processes.index(job.process) for job in jobs], n).astype(np.int64),
        weight=np.repeat([weights[s] for s in samples], n).astype(np.float64),
        file_index=np.repeat(np.arange(len(parts)), n).astype(np.int64),
        entry=np.concatenate([p.entry for p in parts]).astype(np.int64),
        split=assign_split(features),
        processes=processes,
        files=tuple(p.source for p in parts),
        region_names=config.region_names,
        source=dict(source or {}),
    )
    log.info("training table: %d selected events from %d files", len(table), len(parts))
    return table
