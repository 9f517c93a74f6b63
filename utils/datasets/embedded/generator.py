"""Event generation (in memory) and file writing for one sample file.

Random streams: every (seed, process, variation, file index, chunk index) has its own
``numpy.random.SeedSequence``, so a file is reproducible on its own and independent of the
others, whatever order or process pool generates them.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uproot

from utils.datasets.embedded.detector import simulate
from utils.datasets.embedded.events import EventBatch
from utils.datasets.embedded.params import DetectorParams
from utils.datasets.embedded.preselection import Preselection, preselected_data_batches
from utils.datasets.embedded.processes import get_process
from utils.datasets.embedded.schema import TREE_NAME, branch_types, counter_name
from utils.io import atomic_path

log = logging.getLogger(__name__)

# Bump when a code change alters the generated events without changing a registered parameter
# (parameter changes are caught by ``model_fingerprint``): both key the dataset cache.
GENERATOR_VERSION = "1.0.0"
DATA_PROCESS, DATA_VARIATION = "data", "nominal"
DEFAULT_EVENTS_PER_BASKET = 50_000
# Written into every file instead of the wall-clock time, so that a file's bytes depend only on
# its inputs (ROOT headers carry creation/modification stamps).
_FIXED_TIMESTAMP = datetime.datetime(2016, 1, 1, 0, 0, 0)


def stable_int(key: str | int) -> int:
    """A process-independent integer for a string (Python's ``hash`` is salted per process)."""
    if isinstance(key, int):
        return key
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def seed_sequence(seed: int, *keys: str | int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *(stable_int(k) for k in keys)])


def detector_for(process: str, variation: str) -> DetectorParams:
    return DetectorParams().replaced(get_process(process).variation(variation).detector)


def simulate_process(
    rng: np.random.Generator,
    process: str,
    variation: str,
    n_events: int,
    with_genpart: bool = True,
    minimal: bool = False,
) -> EventBatch:
    spec = get_process(process)
    hard = spec.builder(rng, n_events, spec.parameters(variation))
    return simulate(rng, hard, detector_for(process, variation), with_genpart=with_genpart, minimal=minimal)


def generate_events(
    process: str,
    variation: str,
    n_events: int,
    seed: int,
    file_index: int = 0,
    chunk_index: int = 0,
    minimal: bool = False,
) -> EventBatch:
    """``n_events`` events of one sample, in memory: exactly chunk ``chunk_index`` of file
    ``file_index`` when ``n_events`` is that chunk's size. ``minimal=True`` skips the
    collections the analysis does not use (jets, leptons and MET stay identical)."""
    rng = np.random.default_rng(seed_sequence(seed, process, variation, file_index, chunk_index))
    return simulate_process(rng, process, variation, n_events, minimal=minimal)


@dataclass(frozen=True)
class DataMixture:
    """The composition of a generated data sample: expected event fractions per process
    (proportional to xsec x mu for the signal)."""

    processes: tuple[str, ...]
    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.processes) != len(self.fractions) or not self.processes:
            raise ValueError("DataMixture needs one fraction per process")


def generate_data_events(
    n_events: int, seed: int, mixture: DataMixture, file_index: int = 0, chunk_index: int = 0
) -> EventBatch:
    """An unweighted sample of all processes mixed in the given proportions, events shuffled.
    GenPart is empty (data has no generator record). ``meta['process']`` indexes the truth."""
    rng = np.random.default_rng(seed_sequence(seed, DATA_PROCESS, DATA_VARIATION, file_index, chunk_index))
    frac = np.asarray(mixture.fractions, dtype=np.float64)
    which = rng.choice(len(frac), size=n_events, p=frac / frac.sum())
    parts = []
    for k, proc in enumerate(mixture.processes):
        m = int(np.count_nonzero(which == k))
        if m:
            sub = np.random.default_rng(seed_sequence(seed, DATA_PROCESS, proc, file_index, chunk_index))
            batch = simulate_process(sub, proc, "nominal", m, with_genpart=False)
            batch.meta["process"] = np.full(m, k, dtype=np.int16)
            parts.append(batch)
    combined = EventBatch.concatenate(parts)
    # combined holds the processes in blocks; put each event where the draw placed it
    position = np.argsort(which, kind="stable")
    inverse = np.empty(n_events, dtype=np.int64)
    inverse[position] = np.arange(n_events)
    return combined.take(inverse)


