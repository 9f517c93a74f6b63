"""Training of the jet-assignment models: tables from NanoAOD files, reproducible training per
event parity, held-out evaluation, model files and cards.

Data: ttbar NanoAOD events with GenPart chains, selected by the processor's own NanoAOD selection
(:func:`utils.processing.nanoaod.select_nanoaod`, nominal jets), 4j2b; inputs by
:func:`utils.ml.assignment.features.assignment_inputs`, labels by
:func:`utils.ml.assignment.truth.jet_labels`.

Training (as the AGC's): per event the permutations of its first ``min(nJet, train_jets)`` jets
(``train_jets`` 4: 12 permutations), events whose correct assignment is among them. The loss is
the cross-entropy of a softmax over each event's permutation scores (the network learns to rank
the correct permutation first, which is how it is used). The model of parity p trains on events
with ``event % 2 == p``; a hash of the event number keeps ``validation_fraction`` of them for
early stopping. Evaluation: on the events of the other parity, all their jets (up to 6).

Reproducibility: :func:`utils.ml.training.deterministic_torch` (one thread, deterministic
algorithms, named seed), batch order from a seeded generator; in-memory archives with fixed names.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.config import AnalysisConfig, load_analysis_config
from utils.errors import ModelError
from utils.io import atomic_path, sha256_file, write_json_atomic
from utils.ml.assignment.features import (
    FEATURE_NAMES,
    MAX_JETS,
    MIN_JETS,
    AssignmentInputs,
    assign,
    assignment_inputs,
    baseline_permutation,
    permutation_features,
    permutation_index,
    permutations,
)
from utils.ml.assignment.model import CARD_VERSION, PARITIES, PermutationModel, file_names, load_assignment_card
from utils.ml.assignment.truth import jet_labels, truth_permutation
from utils.ml.card import DEFAULT_MODELS_DIR, sha256_bytes
from utils.ml.features import display_path
from utils.ml.model import Normalisation
from utils.ml.training import deterministic_torch, input_normalisation, library_versions, serialise
from utils.processing.randoms import splitmix64

log = logging.getLogger(__name__)

VALIDATION_SALT = 0x7E57_A551_6000


@dataclass(frozen=True)
class AssignmentSettings:
    """Hyper-parameters of the jet-assignment training (both parities)."""

    hidden: tuple[int, ...] = (64, 64)
    seed: int = 2024
    learning_rate: float = 2e-3
    batch_size: int = 128  # events per batch
    max_epochs: int = 40
    patience: int = 6
    train_jets: int = 4
    validation_fraction: float = 0.2
    max_events_per_parity: int = 20_000

    def __post_init__(self) -> None:
        if not MIN_JETS <= self.train_jets <= MAX_JETS:
            raise ModelError(f"train_jets={self.train_jets}: between {MIN_JETS} and {MAX_JETS}")


@dataclass
class AssignmentTable:
    """Selected 4j2b events of the training files: inputs, jet labels ``[n, 6]``, and the files."""

    inputs: AssignmentInputs
    labels: np.ndarray
    files: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def truth(self, max_jets: int = MAX_JETS) -> tuple[np.ndarray, np.ndarray]:
        """(jets used = min(n_jets, max_jets), row of the correct permutation or -1) per event."""
        n = np.minimum(self.inputs.n_jets, max_jets)
        return n, truth_permutation(self.labels, n)


def read_file(path: str, config: AnalysisConfig, chunksize: int = 200_000) -> tuple[AssignmentInputs, np.ndarray, int]:
    """Inputs and jet labels of the 4j2b events of one NanoAOD file, and its entries."""
    import uproot
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from utils.processing.nanoaod import TREE_NAME, select_nanoaod

    try:
        with uproot.open(path) as f:
            n_entries = int(f[TREE_NAME].num_entries)
            if "GenPart_statusFlags" not in f[TREE_NAME]:
                raise ModelError(f"{path}: no GenPart branches: the truth labels need the generator record")
    except (OSError, KeyError, ValueError) as err:
        raise ModelError(f"{path}: cannot read tree {TREE_NAME!r} of a training file: {err}") from None
    inputs, labels = [], []
    for start in range(0, n_entries, chunksize):
        events = NanoEventsFactory.from_root(
            {path: TREE_NAME}, schemaclass=NanoAODSchema, mode="virtual",
            entry_start=start, entry_stop=min(n_entries, start + chunksize),
        ).events()  # fmt: skip
        sel = select_nanoaod(events, config, "nominal")
        inp, mask = assignment_inputs(events, config, sel)
        if len(inp) == 0:
            continue
        gen = events[sel.index[mask]].GenPart
        inputs.append(inp)
        labels.append(jet_labels(gen, inp.jets[..., 1], inp.jets[..., 2], inp.n_jets))
    lab = np.concatenate(labels) if labels else np.zeros((0, MAX_JETS), np.int64)
    return AssignmentInputs.concatenate(inputs), lab, n_entries


def _shown(path: str | Path, root: Path | None) -> str:
    if root is not None and Path(path).resolve().is_relative_to(root.resolve()):
        return str(Path(path).resolve().relative_to(root.resolve()))
    return display_path(path)


def build_table(
    files: list[str], config: AnalysisConfig, source: dict[str, Any] | None = None, root: Path | None = None
) -> AssignmentTable:
    """The table of ``files``; their paths are recorded relative to ``root`` (the dataset's
    folder) when inside it, else to the repository."""
    parts, labels, described = [], [], []
    for path in files:
        inp, lab, n = read_file(str(path), config)
        parts.append(inp)
        labels.append(lab)
        described.append(
            {"path": _shown(path, root), "entries": n, "selected_4j2b": len(inp), "sha256": sha256_file(path)}
        )
        log.info("%s: %d of %d events in 4j2b", path, len(inp), n)
    lab = np.concatenate(labels) if labels else np.zeros((0, MAX_JETS), np.int64)
    return AssignmentTable(AssignmentInputs.concatenate(parts), lab, described, dict(source or {}))


def _validation_mask(event: np.ndarray, fraction: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = splitmix64(np.asarray(event, dtype=np.uint64) ^ np.uint64(VALIDATION_SALT))
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def training_tensors(inputs: AssignmentInputs, n_used: np.ndarray, truth: np.ndarray):
    """Padded permutation features ``[n, P_max, 20]``, the padding mask and the targets."""
    p_max = len(permutations(int(n_used.max()))) if len(n_used) else 0
    x = np.zeros((len(inputs), p_max, len(FEATURE_NAMES)), np.float32)
    valid = np.zeros((len(inputs), p_max), bool)
    for n in range(MIN_JETS, MAX_JETS + 1):
        rows = np.flatnonzero(n_used == n)
        if len(rows):
            x[rows, : len(permutations(n))] = permutation_features(inputs, n, rows)
            valid[rows, : len(permutations(n))] = True
    return torch.from_numpy(x), torch.from_numpy(valid), torch.from_numpy(truth.astype(np.int64))


def _loss(model: PermutationModel, x: torch.Tensor, valid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    scores = model(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2])
    scores = scores.masked_fill(~valid, float("-inf"))
    return torch.nn.functional.cross_entropy(scores, target)


@dataclass
class TrainedAssignment:
    parity: int
    model: PermutationModel
    normalisation: Normalisation
    history: dict[str, list[float]]
    best_epoch: int
    events: dict[str, int]
    seconds: float


def train_parity(table: AssignmentTable, parity: int, settings: AssignmentSettings) -> TrainedAssignment:
    """Train the model of events with ``event % 2 == parity``."""
    t0 = time.perf_counter()
    n_used, truth = table.truth(settings.train_jets)
    usable = np.flatnonzero((table.inputs.event % 2 == parity) & (truth >= 0))[: settings.max_events_per_parity]
    val = _validation_mask(table.inputs.event[usable], settings.validation_fraction)
    train_rows, val_rows = usable[~val], usable[val]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ModelError(
            f"parity {PARITIES[parity]}: {len(train_rows)} training and {len(val_rows)} validation events with a "
            "correct assignment among their jets; the training files need more ttbar events in 4j2b"
        )
    x, valid, target = training_tensors(table.inputs.take(train_rows), n_used[train_rows], truth[train_rows])
    xv, validv, targetv = training_tensors(table.inputs.take(val_rows), n_used[val_rows], truth[val_rows])
    norm = input_normalisation(x[valid].numpy())
    history: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}
    with deterministic_torch(settings.seed + parity) as generator:
        model = PermutationModel(len(FEATURE_NAMES), settings.hidden, norm)
        optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
        for epoch in range(1, settings.max_epochs + 1):
            model.train()
            order = torch.randperm(len(target), generator=generator)
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                optimiser.zero_grad()
                loss = _loss(model, x[idx], valid[idx], target[idx])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(idx)
            model.eval()
            with torch.no_grad():
                val_loss = float(_loss(model, xv, validv, targetv))
            history["train_loss"].append(total / len(order))
            history["validation_loss"].append(val_loss)
            if val_loss < best_loss:
                best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= settings.patience:
                break
        model.load_state_dict(best_state)
        model.eval()
    seconds = time.perf_counter() - t0
    log.info("parity %s: %d training events, best epoch %d, %.1f s", PARITIES[parity], len(train_rows), best_epoch,
             seconds)  # fmt: skip
    return TrainedAssignment(parity, model, norm, history, best_epoch,
                             {"train": len(train_rows), "validation": len(val_rows)}, seconds)  # fmt: skip


def torch_scorer(models: dict[int, torch.nn.Module]):
    """A :data:`utils.ml.assignment.features.Scorer` of in-memory models (by trained parity)."""

    def score(parity: int, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return models[parity](torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return score


def evaluate(table: AssignmentTable, scorer, btag_threshold: float) -> dict[str, dict[str, Any]]:
    """Permutation accuracy per trained parity and jet multiplicity on held-out events (those of
    the other parity, whose correct assignment is among their first min(nJet, 6) jets): the
    model's, the baseline's (:func:`baseline_permutation`) and random choice's (1/P)."""
    n_used, truth = table.truth(MAX_JETS)
    ok = np.flatnonzero(truth >= 0)
    inputs = table.inputs.take(ok)
    chosen = assign(inputs, scorer).jets
    base = baseline_permutation(inputs, btag_threshold)
    n = n_used[ok]
    right = np.zeros(len(ok), bool)
    right_base = np.zeros(len(ok), bool)
    for k in range(MIN_JETS, MAX_JETS + 1):
        rows = n == k
        right[rows] = permutation_index(k, chosen[rows]) == truth[ok][rows]
        right_base[rows] = permutation_index(k, base[rows]) == truth[ok][rows]
    out: dict[str, dict[str, Any]] = {}
    for parity in PARITIES:
        held_out = inputs.event % 2 != parity
        per: dict[str, Any] = {}
        for k in (*range(MIN_JETS, MAX_JETS + 1), None):
            m = held_out & ((n == k) if k is not None else True)
            count = int(m.sum())
            randoms = 1.0 / np.array([len(permutations(int(j))) for j in n[m]]) if count else np.zeros(0)
            per[f"{k}_jets" if k else "all"] = {
                "events": count,
                "model": round(float(right[m].mean()), 4) if count else None,
                "baseline": round(float(right_base[m].mean()), 4) if count else None,
                "random": round(float(randoms.mean()), 4) if count else None,
            }
        out[PARITIES[parity]] = per
    return out


