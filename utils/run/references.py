"""Reference histograms of the embedded datasets, for ``agc validate``.

``python -m utils.run.references [PRESET ...]`` (``make references``) processes each preset with the
committed configuration and writes ``references/histograms_<preset>.json``. Run it only on
purpose: when a change of the analysis, the generator or the configuration is meant to change
the histograms; the diff of the JSON then shows what changed.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from utils.config import REPO_ROOT, load_analysis_config
from utils.datasets.fileset import build_fileset
from utils.errors import AGCError
from utils.histograms.accumulate import save_histograms
from utils.processing.run import process_fileset
from utils.run.parameters import RunParameters

log = logging.getLogger(__name__)

REFERENCE_DIR = REPO_ROOT / "references"
PRESETS = ("tiny", "quickstart")


def reference_path(preset: str) -> Path:
    return REFERENCE_DIR / f"histograms_{preset}.json"


def histograms_of_preset(preset: str, output: Path, workers: int = 2) -> Path:
    """Process an embedded preset (generated if needed) and save its ``histograms.root``."""
    from utils.datasets.embedded import ensure_dataset

    config = load_analysis_config()
    fileset = build_fileset(ensure_dataset(preset, workers=workers))
    params = RunParameters(executor="futures" if workers > 1 else "iterative", num_cores=workers, use_ml=False)
    result = process_fileset(fileset, params.processing_options(), config)
    if result.histograms is None:
        raise AGCError(f"processing {preset} produced no histograms")
    save_histograms(result.histograms, output, config)
    return output


def write_reference(preset: str, workers: int = 2) -> Path:
    from utils.histograms.validation import dump_reference

    with tempfile.TemporaryDirectory() as tmp:
        histograms = histograms_of_preset(preset, Path(tmp) / "histograms.root", workers)
        dump_reference(histograms, reference_path(preset))
    return reference_path(preset)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for preset in argv if argv else PRESETS:
        log.info("wrote %s", write_reference(preset))


if __name__ == "__main__":
    main(sys.argv[1:])
