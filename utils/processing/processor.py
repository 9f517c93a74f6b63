"""The coffea processor of the AGC ttbar analysis.

Per chunk it reads exactly the columns in :data:`utils.processing.selection.READ_BRANCHES`, runs the
selection kernel once per jet-kinematic variation, classifies the selected events with the
per-region ML models when given, and fills fixed-point histogram accumulators for the nominal
histograms and every weight, jet-kinematic and alternative-sample variation; with a classifier,
also the score histograms of the nominal MC events (:mod:`utils.ml.scores`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import awkward as ak
import numpy as np
from coffea import processor
from coffea.processor import executor as coffea_executor

from utils.config import AnalysisConfig
from utils.datasets.fileset import DATA_PROCESS
from utils.datasets.inputs import BadInput, remote_problem
from utils.datasets.urls import is_remote
from utils.errors import ConfigError, InputFileError
from utils.histograms.accumulate import HistogramAccumulator
from utils.ml.assignment.features import Scorer, assign, assignment_inputs, chunk_leptons
from utils.ml.assignment.histograms import FeatureAccumulator
from utils.ml.scores import ScoreAccumulator
from utils.processing.fastio import use_fast_zlib
from utils.processing.nanoaod import IO_BRANCHES as NANOAOD_IO_BRANCHES
from utils.processing.nanoaod import select_nanoaod_variations
from utils.processing.schema import branch_to_field
from utils.processing.selection import ChunkArrays, EventSelection, chunk_arrays, select_variations
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
    """What the processor needs of an ML classifier (see :mod:`utils.ml.inference`): per region
    its feature names (None: no model), its scores of a feature matrix, and the threshold above
    which an event is classified signal-like."""

    @property
    def threshold(self) -> float: ...

    def feature_names(self, region: str) -> tuple[str, ...] | None: ...

    def scores(self, region: str, features: np.ndarray) -> np.ndarray: ...


def sample_variations(config: AnalysisConfig, process: str, variation: str) -> tuple[str, ...]:
    """Every histogram variation a sample fills, nominal (or its own name) first."""
    if variation != "nominal" or process == DATA_PROCESS:
        return (variation,)
    return (*config.jet_variations, *config.weight_variations(process))


def _range(meta) -> str:
    return f"{meta['entrystart']}-{meta['entrystop']}"


def entries_read(events) -> dict[str, dict[str, int]]:
    """``{sample: {file: entries}}`` of one chunk; summed over the chunks, the entries of each
    file really read (the normalisation is checked against them)."""
    meta = events.metadata
    n = meta["entrystop"] - meta["entrystart"] if "entrystop" in meta else len(events)  # (warm-up: no range)
    return {meta["dataset"]: {meta["filename"]: int(n)}}


def opened_file_uuid(events) -> str | None:
    """The UUID of the ROOT file a chunk's events were read from (the file coffea opened for
    this chunk), or None when the events do not come from an opened file."""
    factory = events.attrs.get("@events_factory") if hasattr(events, "attrs") else None
    handle = getattr(factory, "file_handle", None)
    uuid = getattr(getattr(handle, "file", handle), "uuid", None)
    return None if uuid is None else str(uuid)


def file_uuid_problem(events) -> str | None:
    """What is wrong when the file a chunk opened is not the file the input checks read: coffea
    plans the chunks from the checks' metadata (entries, UUID) and carries the UUID in each chunk
    (``fileuuid``) without comparing it with the file it opens; a file replaced after the checks
    would be read with the old entry ranges and normalised with the old count."""
    expected = events.metadata.get("fileuuid")
    opened = opened_file_uuid(events)
    if not expected or opened is None or opened == expected:
        return None
    return (f"the file's UUID is {opened} but the input checks read {expected}: "
            "the file was replaced during the run")  # fmt: skip


def kinematics_problem(arrays: ChunkArrays, jet_pt_max: float) -> str | None:
    """What is wrong with a chunk's kinematics (non-finite values, a jet above ``jet_pt_max``),
    or None. Such values would overflow the fixed-point sums or fill flow bins with nonsense."""
    problems = []
    bad_events: set[int] = set()
    # (branch, offsets, values, whether the pT ceiling applies)
    columns = [("jet_pt", arrays.jet_offsets, arrays.jet_pt, True),
               *((name, arrays.jet_offsets, getattr(arrays, name), False)
                 for name in ("jet_eta", "jet_phi", "jet_mass", "jet_btag")),
               ("electron_pt", arrays.el_offsets, arrays.el_pt, True),
               ("muon_pt", arrays.mu_offsets, arrays.mu_pt, True)]  # fmt: skip
    for name, offsets, values, ceiling in columns:
        bad = ~np.isfinite(values)
        if ceiling:
            bad |= np.abs(values) > jet_pt_max
        if bad.any():  # the events are found only then: np.repeat over every jet costs more than the checks
            events = set(np.repeat(np.arange(arrays.n_events), np.diff(offsets))[bad].tolist())
            bad_events |= events
            problems.append(f"{name} non-finite or above {jet_pt_max:g} GeV in {len(events)} event(s)"
                            if ceiling else f"{name} non-finite in {len(events)} event(s)")  # fmt: skip
    if not problems:
        return None
    return (f"{len(bad_events)} event(s) with absurd kinematics ({'; '.join(problems)}; "
            "the ceiling is objects.jet_pt_max of the analysis configuration)")  # fmt: skip


class TtbarAnalysis(processor.ProcessorABC):
    """The AGC ttbar processor.

    Parameters
    ----------
    config : the analysis configuration
    classifier : per-region ML classifier; ``None`` puts every event in classification 0. With
        one, each nominal MC sample also fills its events' score histograms (``ml_scores``,
        :class:`utils.ml.scores.ScoreAccumulator`; nominal jets, unit weights)
    disable_processing : I/O-only mode: read ``IO_BRANCH_SETS[io_file_percent]`` and nothing else
    io_file_percent : 4, 15, 25 or 50
    systematics : fill the weight and jet-kinematic variations of nominal samples
    input_format : "ntuple" (the 2015 POET ntuples, the fast kernel) or "nanoaod" (CMS NanoAOD,
        :mod:`utils.processing.nanoaod`; no ML classification)
    jet_assigner : NanoAOD only: the jet-parton assignment's scorer
        (:class:`utils.ml.assignment.model.JetAssigner`); the 20 features of the chosen
        assignment of each 4j2b event fill ``hists_ml`` (the analysis histograms do not change)
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
        jet_assigner: Scorer | None = None,
    ):
        if input_format not in INPUT_FORMATS:
            raise ConfigError(f"INPUT_FORMAT={input_format!r}: allowed {list(INPUT_FORMATS)}")
        if jet_assigner is not None and input_format != "nanoaod":
            raise ConfigError("the jet-parton assignment needs NanoAOD input (INPUT_FORMAT='nanoaod')")
        self.jet_assigner = jet_assigner
        if input_format == "nanoaod" and classifier is not None:
            raise ConfigError("USE_ML: the event classifier is trained on the ntuple features; run NanoAOD with ML off")
        self.input_format = input_format
        self.config = config
        self.classifier = classifier
        # the features the classifier reads in each region (none without one): the kernel
        # computes only those of its optional features
        self._classifier_features: dict[str, tuple[str, ...]] = (
            {} if classifier is None else {r: classifier.feature_names(r) or () for r in config.region_names}
        )
        self.disable_processing = disable_processing
        if io_file_percent not in IO_BRANCH_SETS:
            raise ValueError(f"io_file_percent must be one of {sorted(IO_BRANCH_SETS)}, got {io_file_percent!r}")
        self.io_file_percent = io_file_percent
        self.systematics = systematics
        self.on_bad_input = on_bad_input

    # -- I/O only -----------------------------------------------------------------------------
    def _read_only(self, events) -> dict[str, Any]:
        replaced = file_uuid_problem(events)
        if replaced is not None:
            return self._bad_chunk(events, None, f"entries {_range(events.metadata)}: {replaced}")
        if self.input_format == "nanoaod":
            for branch in NANOAOD_IO_BRANCHES:
                collection, _, field = branch.partition("_")
                ak.materialize(events[collection][field])
        else:
            for branch in IO_BRANCH_SETS[self.io_file_percent]:
                arr = events
                for part in branch_to_field(branch):
                    arr = arr[part]
                ak.materialize(arr)
        return {"nevents": {events.metadata["dataset"]: len(events)}, "entries": entries_read(events),
                "peak_memory": PeakMemory.now()}  # fmt: skip

    # -- classification -------------------------------------------------------------------------
    def scores(self, sel: EventSelection) -> np.ndarray:
        """Each selected event's score of its region's model (float32; NaN in a region without
        a model, and every event without a classifier)."""
        out = np.full(len(sel.index), np.nan, dtype=np.float32)
        if self.classifier is None or len(sel.index) == 0:
            return out
        for r, region in enumerate(self.config.regions):
            names = self.classifier.feature_names(region.name)
            if names is None:
                continue
            mask = sel.region == r
            if mask.any():
                out[mask] = self.classifier.scores(region.name, sel.feature_matrix(names, mask))
        return out

    def classify(self, sel: EventSelection, scores: np.ndarray | None = None) -> np.ndarray:
        """1 where an event's score (:meth:`scores`, or the ``scores`` already computed) is above
        the classifier's threshold, else 0 (every event without a classifier or a model)."""
        if self.classifier is None:
            return np.zeros(len(sel.index), dtype=np.int64)
        s = self.scores(sel) if scores is None else scores
        return (s > self.classifier.threshold).astype(np.int64)

    def _scored_regions(self) -> np.ndarray:
        """Indices of the regions that have a model (the classifier's)."""
        assert self.classifier is not None
        return np.array([r for r, region in enumerate(self.config.regions)
                         if self.classifier.feature_names(region.name) is not None], dtype=np.int64)  # fmt: skip

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
        replaced = file_uuid_problem(events)
        if replaced is not None:
            return self._bad_chunk(events, acc, f"entries {_range(meta)}: {replaced}")
        ml_acc = FeatureAccumulator.empty(process, variations) if self.jet_assigner is not None else None
        # the classifier's scores of a nominal MC sample's nominal events, for the score figures
        scores_acc = (ScoreAccumulator.empty(process, len(cfg.regions))
                      if self.classifier is not None and variation == "nominal" and process != DATA_PROCESS
                      else None)  # fmt: skip
        jet_variations = cfg.jet_variations if variations[0] == "nominal" and len(variations) > 1 else ("nominal",)
        try:
            if self.input_format == "nanoaod":
                n_events = len(events)
                selections: dict[str, Any] = select_nanoaod_variations(events, cfg, jet_variations)
            else:
                arrays = chunk_arrays(events)
                n_events = arrays.n_events
        except Exception as err:  # corrupt basket, truncated read, wrong type: a clear report
            remote = remote_problem(err) if is_remote(str(meta["filename"])) else None
            detail = f": {remote}" if remote else f" ({type(err).__name__}: {err})"
            return self._bad_chunk(events, acc, f"cannot read entries {_range(meta)}{detail}", err)
        if self.input_format != "nanoaod":
            insane = kinematics_problem(arrays, cfg.jet_pt_max)
            if insane is not None:
                return self._bad_chunk(events, acc, f"entries {_range(meta)}: {insane}")
            selections = select_variations(arrays, cfg, jet_variations, self._classifier_features)
        selected: dict[str, int] = {}
        leptons = chunk_leptons(events, cfg) if ml_acc is not None else None
        for jet_variation, sel in selections.items():
            obs = sel.observable(cfg)
            scores = self.scores(sel)
            cls = self.classify(sel, scores)
            if scores_acc is not None and jet_variation == "nominal":
                scored = np.isin(sel.region, self._scored_regions())
                scores_acc.fill(sel.region[scored], scores[scored])
            name = variation if jet_variation == "nominal" else jet_variation
            acc.fill(name, sel.region, obs, cls)
            for r, region in enumerate(cfg.region_names):
                selected[f"{name}/{region}"] = int(np.count_nonzero(sel.region == r))
            if jet_variation == "nominal" and len(variations) > 1:
                self._fill_weight_variations(acc, sel, obs, cls, process)
            if ml_acc is not None:
                self._fill_assignment(ml_acc, events, leptons, sel, jet_variation, name, process, len(variations) > 1)
        hists_ml = {"hists_ml": {dataset: ml_acc}} if ml_acc is not None else {}
        ml_scores = {"ml_scores": {dataset: scores_acc}} if scores_acc is not None else {}
        return {
            "hists": {dataset: acc},
            **hists_ml,
            **ml_scores,
            "nevents": {dataset: n_events},
            "entries": entries_read(events),
            "selected": {dataset: selected},
            "peak_memory": PeakMemory.now(),
        }

    def _bad_chunk(self, events, acc: HistogramAccumulator | None, problem: str, err: Exception | None = None
                   ) -> dict[str, Any]:  # fmt: skip
        meta = events.metadata
        start, stop = meta["entrystart"], meta["entrystop"]
        if self.on_bad_input != "skip":
            raise InputFileError(
                f"{meta['filename']}: {problem}.\n  sample: {meta['dataset']}\n  what to do: replace the file, "
                "or rerun with ON_BAD_INPUT='skip' to leave these entries out (the normalisation then uses "
                "the events actually processed)"
            ) from err
        log.warning("skipping %s entries %d-%d: %s", meta["filename"], start, stop, problem)
        bad = BadInput(meta["dataset"], meta["filename"], problem, stop - start, start, stop)
        out = {"nevents": {meta["dataset"]: 0}, "bad_chunks": [bad], "entries": entries_read(events),
               "peak_memory": PeakMemory.now()}  # fmt: skip
        return out if acc is None else {"hists": {meta["dataset"]: acc}, **out}

    def _weight_variations(self, weight_jet_pt: np.ndarray, process: str):
        """(name, event weights) of every weight variation of ``process``."""
        cfg = self.config
        for i in range(cfg.btag_n_jets):
            shift = cfg.btag_magnitude * weight_jet_pt[:, i] / cfg.btag_pt_reference
            yield f"{cfg.btag_name}_{i}_up", 1.0 + shift
            yield f"{cfg.btag_name}_{i}_down", 1.0 - shift
        for fw in cfg.flat_weights:
            if process in fw.processes:
                ones = np.ones(len(weight_jet_pt))
                yield f"{fw.name}_up", ones * (1.0 + fw.magnitude)
                yield f"{fw.name}_down", ones * (1.0 - fw.magnitude)

    def _fill_weight_variations(self, acc, sel: EventSelection, obs, cls, process: str) -> None:
        for name, weight in self._weight_variations(sel.weight_jet_pt, process):
            acc.fill(name, sel.region, obs, cls, weight)

    def _fill_assignment(self, ml_acc: FeatureAccumulator, events, leptons, sel, jet_variation: str, name: str,
                         process: str, weight_variations: bool) -> None:  # fmt: skip
        """The chosen assignment's features of the selection's 4j2b events, for the variation
        ``name`` and (nominal jets of a nominal sample) every weight variation."""
        assert self.jet_assigner is not None
        inputs, in_region = assignment_inputs(events, self.config, sel, leptons)
        features = assign(inputs, self.jet_assigner).features
        ml_acc.fill(name, features)
        if jet_variation == "nominal" and weight_variations:
            for variation, weight in self._weight_variations(sel.weight_jet_pt[in_region], process):
                ml_acc.fill(variation, features, weight)

    def postprocess(self, accumulator):
        return accumulator


def _utf8_hash(items) -> int:
    """coffea's persistent hash of work items, over UTF-8 instead of ASCII bytes: the same value
    for every ASCII path, and no ``UnicodeEncodeError`` for a path such as ``données/ü.root``."""
    digest = hashlib.md5(";".join(str(x) for x in items).encode("utf-8"))
    return int(digest.hexdigest()[:16], base=16)


# in every process that unpickles the processor (the driver and the workers alike)
coffea_executor._hash = _utf8_hash
