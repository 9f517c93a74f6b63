"""Processing per sample, per-sample histogram files, and their merge into ``histograms.root``.

A per-sample file ``<name>.root`` holds, for every (process, variation) cell the sample filled,
one histogram per region named as in ``histograms.root`` (``{region}_{process}[_{variation}]``,
flow bins and sumw2, summed over the ML classes: the preserved statistical model does not split
regions by ML score), so cabinetry reads it directly; ``<name>.json`` beside it lists the cells
and records the provenance (input files with event counts and sha256, analysis configuration
checksum, seeds). Merging rebuilds the analysis histogram from any number of such files, so
backgrounds and signals can be processed separately (in parallel, once) and give bit for bit
the ``histograms.root`` that one processing of all samples together gives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.config import AnalysisConfig
from utils.errors import AGCError, ConfigError
from utils.histograms.accumulate import AnalysisHistograms, empty_hist, histogram_name
from utils.io import atomic_path, write_json_atomic
from utils.preservation.provenance import FileRecord, Provenance, SampleInputs, sample_inputs

if TYPE_CHECKING:
    from utils.processing.run import ProcessingOptions

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
KIND = "sample-histograms"


@dataclass(frozen=True)
class SampleHistograms:
    """Histograms of some samples with the record of what made them."""

    histograms: AnalysisHistograms
    inputs: tuple[SampleInputs, ...]
    analysis_config: Mapping[str, Any]  # FileRecord of the analysis configuration used
    seeds: Mapping[str, Any]

    @property
    def cells(self) -> list[tuple[str, str]]:
        return sorted(self.histograms.filled)


def _seeds(config: AnalysisConfig, inputs: Iterable[SampleInputs]) -> dict[str, Any]:
    return {
        "jet_pt_resolution": config.pt_res_seed,
        "generators": {i.sample: i.generator.get("seed") for i in inputs if i.generator is not None},
    }


def process_samples(
    fileset: Mapping[str, Any],
    config: AnalysisConfig,
    params: ProcessingOptions | None = None,
    generators: Mapping[str, Any] | None = None,
) -> SampleHistograms:
    """Run the analysis processor (:func:`utils.run.pipeline.process_fileset`) over ``fileset``.

    ``params``: :class:`utils.processing.run.ProcessingOptions` (default: one core, iterative executor,
    every systematic). ML classification is not used: the preserved statistical model does not
    split regions by ML score.
    """
    from utils.processing.run import ProcessingOptions, process_fileset

    params = params if params is not None else ProcessingOptions(executor="iterative", workers=1)
    result = process_fileset(dict(fileset), params, config, classifier=None)
    if result.histograms is None:
        raise AGCError("processing produced no histograms (disable_processing is set)")
    inputs = tuple(sample_inputs(fileset, generators))
    log.info("processed %s: %d events", ", ".join(fileset), sum(result.nevents.values()))
    return SampleHistograms(result.histograms, inputs, FileRecord.of(config.source).to_dict(), _seeds(config, inputs))


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(SIDECAR_SUFFIX)


def write_sample_histograms(
    result: SampleHistograms, path: str | Path, config: AnalysisConfig, parameters: Mapping[str, Any] | None = None
) -> Path:
    """Write ``path`` (ROOT, atomically) and its provenance sidecar ``path.with_suffix('.json')``."""
    import uproot

    path = Path(path)
    h = result.histograms.hist
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for process, variation in result.cells:
            for region in config.region_names:
                cell: dict[str, Any] = {
                    "region": region,
                    "process": process,
                    "variation": variation,
                    "classification": sum,
                }
                f[histogram_name(region, process, variation)] = h[cell]  # type: ignore[index]
    record = Provenance(
        KIND,
        inputs={"samples": [i.to_dict() for i in result.inputs]},
        configuration={"analysis_config": dict(result.analysis_config)},
        seeds=dict(result.seeds),
        parameters=dict(parameters or {}),
    )
    record.record_outputs(path.parent, [path])
    write_json_atomic(sidecar(path), {"cells": [list(c) for c in result.cells], **record.to_dict()})
    log.info("wrote %d cells to %s", len(result.cells), path)
    return path


def read_sample_histograms(paths: Iterable[str | Path], config: AnalysisConfig) -> SampleHistograms:
    """Read and merge per-sample files (each with its sidecar) into one :class:`SampleHistograms`.

    Every part must have been made with the same analysis configuration (same checksum) and no
    cell may come twice.
    """
    import uproot

    parts = []
    for path in paths:
        path = Path(path)
        meta_path = sidecar(path)
        if not path.is_file() or not meta_path.is_file():
            raise AGCError(f"{path}: per-sample histograms or their record {meta_path.name} missing")
        parts.append((path, json.loads(meta_path.read_text())))
    if not parts:
        raise AGCError("no per-sample histogram files to merge")
    checksums = {p["configuration"]["analysis_config"]["sha256"] for _, p in parts}
    if len(checksums) != 1:
        listing = ", ".join(f"{path.name}: {p['configuration']['analysis_config']['sha256'][:12]}" for path, p in parts)
        raise ConfigError(f"per-sample histograms made with different analysis configurations ({listing})")
    owner: dict[tuple[str, str], Path] = {}
    for path, meta in parts:
        for process, variation in meta["cells"]:
            if (process, variation) in owner:
                raise AGCError(f"{process}/{variation} is in both {owner[process, variation]} and {path}")
            owner[process, variation] = path
    processes = sorted({p for p, _ in owner})
    variations = sorted({v for _, v in owner}, key=lambda v: (v != "nominal", v))
    h = empty_hist(config, processes, variations)
    view = h.view(flow=True)
    for path, meta in parts:
        with uproot.open(path) as f:
            for process, variation in meta["cells"]:
                ip, iv = h.axes["process"].index(process), h.axes["variation"].index(variation)
                for r, region in enumerate(config.region_names):
                    obj = f[histogram_name(region, process, variation)]
                    # all in class 0: the sum over classes is then the stored sum, bit for bit
                    view.value[:, r, ip, iv, 0] = np.asarray(obj.values(flow=True), dtype=float)  # type: ignore[attr-defined]
                    view.variance[:, r, ip, iv, 0] = np.asarray(obj.variances(flow=True), dtype=float)  # type: ignore[attr-defined]
    inputs = tuple(SampleInputs.from_dict(s) for _, meta in parts for s in meta["inputs"]["samples"])
    first = parts[0][1]
    return SampleHistograms(
        AnalysisHistograms(h, frozenset(owner)),
        inputs,
        first["configuration"]["analysis_config"],
        {
            "jet_pt_resolution": first["seeds"].get("jet_pt_resolution"),
            "generators": {k: v for _, meta in parts for k, v in meta["seeds"].get("generators", {}).items()},
        },
    )


def merge_histograms(paths: Iterable[str | Path], output: str | Path, config: AnalysisConfig) -> Path:
    """Merge per-sample files into ``output``, a ``histograms.root`` as the pipeline writes it
    (:func:`utils.histograms.accumulate.save_histograms`, pseudo-data included); its sidecar records every
    part's inputs."""
    from utils.histograms.accumulate import save_histograms

    merged = read_sample_histograms(paths, config)
    output = Path(output)
    save_histograms(merged.histograms, output, config)
    record = Provenance(
        "histograms",
        inputs={"samples": [i.to_dict() for i in merged.inputs]},
        configuration={"analysis_config": dict(merged.analysis_config)},
        seeds=dict(merged.seeds),
    )
    record.record_outputs(output.parent, [output])
    write_json_atomic(sidecar(output), {"cells": [list(c) for c in merged.cells], **record.to_dict()})
    return output


def dataset_samples(spec: str) -> list[str]:
    """The samples (``process__variation``) of a dataset, known before it exists: from the
    preset of ``embedded:<preset>`` (nothing is generated), else from its description JSON."""
    if spec.startswith("embedded:"):
        from utils.datasets.embedded import get_preset, plan_dataset

        plan = plan_dataset(get_preset(spec.split(":", 1)[1]))
        return sorted({f"{t.process}__{t.variation}" for t in plan.tasks})
    from utils.datasets.fileset import load_dataset_description
    from utils.datasets.resolve import resolve_dataset

    description = load_dataset_description(resolve_dataset(spec))
    return sorted(f"{p}__{v}" for p, variations in description.items() for v in variations)
