"""The coffea processor of the AGC ttbar analysis.

Per chunk it reads exactly the columns in :data:`utils.processing.selection.READ_BRANCHES`, runs the
selection kernel once per jet-kinematic variation, classifies the selected events with the
per-region ML models when given, and fills fixed-point histogram accumulators for the nominal
histograms and every weight, jet-kinematic and alternative-sample variation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import awkward as ak
import numpy as np
from coffea import processor

from utils.config import AnalysisConfig
from utils.datasets.fileset import DATA_PROCESS
from utils.datasets.inputs import BadInput
from utils.errors import ConfigError, InputFileError
from utils.histograms.accumulate import HistogramAccumulator
from utils.processing.fastio import use_fast_zlib
from utils.processing.nanoaod import IO_BRANCHES as NANOAOD_IO_BRANCHES
from utils.processing.nanoaod import select_nanoaod_variations
from utils.processing.schema import branch_to_field
from utils.processing.selection import EventSelection, chunk_arrays, select_variations
from utils.runinfo import peak_memory_mb

log = logging.getLogger(__name__)

INPUT_FORMATS = ("ntuple", "nanoaod")

# I/O-only mode: fixed branch sets that make up about this per cent of a real file's bytes
IO_BRANCH_SETS: dict[int, tuple[str, ...]] = {
    4: ("jet_pt", "jet_eta", "jet_phi", "jet_btag", "jet_e", "muon_pt", "electron_pt"),
}
IO_BRANCH_SETS[15] = (*IO_BRANCH_SETS[4], "trigobj_e")
IO_BRANCH_SETS[25] = (*IO_BRANCH_SETS[15], "trigobj_pt")
IO_BRANCH_SETS[50] = (*IO_BRANCH_SETS[25], "trigobj_eta", "trigobj_phi", "jet_px", "jet_py", "jet_pz", "jet_ch")


@dataclass(frozen=True)
class PeakMemory:
    """Peak resident memory (MB) of the worker processes; accumulates as the maximum."""

    mb: float

    @classmethod
    def now(cls) -> PeakMemory:
        return cls(peak_memory_mb(children=False))

    def __add__(self, other: PeakMemory) -> PeakMemory:
        return PeakMemory(max(self.mb, other.mb))


class Classifier(Protocol):
    """What the processor needs of an ML classifier (see :mod:`utils.ml.inference`)."""

    def feature_names(self, region: str) -> tuple[str, ...] | None: ...

    def classify(self, region: str, features: np.ndarray) -> np.ndarray: ...


def sample_variations(config: AnalysisConfig, process: str, variation: str) -> tuple[str, ...]:
    """Every histogram variation a sample fills, nominal (or its own name) first."""
    if variation != "nominal" or process == DATA_PROCESS:
        return (variation,)
    return (*config.jet_variations, *config.weight_variations(process))


class TtbarAnalysis(processor.ProcessorABC):
    """The AGC ttbar processor.

    Parameters
    ----------
    config : the analysis configuration
    classifier : per-region ML classifier; ``None`` puts every event in classification 0
    disable_processing : I/O-only mode: read ``IO_BRANCH_SETS[io_file_percent]`` and nothing else
    io_file_percent : 4, 15, 25 or 50
    systematics : fill the weight and jet-kinematic variations of nominal samples
    input_format : "ntuple" (the 2015 POET ntuples, the fast kernel) or "nanoaod" (CMS NanoAOD,
        :mod:`utils.processing.nanoaod`; no ML classification)
    on_bad_input : "fail" raises :class:`InputFileError` for a chunk that cannot be read;
        "skip" leaves it out and reports it (``bad_chunks``) with the events lost
    """

    def __init__(
        self,
        config: AnalysisConfig,
        classifier: Classifier | None = None,
        disable_processing: bool = False,
        io_file_percent: int = 4,
        systematics: bool = True,
        on_bad_input: str = "fail",
        input_format: str = "ntuple",
    ):
        if input_format not in INPUT_FORMATS:
            raise ConfigError(f"INPUT_FORMAT={input_format!r}: allowed {list(INPUT_FORMATS)}")
        if input_format == "nanoaod" and classifier is not None:
            raise ConfigError("USE_ML: the event classifier is trained on the ntuple features; run NanoAOD with ML off")
        self.input_format = input_format
        self.config = config
        self.classifier = classifier
        self.disable_processing = disable_processing
        if io_file_percent not in IO_BRANCH_SETS:
            raise ValueError(f"io_file_percent must be one of {sorted(IO_BRANCH_SETS)}, got {io_file_percent!r}")
        self.io_file_percent = io_file_percent
        self.systematics = systematics
        self.on_bad_input = on_bad_input

    # -- I/O only -----------------------------------------------------------------------------
    def _read_only(self, events) -> dict[str, Any]:
        if self.input_format == "nanoaod":
            for branch in NANOAOD_IO_BRANCHES:
                collection, _, field = branch.partition("_")
                ak.materialize(events[collection][field])
            return {"nevents": {events.metadata["dataset"]: len(events)}, "peak_memory": PeakMemory.now()}
        for branch in IO_BRANCH_SETS[self.io_file_percent]:
            arr = events
            for part in branch_to_field(branch):
                arr = arr[part]
            ak.materialize(arr)
        return {"nevents": {events.metadata["dataset"]: len(events)}, "peak_memory": PeakMemory.now()}

    # -- classification -------------------------------------------------------------------------
    def classify(self, sel: EventSelection) -> np.ndarray:
        cls = np.zeros(len(sel.index), dtype=np.int64)
        if self.classifier is None or len(sel.index) == 0:
            return cls
        for r, region in enumerate(self.config.regions):
            names = self.classifier.feature_names(region.name)
            if names is None:
                continue
            mask = sel.region == r
            if mask.any():
                cls[mask] = self.classifier.classify(region.name, sel.feature_matrix(names, mask))
        return cls

    # -- processing -----------------------------------------------------------------------------
    def process(self, events) -> dict[str, Any]:
        use_fast_zlib()  # in every worker: ISA-L inflates the baskets (identical bytes, ~2x faster)
        if self.disable_processing:
            return self._read_only(events)
        cfg = self.config
        meta = events.metadata
        dataset, process, variation = meta["dataset"], meta["process"], meta["variation"]
        variations = sample_variations(cfg, process, variation) if self.systematics else (variation,)
        acc = HistogramAccumulator.empty(cfg, process, variations)
        jet_variations = cfg.jet_variations if variations[0] == "nominal" and len(variations) > 1 else ("nominal",)
        try:
            if self.input_format == "nanoaod":
                n_events = len(events)
                selections: dict[str, Any] = select_nanoaod_variations(events, cfg, jet_variations)
            else:
                arrays = chunk_arrays(events)
                n_events = arrays.n_events
                selections = select_variations(arrays, cfg, jet_variations)
        except Exception as err:  # corrupt basket, truncated read, wrong type: a clear report
            return self._bad_chunk(events, acc, err)
        selected: dict[str, int] = {}
        for jet_variation, sel in selections.items():
            obs = sel.observable(cfg)
            cls = self.classify(sel)
            name = variation if jet_variation == "nominal" else jet_variation
            acc.fill(name, sel.region, obs, cls)
            for r, region in enumerate(cfg.region_names):
                selected[f"{name}/{region}"] = int(np.count_nonzero(sel.region == r))
            if jet_variation == "nominal" and len(variations) > 1:
                self._fill_weight_variations(acc, sel, obs, cls, process)
        return {
            "hists": {dataset: acc},
            "nevents": {dataset: n_events},
            "selected": {dataset: selected},
            "peak_memory": PeakMemory.now(),
        }

    def _bad_chunk(self, events, acc: HistogramAccumulator, err: Exception) -> dict[str, Any]:
        meta = events.metadata
        start, stop = meta["entrystart"], meta["entrystop"]
        problem = f"cannot read entries {start}-{stop} ({type(err).__name__}: {err})"
        if self.on_bad_input != "skip":
            raise InputFileError(
                f"{meta['filename']}: {problem}.\n  sample: {meta['dataset']}\n  what to do: replace the file, "
                "or rerun with ON_BAD_INPUT='skip' to leave these entries out (the normalisation then uses "
                "the events actually processed)"
            ) from err
        log.warning("skipping %s entries %d-%d: %s", meta["filename"], start, stop, err)
        bad = BadInput(meta["dataset"], meta["filename"], problem, stop - start, start, stop)
        return {"hists": {meta["dataset"]: acc}, "nevents": {meta["dataset"]: 0}, "bad_chunks": [bad],
                "peak_memory": PeakMemory.now()}  # fmt: skip

    def _fill_weight_variations(self, acc, sel: EventSelection, obs, cls, process: str) -> None:
        cfg = self.config
        for i in range(cfg.btag_n_jets):
            shift = cfg.btag_magnitude * sel.weight_jet_pt[:, i] / cfg.btag_pt_reference
            acc.fill(f"{cfg.btag_name}_{i}_up", sel.region, obs, cls, 1.0 + shift)
            acc.fill(f"{cfg.btag_name}_{i}_down", sel.region, obs, cls, 1.0 - shift)
        for fw in cfg.flat_weights:
            if process in fw.processes:
                ones = np.ones(len(obs))
                acc.fill(f"{fw.name}_up", sel.region, obs, cls, ones * (1.0 + fw.magnitude))
                acc.fill(f"{fw.name}_down", sel.region, obs, cls, ones * (1.0 - fw.magnitude))

    def postprocess(self, accumulator):
        return accumulator