def chunk_sizes(n_events: int, per_chunk: int) -> list[int]:
    full, rest = divmod(n_events, per_chunk)
    return [per_chunk] * full + ([rest] if rest else [])


@contextlib.contextmanager
def _reproducible_headers() -> Iterator[None]:
    """Fix the timestamps uproot writes into ROOT headers (it uses the wall clock), so a file's
    bytes depend on its inputs only. Uses a private uproot function (uproot 5.7); without it the
    files differ in their timestamps only."""
    util = uproot._util
    original = getattr(util, "datetime_to_code", None)
    if original is None:
        log.warning("uproot._util.datetime_to_code is gone: ROOT headers will carry wall-clock timestamps")
        yield
        return
    code = original(_FIXED_TIMESTAMP)
    util.datetime_to_code = lambda dt: code
    try:
        yield
    finally:
        util.datetime_to_code = original


def _uuid_function(key: str):
    counter = itertools.count()

    def make() -> uuid.UUID:
        digest = hashlib.sha256(f"{key}/{next(counter)}".encode()).digest()
        return uuid.UUID(bytes=digest[:16], version=4)

    return make


def make_readable(path: str | Path) -> None:
    """Outputs are shared (executors, a ServiceX endpoint): rw-r--r-- instead of mkstemp's 0600."""
    Path(path).chmod(0o644)


@dataclass(frozen=True)
class FileResult:
    path: Path
    process: str
    variation: str
    n_events: int
    n_bytes: int
    seconds: float  # wall time
    cpu_seconds: float  # CPU time of the generating process (robust on a shared machine)
    #: preselected data: {process: [generated, passed]}
    preselected: dict[str, list[int]] | None = None


def zlib_compression(level: int, compressor: str = "isal") -> uproot.ZLIB:
    """ZLIB at ``level`` as recorded in the file; ``compressor="isal"`` produces the (standard,
    ROOT-readable) zlib stream with ISA-L's level-1 deflate, ~15x faster than Python's zlib at a
    slightly better ratio. Reading is unaffected: any zlib inflater decodes it."""
    comp = uproot.ZLIB(level)
    if compressor == "isal":
        from isal import isal_zlib

        comp.compress = lambda data: isal_zlib.compress(data, level=min(level, 3))
    elif compressor != "zlib":
        raise ValueError(f"unknown compressor {compressor!r}; use 'isal' or 'zlib'")
    return comp


def write_batches(
    path: str | Path,
    batches: Iterator[EventBatch],
    compression_level: int = 1,
    key: str = "",
    compressor: str = "isal",
) -> int:
    """Write batches (one basket per branch per batch) into TTree ``events`` atomically.
    Returns the number of events written."""
    total = 0
    compression = zlib_compression(compression_level, compressor)
    # An open file object, not the temporary path: uproot would record the temporary name in
    # the TFile key; with a file object the recorded name is the same for every file.
    with (
        atomic_path(path) as tmp,
        open(tmp, "w+b") as sink,
        _reproducible_headers(),
        uproot.recreate(sink, compression=compression, uuid_function=_uuid_function(key)) as f,
    ):
        tree = f.mktree(TREE_NAME, branch_types(), counter_name=counter_name)
        for batch in batches:
            tree.extend(batch.branches())
            total += batch.n
    return total


