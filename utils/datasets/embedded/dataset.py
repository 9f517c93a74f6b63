"""Generating a whole embedded dataset from a preset, with caching.

Layout: ``<output_root>/<preset>/<process>__<variation>/<index>.root`` plus
``<output_root>/<preset>/manifest.json`` and ``fileset.json`` (the dataset description, same
structure as the real ``ntuples_merged.json``; paths relative to its folder).

Cache rule: a dataset is complete when ``fileset.json`` exists, the manifest says complete and
carries the key of the request (preset content, seed, data options, generator version and model
fingerprint), and every listed file exists with its recorded size. Files are written atomically
(temporary name, then rename), the manifest and ``fileset.json`` last, so an interrupted run is
never taken for a complete one; a rerun with the same request keeps the files already written.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import REPO_ROOT, load_analysis_config
from utils.datasets.embedded.cache import (
    FILESET_NAME,
    MANIFEST_NAME,
    check_disk_space,
    file_is_whole,
    is_complete,
    locked,
    read_json,
    remove_stale,
    remove_temporaries,
)
from utils.datasets.embedded.generator import (
    DATA_PROCESS,
    DATA_VARIATION,
    GENERATOR_VERSION,
    DataMixture,
    FileResult,
    generate_file,
    make_readable,
    mixture_from_yields,
    model_fingerprint,
    seed_sequence,
)
from utils.datasets.embedded.nanoaod import INPUT_FORMAT as NANOAOD
from utils.datasets.embedded.nanoaod import NANOAOD_WRITER_VERSION, generate_nanoaod_file
from utils.datasets.embedded.nanoaod import TREE_NAME as NANOAOD_TREE
from utils.datasets.embedded.preselection import Preselection, record, split_evenly
from utils.datasets.embedded.presets import (
    Preset,
    content_hash,
    data_file_sizes,
    expected_data_yields,
    get_preset,
    process_cross_sections,
)
from utils.datasets.embedded.processes import get_process
from utils.datasets.embedded.schema import TREE_NAME
from utils.datasets.fileset import load_cross_sections
from utils.errors import ConfigError
from utils.io import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = REPO_ROOT / "data" / "embedded"
PRESELECTED_FRACTION_ESTIMATE = 0.05  # above the measured 1 % of preselected data, for the disk check
PRESELECTED_DATA_VERSION = 2  # in the cache key; bump when preselected data changes (2: per-file luminosity)
INPUT_FORMATS = ("ntuple", NANOAOD)


@dataclass(frozen=True)
class FileTask:
    process: str
    variation: str
    index: int
    n_events: int
    relpath: str
    seed: int
    events_per_basket: int
    compression_level: int
    compressor: str
    mixture: DataMixture | None = None
    #: preselected data: the preselection, and the events to generate per process
    preselection: Preselection | None = None
    yields: tuple[tuple[str, int], ...] | None = None

    input_format: str = "ntuple"  # ntuple | nanoaod (the writer; the events are the same)

    @property
    def expected_output_events(self) -> int:
        """Events written (an estimate for preselected data: the events are known once generated)."""
        if self.preselection is None:
            return self.n_events
        return int(self.n_events * PRESELECTED_FRACTION_ESTIMATE)


@dataclass(frozen=True)
class DatasetPlan:
    preset: Preset
    seed: int
    with_data: bool
    mu: float
    data_lumi: float | None  # /pb
    data_mixture: DataMixture | None
    tasks: tuple[FileTask, ...]
    key: str
    preselection: Preselection | None = None
    #: preselected data: the expected events per process for the luminosity (ttbar x mu)
    data_expected: tuple[tuple[str, float], ...] = ()

    @property
    def n_events(self) -> int:
        return sum(t.n_events for t in self.tasks)


@dataclass(frozen=True)
class DatasetResult:
    fileset_path: Path
    generated: bool  # False: the cached dataset was complete
    n_files: int
    n_events: int
    n_bytes: int
    files_generated: int
    events_generated: int
    seconds: float  # wall time of this call
    cpu_seconds: float  # summed CPU time of generating the files of this call

    @property
    def events_per_second(self) -> float:
        return self.events_generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_cpu_second(self) -> float:
        """Generation speed per core."""
        return self.events_generated / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def plan_dataset(
    preset: Preset,
    seed: int | None = None,
    with_data: bool | None = None,
    mu: float | None = None,
    input_format: str = "ntuple",
) -> DatasetPlan:
    """The files a preset asks for, and the key that identifies this request in the cache."""
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"input format {input_format!r}: allowed {list(INPUT_FORMATS)}")
    seed = preset.seed if seed is None else int(seed)
    data = preset.data
    with_data = (data is not None and data.enabled) if with_data is None else bool(with_data)
    if with_data and data is None:
        raise ConfigError(f"{preset.source}: preset {preset.name!r} has no 'data' section; cannot generate data")
    mu = (data.mu if data is not None else 1.0) if mu is None else float(mu)
    if mu < 0:
        raise ConfigError(f"signal strength mu must be >= 0, got {mu}")
    common: dict[str, Any] = {
        "seed": seed,
        "events_per_basket": preset.events_per_basket,
        "compression_level": preset.compression_level,
        "compressor": preset.compressor,
        "input_format": input_format,
    }
    tasks = [
        FileTask(s.process, s.variation, i, s.events_per_file, f"{s.key}/{i}.root", **common)
        for s in preset.samples
        for i in range(s.files)
    ]
    data_lumi = mixture = preselection = None
    expected: list[tuple[str, float]] = []
    if with_data:
        assert data is not None  # checked above
        analysis = load_analysis_config()
        data_lumi = data.lumi_fraction * analysis.luminosity
        expected = expected_data_yields(data_lumi, mu, process_cross_sections())
        mixture = mixture_from_yields(expected)
        n_total = round(sum(v for _, v in expected))
        if n_total < 1:
            raise ConfigError(f"{preset.source}: preset {preset.name!r}: lumi_fraction gives no data events")
        if data.preselection == "loose":
            preselection = Preselection.loose(analysis)
            tasks += _preselected_data_tasks(expected, data.files, seed, common, preselection)
        else:
            tasks += [
                FileTask(
                    DATA_PROCESS,
                    DATA_VARIATION,
                    i,
                    n,
                    f"{DATA_PROCESS}__{DATA_VARIATION}/{i}.root",
                    **common,
                    mixture=mixture,
                )
                for i, n in enumerate(data_file_sizes(n_total, data.files))
            ]
    key = content_hash(
        {
            "preset": preset.content(),
            "seed": seed,
            "with_data": with_data,
            "mu": mu if with_data else None,
            "data_lumi": data_lumi,
            "version": GENERATOR_VERSION,
            "model": model_fingerprint(),
            **(
                {"preselection": [preselection.to_dict(), PRESELECTED_DATA_VERSION]} if preselection is not None else {}
            ),
            # ntuple keys stay as they were
            **({"input_format": input_format, "writer": NANOAOD_WRITER_VERSION} if input_format != "ntuple" else {}),
        }
    )
    return DatasetPlan(
        preset, seed, with_data, mu, data_lumi, mixture, tuple(tasks), key, preselection, tuple(expected)
    )


def _preselected_data_tasks(
    expected: list[tuple[str, float]],
    files: int,
    seed: int,
    common: dict[str, Any],
    preselection: Preselection,
) -> list[FileTask]:
    """The data files of a preselected sample: per process a Poisson number of generated events
    (mean: the expected events for the luminosity), split evenly over the files."""
    generated = [
        (p, int(np.random.default_rng(seed_sequence(seed, DATA_PROCESS, "yield", p)).poisson(v))) for p, v in expected
    ]
    per_file = {p: split_evenly(n, files) for p, n in generated}
    tasks = []
    for i in range(files):
        yields = tuple((p, per_file[p][i]) for p, _ in generated)
        n = sum(k for _, k in yields)
        if n:
            tasks.append(
                FileTask(
                    DATA_PROCESS,
                    DATA_VARIATION,
                    i,
                    n,
                    f"{DATA_PROCESS}__{DATA_VARIATION}/{i}.root",
                    **common,
                    preselection=preselection,
                    yields=yields,
                )
            )
    return tasks


def _tree_of(task: FileTask) -> str:
    return NANOAOD_TREE if task.input_format == NANOAOD else TREE_NAME


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def _run_task(task: FileTask, directory: str) -> FileResult:
    write = generate_nanoaod_file if task.input_format == NANOAOD else generate_file
    return write(
        task.process,
        task.variation,
        task.n_events,
        task.seed,
        Path(directory) / task.relpath,
        file_index=task.index,
        events_per_basket=task.events_per_basket,
        compression_level=task.compression_level,
        compressor=task.compressor,
        mixture=task.mixture,
        preselection=task.preselection,
        yields=task.yields,
    )


def _run_tasks(
    tasks: list[FileTask], directory: Path, workers: int, progress: Callable[[FileResult], None] | None
) -> list[FileResult]:
    tasks = sorted(tasks, key=lambda t: -t.n_events)  # largest first balances the pool
    results = []
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(_run_task(task, str(directory)))
            if progress:
                progress(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_task, task, str(directory)) for task in tasks]
        try:
            for fut in as_completed(futures):
                results.append(fut.result())
                if progress:
                    progress(results[-1])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results


def _fileset(
    plan: DatasetPlan, nevts: dict[str, int], preselected: dict[str, tuple[int, int]] | None = None
) -> dict[str, Any]:
    """The dataset description; ``nevts``: the events of each file (by relative path),
    ``preselected``: ``{process: (generated, passed)}`` of preselected data."""
    table = load_cross_sections()
    generator = {
        "name": "utils.datasets.embedded",
        "version": GENERATOR_VERSION,
        "preset": plan.preset.name,
        "seed": plan.seed,
    }
    input_format = plan.tasks[0].input_format if plan.tasks else "ntuple"
    out: dict[str, dict[str, Any]] = {}
    # a data file's luminosity: its share of the generated events (before any preselection)
    data_generated = sum(t.n_events for t in plan.tasks if t.process == DATA_PROCESS)
    for task in plan.tasks:
        entry = out.setdefault(task.process, {}).setdefault(task.variation, {"files": [], "nevts_total": 0})
        fentry: dict[str, Any] = {"path": task.relpath, "nevts": nevts[task.relpath]}
        if task.process == DATA_PROCESS and plan.data_lumi is not None:
            fentry["lumi"] = plan.data_lumi * task.n_events / data_generated
        entry["files"].append(fentry)
        entry["nevts_total"] += nevts[task.relpath]
    for process, variations in out.items():
        for entry in variations.values():
            entry["generator"] = generator
            entry["input_format"] = input_format  # read by INPUT_FORMAT="auto"
            if process == DATA_PROCESS:
                assert plan.preset.data is not None and plan.data_mixture is not None
                entry.update(
                    lumi=plan.data_lumi,
                    lumi_fraction=plan.preset.data.lumi_fraction,
                    mu=plan.mu,
                    composition=dict(zip(plan.data_mixture.processes, plan.data_mixture.fractions, strict=True)),
                )
                if plan.preselection is not None:
                    entry["preselection"] = record(plan.preselection, preselected or {}, dict(plan.data_expected))
            elif process not in table:
                # a process outside the one cross-section table (a new signal) carries its own
                entry["xsec"] = get_process(process).xsec
    return out


def build_dataset(
    preset: str = "quickstart",
    output_root: Path | None = None,
    seed: int | None = None,
    workers: int = 1,
    with_data: bool | None = None,
    mu: float | None = None,
    force: bool = False,
    presets_path: Path | None = None,
    progress: Callable[[FileResult], None] | None = None,
    input_format: str = "ntuple",
) -> DatasetResult:
    """Generate the dataset of ``preset`` unless the cache already holds it; see the module doc.
    ``input_format="nanoaod"`` writes the same events as CMS NanoAOD into ``<preset>-nanoaod``."""
    start = time.perf_counter()
    plan = plan_dataset(get_preset(preset, presets_path), seed, with_data, mu, input_format)
    directory = Path(output_root if output_root is not None else DEFAULT_OUTPUT_ROOT) / dataset_folder(
        preset, input_format
    )
    fileset_path = directory / FILESET_NAME
    with locked(directory):
        if not force and is_complete(directory, plan.key, [t.relpath for t in plan.tasks]):
            log.info("dataset %s is complete (key %s): nothing to generate", fileset_path, plan.key[:12])
            n_bytes = sum((directory / t.relpath).stat().st_size for t in plan.tasks)
            return DatasetResult(
                fileset_path, False, len(plan.tasks), plan.n_events, n_bytes, 0, 0, time.perf_counter() - start, 0.0
            )
        fileset_path.unlink(missing_ok=True)
        manifest = read_json(directory / MANIFEST_NAME)
        resumable = not force and manifest is not None and manifest.get("key") == plan.key
        if not resumable:
            remove_stale(directory)
        remove_temporaries(directory)
        # preselected data is always generated again: its per-process counts come with the files
        todo = [
            t
            for t in plan.tasks
            if not (
                resumable and t.preselection is None and file_is_whole(directory / t.relpath, t.n_events, _tree_of(t))
            )
        ]
        check_disk_space(directory, sum(t.expected_output_events for t in todo))
        header = {
            "generator": "utils.datasets.embedded",
            "generator_version": GENERATOR_VERSION,
            "model_fingerprint": model_fingerprint(),
            "key": plan.key,
            "preset": plan.preset.name,
            "preset_content": plan.preset.content(),
            "seed": plan.seed,
            "with_data": plan.with_data,
            "mu": plan.mu if plan.with_data else None,
        }
        write_json_atomic(directory / MANIFEST_NAME, {**header, "complete": False})
        log.info(
            "generating %d of %d files (%s events) into %s with %d worker(s)",
            len(todo),
            len(plan.tasks),
            f"{sum(t.n_events for t in todo):,}",
            directory,
            workers,
        )
        results = _run_tasks(todo, directory, workers, progress)
        sizes = {t.relpath: (directory / t.relpath).stat().st_size for t in plan.tasks}
        written = {r.path.relative_to(directory).as_posix(): r.n_events for r in results}
        nevts = {t.relpath: written.get(t.relpath, t.n_events) for t in plan.tasks}
        preselected: dict[str, tuple[int, int]] = {}
        for r in results:
            for process, (generated, passed) in (r.preselected or {}).items():
                before = preselected.get(process, (0, 0))
                preselected[process] = (before[0] + generated, before[1] + passed)
        files = {t.relpath: {"nevts": nevts[t.relpath], "bytes": sizes[t.relpath]} for t in plan.tasks}
        write_json_atomic(
            directory / MANIFEST_NAME,
            {
                **header,
                "complete": True,
                "completed_utc": datetime.datetime.now(datetime.UTC).isoformat(),
                "files": files,
            },
        )
        write_json_atomic(fileset_path, _fileset(plan, nevts, preselected))
        for name in (MANIFEST_NAME, FILESET_NAME):
            make_readable(directory / name)
    return DatasetResult(
        fileset_path,
        True,
        len(plan.tasks),
        plan.n_events,
        sum(sizes.values()),
        len(results),
        sum(r.n_events for r in results),
        time.perf_counter() - start,
        sum(r.cpu_seconds for r in results),
    )


def ensure_dataset(
    preset: str = "quickstart",
    output_root: Path | None = None,
    seed: int | None = None,
    workers: int = 1,
    with_data: bool | None = None,
    mu: float | None = None,
    force: bool = False,
    input_format: str = "ntuple",
) -> Path:
    """Path of the dataset JSON of ``preset`` under ``output_root`` (default
    ``<repo>/data/embedded``), generating the files only if the cache lacks them.

    ``seed`` (default: the preset's), ``with_data`` (default: the preset's ``data.enabled``) and
    ``mu`` (signal strength of the generated data) are part of the cache key; ``input_format``
    (``ntuple`` or ``nanoaod``) chooses the writer and the folder (:func:`dataset_folder`).
    """
    return build_dataset(
        preset, output_root, seed, workers, with_data, mu, force, input_format=input_format
    ).fileset_path


def dataset_folder(preset: str, input_format: str = "ntuple") -> str:
    """The folder of a generated dataset: ``<preset>`` (ntuples) or ``<preset>-nanoaod``."""
    return preset if input_format == "ntuple" else f"{preset}-{input_format}"


def sample_paths(fileset_path: Path) -> dict[str, list[Path]]:
    """``{"process__variation": [absolute file paths]}`` of a generated fileset.json."""
    fileset_path = Path(fileset_path)
    data = read_json(fileset_path)
    if data is None:
        raise ConfigError(f"{fileset_path}: missing or not valid JSON; run `agc generate` to create it")
    root = fileset_path.parent
    return {
        f"{proc}__{var}": [root / f["path"] for f in entry["files"]]
        for proc, variations in data.items()
        for var, entry in variations.items()
    }


__all__ = [
    "DEFAULT_OUTPUT_ROOT",
    "FILESET_NAME",
    "MANIFEST_NAME",
    "DatasetPlan",
    "DatasetResult",
    "FileTask",
    "build_dataset",
    "dataset_folder",
    "ensure_dataset",
    "is_complete",
    "plan_dataset",
    "sample_paths",
]
