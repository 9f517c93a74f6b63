"""A run's output folder: created fresh, and marked complete by its manifest, written last.

The manifest lists every output with its checksum, the inputs (dataset description, samples),
the analysis configuration the run really used (its source and a checksum of its content) and
the run parameters. A folder without a manifest is an incomplete run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT, AnalysisConfig
from utils.datasets.resolve import dataset_tag
from utils.errors import AGCError
from utils.io import sha256_file, write_json_atomic
from utils.processing.run import ProcessingResult
from utils.run.metrics import METRICS_FILE, run_metrics, write_metrics
from utils.run.parameters import RunParameters
from utils.runinfo import timestamp

MANIFEST_NAME = "manifest.json"
INPUT_REPORT_NAME = "input_report.json"
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "outputs"


def new_output_dir(params: RunParameters, base: str | Path | None = None) -> Path:
    """A fresh output folder for one run: ``<base>/<timestamp>-<dataset tag>`` (default base:
    ``outputs/`` of the repository)."""
    root = Path(base) if base is not None else DEFAULT_OUTPUT_ROOT
    if not root.is_absolute():
        root = REPO_ROOT / root
    tag = dataset_tag(params.dataset)
    path = root / f"{timestamp()}-{tag}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{timestamp()}-{tag}-{n}"
    path.mkdir(parents=True)
    return path


def _leftovers(path: Path) -> list[Path]:
    """What an output folder holds from before this run (the executed notebook papermill is
    writing into it does not count)."""
    return sorted(p for p in path.iterdir() if not (p.is_file() and p.suffix == ".ipynb"))


def prepare_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """An explicit output folder, ready for one run: created if missing; a folder holding an
    earlier run's outputs is refused, or with ``overwrite`` cleared first, so that nothing stale
    is taken for this run's result or listed in its manifest."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AGCError(f"{path}: the output folder is a file; choose another --output / OUTPUT_DIR")
    try:
        path.mkdir(parents=True, exist_ok=True)
        old = _leftovers(path)
        if old and not overwrite:
            names = ", ".join(p.name for p in old[:5]) + (", ..." if len(old) > 5 else "")
            raise AGCError(
                f"{path}: the output folder is not empty ({names}); choose a new folder, or rerun with "
                "--overwrite (notebook parameter OVERWRITE=True) to clear it first"
            )
        for p in old:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        probe = path / ".tmp-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise AGCError(f"{path}: cannot use the output folder: {err.strerror or err}") from None
    return path


def config_record(config: AnalysisConfig) -> dict[str, Any]:
    """Where the analysis configuration came from and a checksum of its content (canonical JSON),
    so that a configuration given as data is recorded as faithfully as one read from a file."""
    canonical = json.dumps(config.raw, sort_keys=True, separators=(",", ":"), default=str).encode()
    record: dict[str, Any] = {"source": config.source, "content_sha256": hashlib.sha256(canonical).hexdigest()}
    if config.source and Path(config.source).is_file():
        record["file_sha256"] = sha256_file(config.source)
    return record


def finish_run(
    output_dir: Path,
    params: RunParameters,
    result: ProcessingResult,
    stage_times: dict[str, float],
    dataset_path: Path,
    fileset: dict[str, Any],
    config: AnalysisConfig,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run's metrics JSON, its input report (when inputs were left out), and, last,
    the run manifest that marks the output folder complete. Returns the metrics."""
    output_dir = Path(output_dir)
    fileset = result.fileset if result.fileset is not None else fileset
    metrics = run_metrics(params, result, stage_times, dataset_path, fileset, _fit_timings(output_dir))
    metrics.update(extra_metrics or {})
    write_metrics(output_dir / METRICS_FILE, metrics)
    if result.input_report is not None and result.input_report.bad:
        write_json_atomic(output_dir / INPUT_REPORT_NAME, result.input_report.to_dict())
    outputs = {
        str(p.relative_to(output_dir)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(output_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".tmp-") and p.name != MANIFEST_NAME and p.suffix != ".ipynb"
    }
    manifest = {
        "complete": True,
        "outputs": outputs,
        "inputs": {
            "dataset_description": {"path": str(dataset_path), "sha256": sha256_file(dataset_path)},
            "samples": {s: {"files": len(e["files"]), "nevts": e["metadata"]["nevts"]} for s, e in fileset.items()},
            "analysis_config": config_record(config),
        },
        "parameters": asdict(params),
        "git_commit": metrics.get("git_commit"),
        "packages": metrics.get("packages"),
    }
    write_json_atomic(output_dir / MANIFEST_NAME, manifest)
    return metrics


def _fit_timings(output_dir: Path) -> dict[str, float] | None:
    """The inference's own timings from the run's fit results, if a fit ran."""
    from utils.inference.results import RESULTS_NAME

    path = output_dir / RESULTS_NAME
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()).get("timings_s", {}))


def is_complete(output_dir: str | Path) -> bool:
    """Whether a run's output folder is complete: its manifest exists and every output it lists
    is present with the recorded checksum."""
    path = Path(output_dir) / MANIFEST_NAME
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    return bool(manifest.get("complete")) and all(
        (Path(output_dir) / name).is_file() and sha256_file(Path(output_dir) / name) == entry["sha256"]
        for name, entry in manifest["outputs"].items()
    )
