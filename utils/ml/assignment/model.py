"""The permutation network, its files and cards in ``models/``, and the inference handle.

One model per event parity: ``jet_assignment_even.*`` is trained on events with even ``event``
and scores the odd ones, ``jet_assignment_odd.*`` the reverse, so no event is scored by a model
that saw it. Files per parity ``P``::

    jet_assignment_P.card.json         what the model is, what it was trained on, how well it does
    jet_assignment_P.state_dict.pt     torch.save of the state dict (weights, normalisation)
    jet_assignment_P.torchscript.pt    the scripted PermutationModel: raw features in, logit out

The network is :class:`utils.ml.model.ScoreModel` (normalisation inside, a small MLP) returning
the logit, so that scores of near-certain permutations do not tie at 1.0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import ModelError
from utils.io import sha256_file
from utils.ml.assignment.features import FEATURE_NAMES
from utils.ml.card import DEFAULT_MODELS_DIR
from utils.ml.inference import _load_export
from utils.ml.model import ScoreModel

log = logging.getLogger(__name__)

CARD_VERSION = 1
PARITIES = {0: "even", 1: "odd"}
RETRAIN_HINT = "retrain with `agc train --task jet-assignment` and commit models/ as written"


class PermutationModel(ScoreModel):
    """Raw features ``[n, 20]`` (float32) -> score (logit) of each permutation ``[n]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def file_names(parity: int) -> dict[str, str]:
    stem = f"jet_assignment_{PARITIES[parity]}"
    return {"card": f"{stem}.card.json", "state_dict": f"{stem}.state_dict.pt", "export": f"{stem}.torchscript.pt"}


@dataclass(frozen=True)
class AssignmentCard:
    """The typed core of a jet-assignment model card; ``content`` is the whole JSON."""

    path: Path
    trained_on_parity: int
    features: tuple[str, ...]
    export_file: str
    export_sha256: str
    content: dict[str, Any]

    @property
    def export_path(self) -> Path:
        return self.path.parent / self.export_file


def load_assignment_card(path: str | Path) -> AssignmentCard:
    """Read a jet-assignment card; a missing file, key or a foreign feature list is a
    :class:`ModelError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: jet-assignment model card not found; {RETRAIN_HINT}")
    try:
        content = json.loads(path.read_text())
        version = content["card_version"]
        parity = int(content["trained_on_parity"])
        features = tuple(content["features"])
        export = content["files"]["export"]
        name, sha = str(export["name"]), str(export["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ModelError(
            f"{path}: not a jet-assignment model card ({type(err).__name__}: {err}); {RETRAIN_HINT}"
        ) from None
    if version != CARD_VERSION:
        raise ModelError(f"{path}: card version {version!r}, this code reads {CARD_VERSION}; {RETRAIN_HINT}")
    if features != FEATURE_NAMES:
        raise ModelError(
            f"{path}: the model takes {list(features)}, the features are {list(FEATURE_NAMES)}; {RETRAIN_HINT}"
        )
    return AssignmentCard(path, parity, features, name, sha, content)


def models_available(models_dir: str | Path | None = None) -> bool:
    """Whether both parities' cards and exports are in ``models_dir`` (default ``models/``)."""
    folder = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
    return all((folder / file_names(p)[k]).is_file() for p in PARITIES for k in ("card", "export"))


@dataclass(frozen=True)
class JetAssigner:
    """The picklable handle the processor scores permutations with: per parity the export's
    path and sha256. Each worker loads an export once (hash checked), sets torch to
    ``num_threads`` intra-op threads (1: workers do not oversubscribe the cores), and scores
    a whole batch per call under ``torch.inference_mode`` (no autograd)."""

    exports: tuple[tuple[str, str], tuple[str, str]]  # (path, sha256) of the models trained on even, odd
    num_threads: int | None = 1

    @classmethod
    def from_directory(cls, models_dir: str | Path | None = None, num_threads: int | None = 1) -> JetAssigner:
        folder = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
        exports = []
        for parity in PARITIES:
            card = load_assignment_card(folder / file_names(parity)["card"])
            if card.trained_on_parity != parity:
                raise ModelError(
                    f"{card.path}: card says trained on parity {card.trained_on_parity}, expected {parity}"
                )
            found = sha256_file(card.export_path) if card.export_path.is_file() else None
            if found != card.export_sha256:
                raise ModelError(
                    f"{card.export_path}: missing or sha256 {found} differs from {card.export_sha256} in {card.path}; "
                    f"{RETRAIN_HINT}"
                )
            exports.append((str(card.export_path.resolve()), card.export_sha256))
        log.info("jet assignment: models from %s", folder)
        return cls((exports[0], exports[1]), num_threads)

    def __call__(self, trained_on_parity: int, features: np.ndarray) -> np.ndarray:
        """Scores ``[n]`` (float32) of permutation features ``[n, 20]`` by the model trained on
        events of ``trained_on_parity`` (0 even, 1 odd)."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise ModelError(f"jet assignment takes [n, {len(FEATURE_NAMES)}] features, got {x.shape}")
        if len(x) == 0:
            return np.empty(0, dtype=np.float32)
        path, sha = self.exports[trained_on_parity]
        module = _load_export(path, sha, self.num_threads)
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy().copy()

    def warm(self) -> None:
        """Load both exports in this process (pass as an executor's warm-up)."""
        for parity in PARITIES:
            self(parity, np.zeros((2, len(FEATURE_NAMES)), dtype=np.float32))
