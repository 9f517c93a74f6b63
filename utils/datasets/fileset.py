"""Filesets from dataset descriptions: the real 2015 CMS file list or the embedded stand-in.

A dataset description is JSON ``{process: {variation: {"files": [{"path", "nevts"}, ...],
"nevts_total": N, ...}}}``. A data sample may record its integrated luminosity (``"lumi"``, /pb,
for all its files) and each data file its own share (``{"path", "nevts", "lumi"}``); without
per-file values the share of a file is its fraction of the sample's events. Relative paths are resolved against the JSON file's folder, so one
function serves the real list (https URLs) and generated datasets (local files).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT, AnalysisConfig
from utils.errors import ConfigError

log = logging.getLogger(__name__)

CROSS_SECTIONS = REPO_ROOT / "datasets" / "cross_sections.json"
REAL_DATASET = REPO_ROOT / "datasets" / "cms-open-data-2015" / "ntuples_merged.json"
REAL_NANOAOD_DATASET = REPO_ROOT / "datasets" / "cms-open-data-2015" / "nanoaod_inputs.json"
DATA_PROCESS = "data"
TREE_NAME = "events"


def load_cross_sections(path: str | Path = CROSS_SECTIONS) -> dict[str, float]:
    """The cross-section table (pb per process)."""
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the cross-section table: {err}") from None
    return {k: positive_number(v, f"{path}: at [{k!r}]") for k, v in table.items() if not k.startswith("_")}


def positive_number(value: Any, where: str) -> float:
    """A finite, positive number (a cross-section, a luminosity), or a :class:`ConfigError`
    naming where the value came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: expected a finite positive number, got {value!r}")
    return float(value)


def load_dataset_description(path: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Read and check a dataset description; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: dataset description not found (for the embedded dataset run `agc generate`)")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected an object {{process: {{variation: {{files, nevts_total}}}}}}")
    for process, variations in data.items():
        if not isinstance(variations, dict):
            raise ConfigError(f"{path}: at [{process!r}]: expected an object of variations")
        for variation, entry in variations.items():
            where = f"{path}: at [{process!r}][{variation!r}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
                raise ConfigError(f"{where}: expected an object with a 'files' list")
            for i, fentry in enumerate(entry["files"]):
                if not isinstance(fentry, dict) or "path" not in fentry or "nevts" not in fentry:
                    raise ConfigError(f"{where}['files'][{i}]: expected {{'path': ..., 'nevts': ...}}")
                if not isinstance(fentry["nevts"], int) or fentry["nevts"] < 0:
                    raise ConfigError(f"{where}['files'][{i}]['nevts']: expected a non-negative integer")
    return data


def _resolve(path: str, base: Path) -> str:
    if "://" in path or path.startswith("root:"):
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (base / p).resolve())


def _first_events(files: list[dict[str, Any]], max_events: int) -> list[dict[str, Any]]:
    """The leading files that hold at least ``max_events`` events (all with -1)."""
    if max_events < 0:
        return files
    taken, total = [], 0
    for f in files:
        if total >= max_events:
            break
        taken.append(f)
        total += int(f["nevts"])
    return taken


def build_fileset(
    dataset: str | Path,
    n_files_max_per_sample: int = -1,
    processes: list[str] | None = None,
    cross_sections: dict[str, float] | None = None,
    treename: str = TREE_NAME,
    max_events_per_sample: int = -1,
) -> dict[str, dict[str, Any]]:
    """A coffea fileset ``{"process__variation": {"files": {path: treename}, "metadata": {...}}}``
    (``treename``: ``events`` in the ntuples, ``Events`` in NanoAOD).

    ``nevts`` in the metadata is the sum over the files actually taken, so the normalisation
    ``xsec x lumi / nevts`` stays right for any ``n_files_max_per_sample`` (-1: all files).
    The cross-section comes from the description's ``xsec`` if present, else the table.
    ``max_events_per_sample`` (-1: no limit) takes whole files, in order, until the sample holds
    at least that many events (so the normalisation stays exact).
    """
    path = Path(dataset)
    description = load_dataset_description(path)
    table = load_cross_sections() if cross_sections is None else cross_sections
    fileset: dict[str, dict[str, Any]] = {}
    for process, variations in description.items():
        if processes is not None and process not in processes:
            continue
        for variation, entry in variations.items():
            where = f"{path}: at [{process!r}][{variation!r}]"
            files = entry["files"] if n_files_max_per_sample < 0 else entry["files"][:n_files_max_per_sample]
            resolved = [_resolve(f["path"], path.parent) for f in files]
            twice = sorted({p for p in resolved if resolved.count(p) > 1})
            if twice:
                raise ConfigError(
                    f"{where}['files']: listed more than once: {twice}; each file may appear once "
                    "(its events would be counted twice in the normalisation)"
                )
            files = _first_events(files, max_events_per_sample)
            if process == DATA_PROCESS:
                xsec = None
            elif "xsec" in entry:
                xsec = positive_number(entry["xsec"], f"{where}['xsec']")
            elif process in table:
                xsec = table[process]
            else:
                raise ConfigError(
                    f"{where}: no cross-section for process {process!r}; "
                    f"add it to {CROSS_SECTIONS} or give 'xsec' in the description"
                )
            sample: dict[str, Any] = {
                "files": {_resolve(f["path"], path.parent): treename for f in files},
                # per-file event counts of the description (checked before processing)
                "file_nevts": {_resolve(f["path"], path.parent): int(f["nevts"]) for f in files},
                "metadata": {
                    "process": process,
                    "variation": variation,
                    "nevts": int(sum(f["nevts"] for f in files)),
                    "xsec": xsec,
                },
            }
            if process == DATA_PROCESS:
                _add_data_luminosity(sample, entry, files, where, path.parent)
            fileset[f"{process}__{variation}"] = sample
    if not fileset:
        raise ConfigError(f"{path}: no samples selected (processes={processes})")
    return fileset


