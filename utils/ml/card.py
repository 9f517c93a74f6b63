"""Model cards: one JSON per region beside the weights, saying what the model is, what it was
trained on, how, and how well it does on held-out events.

File layout in a models folder, for each region ``R`` of ``ml.features`` in the analysis
configuration::

    R.card.json         the card (this module)
    R.state_dict.pt     torch.save of ScoreModel.state_dict() (weights and normalisation buffers)
    R.torchscript.pt    torch.jit.save of the scripted ScoreModel: raw features in, score out

The card records the sha256 of both files; :func:`load_card` checks the card's structure and
:func:`verify_file` the hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT
from utils.errors import ModelError
from utils.io import sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = REPO_ROOT / "models"
CARD_VERSION = 1
CARD_SUFFIX = ".card.json"
STATE_DICT_SUFFIX = ".state_dict.pt"
EXPORT_SUFFIX = ".torchscript.pt"
RETRAIN_HINT = "retrain with `agc train` (or notebooks/ml_training) and commit models/ as written"


def card_path(models_dir: str | Path, region: str) -> Path:
    return Path(models_dir) / f"{region}{CARD_SUFFIX}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """The typed core of a card; ``content`` is the whole JSON (training provenance, metrics)."""

    path: Path
    region: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hidden: tuple[int, ...]
    score_threshold: float
    signal_process: str
    state_dict_file: str
    state_dict_sha256: str
    export_file: str
    export_sha256: str
    content: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def export_path(self) -> Path:
        return self.folder / self.export_file

    @property
    def state_dict_path(self) -> Path:
        return self.folder / self.state_dict_file

    @property
    def metrics(self) -> dict[str, Any]:
        return self.content.get("metrics", {})


def _get(content: dict[str, Any], path: Path, *keys: str) -> Any:
    node: Any = content
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = "".join(f"[{k!r}]" for k in keys[: i + 1])
            raise ModelError(f"{path}: model card lacks {where}; {RETRAIN_HINT}")
        node = node[key]
    return node


def load_card(path: str | Path) -> ModelCard:
    """Read a model card; a missing file or key is a :class:`ModelError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model card not found; {RETRAIN_HINT}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: model card is not valid JSON ({err}); {RETRAIN_HINT}") from None
    version = _get(content, path, "card_version")
    if version != CARD_VERSION:
        raise ModelError(
            f"{path}: model card version {version!r}, this code reads version {CARD_VERSION}; {RETRAIN_HINT}"
        )
    features = tuple(_get(content, path, "features"))
    mean = tuple(float(x) for x in _get(content, path, "normalisation", "mean"))
    std = tuple(float(x) for x in _get(content, path, "normalisation", "std"))
    if not (len(features) == len(mean) == len(std)):
        raise ModelError(
            f"{path}: {len(features)} features but {len(mean)} means and {len(std)} standard deviations; {RETRAIN_HINT}"
        )
    return ModelCard(
        path=path,
        region=str(_get(content, path, "region")),
        features=features,
        mean=mean,
        std=std,
        hidden=tuple(int(h) for h in _get(content, path, "architecture", "hidden")),
        score_threshold=float(_get(content, path, "score_threshold")),
        signal_process=str(_get(content, path, "signal_process")),
        state_dict_file=str(_get(content, path, "files", "state_dict", "name")),
        state_dict_sha256=str(_get(content, path, "files", "state_dict", "sha256")),
        export_file=str(_get(content, path, "files", "export", "name")),
        export_sha256=str(_get(content, path, "files", "export", "sha256")),
        content=content,
    )


def verify_file(card: ModelCard, which: str = "export") -> str:
    """Check that a model file exists and has the sha256 its card records; return the hash."""
    path, expected = (
        (card.export_path, card.export_sha256) if which == "export" else (card.state_dict_path, card.state_dict_sha256)
    )
    if not path.is_file():
        raise ModelError(f"{path}: model file named by {card.path} not found; {RETRAIN_HINT}")
    found = sha256_file(path)
    if found != expected:
        raise ModelError(
            f"{path}: sha256 {found} differs from {expected} recorded in {card.path}: the file is not the "
            f"model the card describes; restore it from git or {RETRAIN_HINT}"
        )
    return found
