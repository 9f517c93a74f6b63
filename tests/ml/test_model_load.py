"""A model export that does not load is named as the model, not blamed on the data (issue 14, case 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from utils.datasets.fileset import build_fileset
from utils.errors import ModelError
from utils.ml.card import DEFAULT_MODELS_DIR, sha256_file
from utils.ml.inference import MLClassifier, clear_cache
from utils.processing.run import ProcessingOptions, process_fileset


@pytest.fixture()
def truncated_models(tmp_path) -> Path:
    """models/ with the 4j1b export cut in half and its card re-signed with the new sha256."""
    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, models)
    export = models / "4j1b.torchscript.pt"
    export.write_bytes(export.read_bytes()[: export.stat().st_size // 2])
    card_file = models / "4j1b.card.json"
    card = json.loads(card_file.read_text())
    card["files"]["export"]["sha256"] = sha256_file(export)
    card_file.write_text(json.dumps(card, indent=2))
    clear_cache()
    yield models
    clear_cache()


def test_truncated_export_is_a_model_error_naming_it(truncated_models):
    classifier = MLClassifier.from_directory(truncated_models)
    with pytest.raises(ModelError, match=r"4j1b\.torchscript\.pt: the model export does not load"):
        classifier.warm()


def test_truncated_export_during_processing_is_not_blamed_on_the_data(truncated_models, tiny_dataset, config):
    fileset = build_fileset(tiny_dataset, 1, processes=["ttbar"])
    fileset = {"ttbar__nominal": fileset["ttbar__nominal"]}
    classifier = MLClassifier.from_directory(truncated_models)
    options = ProcessingOptions(executor="iterative", workers=1, chunksize=100_000)
    with pytest.raises(ModelError, match=r"torchscript\.pt: the model export does not load"):
        process_fileset(fileset, options, config, classifier)