@dataclass
class AssignmentTrainingRun:
    table: AssignmentTable
    trained: dict[int, TrainedAssignment]
    metrics: dict[str, dict[str, Any]]
    cards: dict[int, Path]
    seconds: float


def _card(trained: TrainedAssignment, files: dict[str, Any], table: AssignmentTable, settings: AssignmentSettings,
          metrics: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    other = PARITIES[1 - trained.parity]
    return {
        "card_version": CARD_VERSION,
        "task": "jet-parton assignment in 4j2b: score of each assignment (W1, W2, b_had, b_lep) of four of the "
        "first min(nJet, 6) selected jets; the highest score wins",
        "trained_on_parity": trained.parity,
        "applies_to": f"events with {other} event number (the model never saw them)",
        "features": list(FEATURE_NAMES),
        "feature_source": "utils.ml.assignment.features (dR with dphi wrapped to [-pi, pi); jet mass scaled with the "
        "jet-pT variation)",
        "normalisation": {
            "mean": trained.normalisation.mean,
            "std": trained.normalisation.std,
            "applied": "inside the export",
        },
        "architecture": {"hidden": list(settings.hidden), "output": "logit (score of the permutation)"},
        "files": files,
        "training": {
            "dataset": table.source,
            "files": table.files,
            "events": trained.events,
            "selection": "utils.processing.nanoaod.select_nanoaod (nominal), region 4j2b; events whose correct "
            f"assignment is among their first {settings.train_jets} jets (truth: utils.ml.assignment.truth)",
            "loss": "cross-entropy of the softmax over each event's permutation scores",
            "optimiser": "Adam",
            "settings": asdict(settings),
            "seed": settings.seed + trained.parity,
            "deterministic": {"torch_threads": 1, "use_deterministic_algorithms": True},
            "best_epoch": trained.best_epoch,
            "epochs_run": len(trained.history["train_loss"]),
            "seconds": round(trained.seconds, 2),
        },
        "metrics": {
            "held_out": metrics[PARITIES[trained.parity]],
            "definition": "fraction of held-out events (other parity, correct assignment among their first "
            "min(nJet, 6) jets) whose chosen assignment is the correct one; baseline: b_had the highest-pT "
            "b-tagged jet, b_lep the next, W1/W2 the two highest-pT other jets; random: 1/permutations",
        },
        "versions": library_versions(),
    }


def train_jet_assignment(
    table: AssignmentTable,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    config: AnalysisConfig | None = None,
    settings: AssignmentSettings | None = None,
) -> AssignmentTrainingRun:
    """Train both parities' models on ``table``, evaluate them on held-out events and write
    weights, exports and cards to ``models_dir``."""
    config = config or load_analysis_config()
    settings = settings or AssignmentSettings()
    t0 = time.perf_counter()
    trained = {p: train_parity(table, p, settings) for p in PARITIES}
    metrics = evaluate(table, torch_scorer({p: t.model for p, t in trained.items()}), config.btag_threshold)
    cards = {}
    for p, t in trained.items():
        names = file_names(p)
        files = {}
        for kind, data in zip(("state_dict", "export"), serialise(t.model), strict=True):
            with atomic_path(Path(models_dir) / names[kind]) as tmp:
                tmp.write_bytes(data)
            files[kind] = {"name": names[kind], "sha256": sha256_bytes(data)}
        cards[p] = Path(models_dir) / names["card"]
        write_json_atomic(cards[p], _card(t, files, table, settings, metrics))
        load_assignment_card(cards[p])
    seconds = time.perf_counter() - t0
    log.info("jet assignment trained in %.1f s: %s", seconds, metrics)
    return AssignmentTrainingRun(table, trained, metrics, cards, seconds)


#: the preset of utils/ml/training_data.yml that ``agc train --task jet-assignment`` generates
TRAINING_PRESET = "jet_assignment"


def training_dataset(preset: str = TRAINING_PRESET, workers: int = 1) -> Path:
    """The description of the jet-assignment training dataset: the preset of
    ``utils/ml/training_data.yml`` generated in NanoAOD under ``data/training/`` (cached), apart
    from the analysis datasets (its own seed)."""
    from utils.datasets.embedded import build_dataset
    from utils.ml.training import TRAINING_DATA_ROOT, TRAINING_PRESETS

    nanoaod: dict[str, Any] = {"input_format": "nanoaod"}  # the embedded generator's NanoAOD writer
    result = build_dataset(preset, TRAINING_DATA_ROOT, None, workers, with_data=False, presets_path=TRAINING_PRESETS,
                           **nanoaod)  # fmt: skip
    return Path(result.fileset_path)


def training_files(dataset: str, n_files: int = -1, sample: str = "ttbar__nominal") -> list[str]:
    """The first ``n_files`` files of ``sample`` in a NanoAOD dataset (a name of
    :func:`utils.datasets.resolve.resolve_dataset` or a description JSON)."""
    from utils.datasets.fileset import build_fileset
    from utils.datasets.resolve import resolve_dataset
    from utils.processing.nanoaod import TREE_NAME

    fileset = build_fileset(resolve_dataset(dataset), n_files, treename=TREE_NAME)
    if sample not in fileset:
        raise ModelError(f"dataset {dataset!r} has no sample {sample!r} to train the jet assignment on; "
                         f"samples: {sorted(fileset)}")  # fmt: skip
    return [str(p) for p in fileset[sample]["files"]]


def dataset_source(dataset: str) -> tuple[dict[str, Any], Path]:
    """What a card records of a training dataset (its description, generator and seed) and the
    description's folder (file paths are recorded relative to it)."""
    import json

    from utils.datasets.resolve import resolve_dataset

    path = resolve_dataset(dataset)
    description = json.loads(path.read_text())
    generators = {json.dumps(e.get("generator"), sort_keys=True) for v in description.values() for e in v.values()}
    source = {"description": display_path(path), "generator": [json.loads(g) for g in sorted(generators)]}
    return source, path.parent


def train_from_files(
    files: list[str],
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    config: AnalysisConfig | None = None,
    settings: AssignmentSettings | None = None,
    source: dict[str, Any] | None = None,
    root: Path | None = None,
) -> AssignmentTrainingRun:
    """``agc train --task jet-assignment``: table from ``files``, training, evaluation, cards."""
    config = config or load_analysis_config()
    t0 = time.perf_counter()
    table = build_table(files, config, source, root)
    run = train_jet_assignment(table, models_dir, config, settings)
    run.seconds = time.perf_counter() - t0
    return run