def _add_data_luminosity(
    sample: dict[str, Any], entry: dict[str, Any], taken: list[dict[str, Any]], where: str, base: Path
) -> None:
    """Record the luminosity of a data sample's files in its fileset entry.

    ``metadata["nevts_full"]``: the events of the whole sample (all files of the description),
    ``metadata["lumi"]`` (when the description records one): the luminosity of the files taken,
    which hold ``metadata["lumi_nevts"]`` events,
    ``file_lumi``: each taken file's luminosity, its own ``"lumi"`` where every file of the
    sample records one, else the sample's luminosity times the file's share of the events (the
    embedded generator splits each process's events evenly over the files, so the share of the
    events is the share of the luminosity)."""
    all_files = entry["files"]
    nevts_full = int(sum(f["nevts"] for f in all_files))
    sample["metadata"]["nevts_full"] = nevts_full
    if "lumi" not in entry:
        return
    lumi = positive_number(entry["lumi"], f"{where}['lumi']")
    if all("lumi" in f for f in all_files):
        per_file = [positive_number(f["lumi"], f"{where}['files'][{i}]['lumi']") for i, f in enumerate(all_files)]
        if not math.isclose(sum(per_file), lumi, rel_tol=1e-6):
            raise ConfigError(
                f"{where}: the files' 'lumi' add up to {sum(per_file):.6g} /pb but the sample's 'lumi' is "
                f"{lumi:.6g} /pb; correct one of them"
            )
        by_path = {_resolve(f["path"], base): v for f, v in zip(all_files, per_file, strict=True)}
    elif any("lumi" in f for f in all_files):
        raise ConfigError(f"{where}['files']: 'lumi' given for some files only; give it for every file or none")
    elif nevts_full == 0:
        raise ConfigError(f"{where}: a data sample with a luminosity but no events")
    else:
        by_path = {_resolve(f["path"], base): lumi * int(f["nevts"]) / nevts_full for f in all_files}
    sample["file_lumi"] = {p: by_path[p] for p in sample["files"]}
    sample["metadata"]["lumi"] = float(sum(sample["file_lumi"].values()))
    sample["metadata"]["lumi_nevts"] = sample["metadata"]["nevts"]


def data_luminosity(fileset: dict[str, dict[str, Any]], full_luminosity: float | None = None) -> float | None:
    """The integrated luminosity (/pb) of the data the fileset's data sample holds now.

    It follows the files kept (a subset by ``n_files_max_per_sample`` or
    ``max_events_per_sample``, a file the input checks dropped under ``ON_BAD_INPUT="skip"``):
    the kept files' luminosity, times the events left (``metadata["nevts"]``, after entries
    lost in unreadable chunks) over the kept files' events. Files that are not the described
    ones (a delivered skim) scale the metadata's ``lumi`` by the events left. A sample without a recorded
    luminosity (the real CMS list) is taken to hold ``full_luminosity`` over all its events
    (``metadata["nevts_full"]``), and scales the same way; ``None`` when neither is known or
    there is no data sample."""
    for entry in fileset.values():
        meta = entry["metadata"]
        if meta["process"] != DATA_PROCESS:
            continue
        kept_files = entry["files"]
        file_nevts = entry.get("file_nevts", {})
        nevts = int(meta["nevts"])
        file_lumi = entry.get("file_lumi", {})
        if kept_files and all(p in file_lumi and p in file_nevts for p in kept_files):
            lumi = sum(file_lumi[p] for p in kept_files)
            in_files = sum(file_nevts[p] for p in kept_files)
            return float(lumi * nevts / in_files) if in_files else 0.0
        if meta.get("lumi") is not None:
            # the files are not the described ones (delivered skims): the metadata's luminosity,
            # for the events it was recorded with
            lumi_nevts = int(meta.get("lumi_nevts", nevts))
            return float(meta["lumi"]) * nevts / lumi_nevts if lumi_nevts else 0.0
        if full_luminosity is None or not meta.get("nevts_full"):
            return None
        return float(full_luminosity * nevts / meta["nevts_full"])
    return None


def normalisation(
    fileset: dict[str, dict[str, Any]], config: AnalysisConfig, luminosity: float | None = None
) -> dict[str, float]:
    """Per-event weight of each sample: xsec x lumi / nevts (1 for data).

    ``luminosity`` overrides the configured one, e.g. to normalise MC to a data sample's
    luminosity (:func:`data_luminosity`).
    """
    lumi = config.luminosity if luminosity is None else luminosity
    out = {}
    for sample, entry in fileset.items():
        meta = entry["metadata"]
        if meta["xsec"] is None:
            out[sample] = 1.0
        elif meta["nevts"] == 0:
            out[sample] = 0.0
        else:
            out[sample] = meta["xsec"] * lumi / meta["nevts"]
    return out


def fileset_summary(fileset: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sample: files, events and cross-section (for display)."""
    return [
        {"sample": name, "files": len(entry["files"]), "events": entry["metadata"]["nevts"],
         "xsec [pb]": entry["metadata"]["xsec"]}
        for name, entry in fileset.items()
    ]  # fmt: skip