def preselection_counts(
    path: str | Path,
    process: str,
    n_events: int,
    mixture: DataMixture | None,
    preselection: Preselection | None,
    yields: tuple[tuple[str, int], ...] | None,
) -> dict[str, list[int]] | None:
    """Check a file request; for preselected data, the (empty) per-process counts that
    :func:`file_batches` fills while it generates."""
    if n_events <= 0:
        raise ValueError(f"{path}: n_events must be positive, got {n_events}")
    if process == DATA_PROCESS and preselection is not None:
        if yields is None or sum(n for _, n in yields) != n_events:
            raise ValueError(f"{path}: preselected data needs the events per process (yields) summing to n_events")
        return {}
    if process == DATA_PROCESS and mixture is None:
        raise ValueError("the data sample needs a DataMixture")
    return None


def file_batches(
    process: str,
    variation: str,
    n_events: int,
    seed: int,
    file_index: int,
    events_per_basket: int,
    mixture: DataMixture | None,
    preselection: Preselection | None,
    yields: tuple[tuple[str, int], ...] | None,
    preselected: dict[str, list[int]] | None,
) -> Iterator[EventBatch]:
    """The event batches of one file, whatever its writer (the ntuple's or NanoAOD's)."""
    if preselected is not None:
        assert preselection is not None and yields is not None  # checked by preselection_counts
        yield from preselected_data_batches(
            yields,
            preselection,
            events_per_basket,
            lambda proc, chunk: seed_sequence(seed, DATA_PROCESS, "preselected", proc, file_index, chunk),
            preselected,
        )
        return
    for chunk, size in enumerate(chunk_sizes(n_events, events_per_basket)):
        if process == DATA_PROCESS:
            assert mixture is not None  # checked by preselection_counts
            yield generate_data_events(size, seed, mixture, file_index, chunk)
        else:
            yield generate_events(process, variation, size, seed, file_index, chunk)


def generate_file(
    process: str,
    variation: str,
    n_events: int,
    seed: int,
    path: str | Path,
    *,
    file_index: int = 0,
    events_per_basket: int = DEFAULT_EVENTS_PER_BASKET,
    compression_level: int = 1,
    compressor: str = "isal",
    mixture: DataMixture | None = None,
    preselection: Preselection | None = None,
    yields: tuple[tuple[str, int], ...] | None = None,
) -> FileResult:
    """Generate one ROOT file of ``n_events`` (``process='data'`` with a ``mixture`` for data).

    Preselected data (``process='data'``, a ``preselection`` and the events to generate per
    process, ``yields``, summing to ``n_events``): only the passing events are written
    (:mod:`utils.datasets.embedded.preselection`)."""
    preselected = preselection_counts(path, process, n_events, mixture, preselection, yields)
    start, cpu_start = time.perf_counter(), time.process_time()
    batches = file_batches(
        process, variation, n_events, seed, file_index, events_per_basket, mixture, preselection, yields, preselected
    )
    key = f"{seed}/{process}/{variation}/{file_index}"
    written = write_batches(path, batches, compression_level, key, compressor)
    make_readable(path)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    size = Path(path).stat().st_size
    log.debug("wrote %s: %d events, %.1f MB in %.1f s (%.1f s CPU)", path, written, size / 1e6, seconds, cpu)
    return FileResult(Path(path), process, variation, written, size, seconds, cpu, preselected)


def mixture_from_yields(expected: Sequence[tuple[str, float]]) -> DataMixture:
    total = sum(v for _, v in expected)
    return DataMixture(tuple(p for p, _ in expected), tuple(v / total for _, v in expected))


def model_fingerprint() -> str:
    """Hash of everything in code that shapes the events: the process registry (builders,
    parameters, variations) and the detector defaults. Part of the dataset cache key, so a
    re-tuned model never reuses files generated by the old one."""
    from utils.datasets.embedded.processes import PROCESSES

    model = {
        name: {
            "builder": f"{spec.builder.__module__}.{spec.builder.__qualname__}",
            "params": dict(spec.params),
            "variations": {k: [dict(v.physics), dict(v.detector)] for k, v in spec.variations.items()},
            "xsec": spec.xsec,
            "flags": [spec.include_in_data, spec.is_signal],
        }
        for name, spec in sorted(PROCESSES.items())
    }
    text = json.dumps(
        {"version": GENERATOR_VERSION, "processes": model, "detector": repr(DetectorParams())},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
