"""Publishing the likelihood and reinterpreting it with a new signal.

``publish_analysis`` writes a self-contained folder::

    BkgOnly.json                  background-only workspace (POI: the signal strength)
    patchset.json                 pyhf PatchSet: one patch per signal point
    patch.<point>.json            the same patches one by one (``pyhf cls BkgOnly.json -p ...``)
    analysis/                     the preserved configuration: analysis_config.yml,
                                  cabinetry_config.yml, cabinetry_config_signal.yml and the
                                  signal-plus-background model they make
    hepdata/                      HEPData submission (validated): yields tables (pre- and post-fit),
                                  the likelihood and patchset as HistFactory resources
    limits.json                   per signal point CLs and upper limits (``limits=True``)
    provenance.json               inputs with event counts and sha256, configuration
                                  checksums, seeds, versions, commit, output checksums

``reinterpret`` takes a signal description, processes it with the preserved configuration,
builds its patch and computes CLs and the upper limit against ``BkgOnly.json``: the backgrounds
are never processed again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.config import AnalysisConfig, load_analysis_config, read_yaml
from utils.errors import ConfigError
from utils.inference.treatment import TreatmentRules
from utils.io import write_json_atomic, write_text_atomic
from utils.preservation import hepdata
from utils.preservation.evaluation import PointResult, evaluate
from utils.preservation.model import (
    PLACEHOLDER_INSPIRE_ID,
    SignalModel,
    SignalPatch,
    background_only_workspace,
    load_signal_model,
    make_patchset,
    signal_patch,
    signal_plus_background_config,
)
from utils.preservation.provenance import (
    PROVENANCE_NAME,
    FileRecord,
    Provenance,
    config_records,
    generator_entries,
    sample_inputs,
)
from utils.preservation.samples import sidecar
from utils.preservation.signal import load_signal, process_signal

log = logging.getLogger(__name__)

BACKGROUND_NAME = "BkgOnly.json"
PATCHSET_NAME = "patchset.json"
LIMITS_NAME = "limits.json"
ANALYSIS_DIRNAME = "analysis"
HEPDATA_DIRNAME = "hepdata"
#: the analysis's identifier (patchset metadata, HEPData record, provenance)
ANALYSIS_ID = "AGC-CMS-ttbar-2015"
#: preserved configuration files by role, as named in ``analysis/``
CONFIG_FILES = {
    "analysis_config": "analysis_config.yml",
    "cabinetry_config": "cabinetry_config.yml",
    "signal_config": "cabinetry_config_signal.yml",
    "signal_plus_background_config": "cabinetry_config_signal_plus_background.yml",
}


def patch_file_name(point: str) -> str:
    return f"patch.{point}.json"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=4)


# -- the preserved model ------------------------------------------------------------------------


@dataclass(frozen=True)
class PreservedModel:
    """The configuration a likelihood was published with: analysis, signal model, and the
    parsed signal-plus-background cabinetry configuration built from them."""

    analysis: AnalysisConfig
    signal: SignalModel
    sb_raw: dict[str, Any]
    sb_config: dict[str, Any]
    paths: Mapping[str, Path]

    @classmethod
    def from_files(
        cls,
        analysis_config: str | Path | None = None,
        cabinetry_config: str | Path | None = None,
        signal_config: str | Path | None = None,
    ) -> PreservedModel:
        from utils.inference.config import DEFAULT_CABINETRY_CONFIG, load_cabinetry_config, parse_cabinetry_config

        analysis = load_analysis_config(analysis_config)
        cabinetry_path = Path(cabinetry_config) if cabinetry_config is not None else DEFAULT_CABINETRY_CONFIG
        load_cabinetry_config(cabinetry_path, analysis)  # the background model alone must be valid too
        signal = load_signal_model(signal_config)
        if any("Categories" in r for r in read_yaml(cabinetry_path)["Regions"]):
            raise ConfigError(
                f"{cabinetry_path}: regions split by ML category are not supported for reinterpretation "
                "(a signal would need the classifier of the published analysis)"
            )
        sb_raw = signal_plus_background_config(read_yaml(cabinetry_path), signal, analysis)
        sb_config = parse_cabinetry_config(sb_raw, f"{cabinetry_path} + {signal.source}", analysis)
        paths = {
            "analysis_config": Path(analysis.source),
            "cabinetry_config": cabinetry_path,
            "signal_config": Path(signal.source),
        }
        return cls(analysis, signal, sb_raw, sb_config, paths)

    @property
    def treatment(self) -> TreatmentRules:
        """The template treatment of the signal-plus-background model (its ``TemplateTreatment``)."""
        from utils.inference.config import treatment_rules

        return treatment_rules(self.sb_raw, str(self.paths["cabinetry_config"]))

    def write(self, folder: Path) -> dict[str, Path]:
        """Copy the configuration into ``folder`` (with the signal-plus-background model)."""
        from utils.inference.config import parse_cabinetry_config

        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for role, path in self.paths.items():
            out[role] = folder / CONFIG_FILES[role]
            shutil.copyfile(path, out[role])
        out["signal_plus_background_config"] = folder / CONFIG_FILES["signal_plus_background_config"]
        header = (
            "# The signal-plus-background model: cabinetry_config.yml with the signal of\n"
            "# cabinetry_config_signal.yml added (written by utils.preservation; `agc fit` reads it).\n"
        )
        write_text_atomic(out["signal_plus_background_config"], header + yaml.safe_dump(self.sb_raw, sort_keys=False))
        parse_cabinetry_config(read_yaml(out["signal_plus_background_config"]), str(out), self.analysis)  # round trip
        return out


@dataclass(frozen=True)
class PublishedAnalysis:
    """A folder written by :func:`publish_analysis`, checked against its provenance record."""

    root: Path
    background_ws: dict[str, Any]
    model: PreservedModel
    provenance: Mapping[str, Any]

    @classmethod
    def load(cls, root: str | Path) -> PublishedAnalysis:
        """Load a published folder; every file its provenance lists must have its checksum."""
        root = Path(root)
        record_path = root / PROVENANCE_NAME
        if not record_path.is_file():
            raise ConfigError(f"{root}: not a published analysis ({PROVENANCE_NAME} missing; run `agc publish`)")
        record = json.loads(record_path.read_text())
        changed = []
        for name, entry in record["outputs"].items():
            path = root / name
            if not path.is_file() or FileRecord.of(path).sha256 != entry["sha256"]:
                changed.append(name)
        if changed:
            raise ConfigError(f"{root}: files missing or changed since publication: {changed}")
        analysis_dir = root / ANALYSIS_DIRNAME
        model = PreservedModel.from_files(
            analysis_dir / CONFIG_FILES["analysis_config"],
            analysis_dir / CONFIG_FILES["cabinetry_config"],
            analysis_dir / CONFIG_FILES["signal_config"],
        )
        return cls(root, json.loads((root / BACKGROUND_NAME).read_text()), model, record)

    def patchset(self) -> dict[str, Any]:
        return json.loads((self.root / PATCHSET_NAME).read_text())

    def patch(self, point: str) -> SignalPatch:
        """A published signal point's patch."""
        patchset = self.patchset()
        labels = patchset["metadata"]["labels"]
        for entry in patchset["patches"]:
            if entry["metadata"]["name"] == point:
                values = dict(zip(labels, entry["metadata"]["values"], strict=True))
                return SignalPatch(point, tuple(entry["patch"]), values, entry["metadata"].get("xsec_pb"))
        names = [p["metadata"]["name"] for p in patchset["patches"]]
        raise ConfigError(f"{self.root / PATCHSET_NAME}: no signal point {point!r}; published: {names}")


# -- signals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessedSignal:
    """A signal's per-sample histograms and the record of the signal point."""

    histograms: Path
    name: str
    xsec: float | None
    parameters: Mapping[str, float]
    record: Mapping[str, Any]  # the sidecar (inputs, seeds, configuration checksum)


def processed_signal(path: str | Path, workdir: Path, model: PreservedModel, params: Any = None) -> ProcessedSignal:
    """A signal ready to patch: a signal description (``.json``, processed now into
    ``workdir``) or per-sample histograms of one (``.root`` with its record beside it)."""
    path = Path(path)
    if path.suffix == ".json":
        signal = load_signal(path)
        path = process_signal(signal, workdir / f"{signal.name}.root", model.analysis, model.signal.sample_path, params)
    record = json.loads(sidecar(path).read_text()) if sidecar(path).is_file() else None
    point = (record or {}).get("parameters", {}).get("signal")
    if record is None or point is None:
        raise ConfigError(f"{path}: not the histograms of a signal (no signal record in {sidecar(path).name})")
    used = record["configuration"]["analysis_config"]["sha256"]
    if used != FileRecord.of(model.analysis.source).sha256:
        raise ConfigError(f"{path}: processed with another analysis configuration than {model.analysis.source}")
    return ProcessedSignal(path, point["name"], point["xsec"], point["parameters"], record)


# -- publishing ---------------------------------------------------------------------------------


def background_inputs(histograms: Path, analysis: AnalysisConfig) -> dict[str, Any]:
    """The record of what the background histograms were made from: the sidecar of merged
    per-sample histograms, else the run manifest of an ``agc run`` folder (input files then
    checksummed now), else only the histograms file (logged as a warning)."""
    out: dict[str, Any] = {"histograms": FileRecord.of(histograms).to_dict()}
    if sidecar(histograms).is_file():
        record = json.loads(sidecar(histograms).read_text())
        used = record["configuration"]["analysis_config"]["sha256"]
        if used != FileRecord.of(analysis.source).sha256:
            raise ConfigError(f"{histograms}: processed with another analysis configuration than {analysis.source}")
        return {**out, "samples": record["inputs"]["samples"], "seeds": record.get("seeds", {})}
    manifest = histograms.parent / "manifest.json"
    if manifest.is_file():
        from utils.datasets.fileset import build_fileset, load_dataset_description

        run = json.loads(manifest.read_text())
        description = Path(run["inputs"]["dataset_description"]["path"])
        if description.is_file():
            if FileRecord.of(description).sha256 != run["inputs"]["dataset_description"]["sha256"]:
                log.warning(
                    "%s changed since the run of %s; recording its files as they are now", description, manifest
                )
            fileset = build_fileset(description, run["parameters"].get("n_files_max_per_sample", -1))
            generators = generator_entries(load_dataset_description(description))
            samples = [s.to_dict() for s in sample_inputs(fileset, generators)]
            return {**out, "samples": samples, "run_manifest": FileRecord.of(manifest).to_dict()}
    log.warning("%s: no record of the input files beside it; provenance lists the histograms only", histograms)
    return out


@dataclass(frozen=True)
class PublishResult:
    output: Path
    background_ws: Path
    patchset: Path
    points: tuple[PointResult, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)


def publish_analysis(
    histograms: str | Path,
    output: str | Path,
    signals: Sequence[str | Path] = (),
    *,
    cabinetry_config: str | Path | None = None,
    signal_config: str | Path | None = None,
    limits: bool = False,
    params: Any = None,
    inspire_id: str = PLACEHOLDER_INSPIRE_ID,
    analysis_id: str = ANALYSIS_ID,
) -> PublishResult:
    """Publish the background-only likelihood of ``histograms`` (a ``histograms.root`` of the
    pipeline), a patchset of ``signals`` (signal descriptions or their processed histograms),
    HEPData tables and provenance into ``output`` (see the module doc). ``inspire_id``: the
    HEPData (INSPIRE) record, ``ins`` + 7 digits (``ins0000000``: none yet); ``analysis_id``:
    the analysis's identifier, in the patchset's metadata and the HEPData record."""
    start = time.perf_counter()
    histograms, output = Path(histograms), Path(output)
    _remove_previous(output)
    output.mkdir(parents=True, exist_ok=True)
    model = PreservedModel.from_files(None, cabinetry_config, signal_config)
    configs = model.write(output / ANALYSIS_DIRNAME)
    inputs = background_inputs(histograms, model.analysis)
    background_ws = background_only_workspace(histograms, model.sb_config, configs["cabinetry_config"])
    write_text_atomic(output / BACKGROUND_NAME, _canonical(background_ws))

    processed = [processed_signal(s, output / "signals", model, params) for s in signals]
    patches = [
        signal_patch(
            p.histograms, model.sb_config, model.signal, background_ws, p.name, p.parameters, p.xsec, model.treatment
        )
        for p in processed
    ]
    if patches:
        spec = make_patchset(
            background_ws,
            patches,
            description=f"Signal points for {model.signal.poi}: {', '.join(p.name for p in patches)}",
            inspire_id=inspire_id,
        )
        spec["metadata"]["analysis_id"] = analysis_id  # the schema allows more metadata
        write_text_atomic(output / PATCHSET_NAME, _canonical(spec))
        for patch in patches:
            write_text_atomic(output / patch_file_name(patch.name), _canonical(list(patch.operations)))

    points = (
        tuple(evaluate(patch.apply(background_ws), patch.name, patch.parameters, patch.xsec) for patch in patches)
        if limits
        else ()
    )
    if points:
        write_json_atomic(output / LIMITS_NAME, [p.to_dict() for p in points])
    _write_hepdata(output, background_ws, model, [p.to_dict() for p in points], inspire_id, analysis_id)

    record = Provenance(
        "published-likelihood",
        inputs={"background": inputs, "signals": [dict(p.record) for p in processed]},
        configuration=config_records(model.paths),
        seeds={"jet_pt_resolution": model.analysis.pt_res_seed, **inputs.get("seeds", {})},
        parameters={
            "poi": model.signal.poi,
            "signal_sample": model.signal.sample_name,
            "limits": limits,
            "analysis_id": analysis_id,
            "hepdata_record": inspire_id,
        },
    )
    record.record_outputs(output, [p for p in output.rglob("*") if p.is_file() and p.name != PROVENANCE_NAME])
    record.write(output / PROVENANCE_NAME)
    log.info("published %s with %d signal point(s) in %s", BACKGROUND_NAME, len(patches), output)
    return PublishResult(
        output,
        output / BACKGROUND_NAME,
        output / PATCHSET_NAME,
        points,
        {"total": round(time.perf_counter() - start, 3)},
    )


def _remove_previous(output: Path) -> None:
    """Remove what an earlier publication into ``output`` wrote (its record lists it), so that
    no stale patch outlives it."""
    record = output / PROVENANCE_NAME
    if not record.is_file():
        return
    for name in json.loads(record.read_text()).get("outputs", {}):
        (output / name).unlink(missing_ok=True)
    record.unlink()
    log.info("%s: replaced the previous publication", output)


def _write_hepdata(
    output: Path,
    background_ws: Mapping[str, Any],
    model: PreservedModel,
    points: Sequence[Mapping[str, Any]],
    inspire_id: str,
    analysis_id: str,
) -> None:
    regions = model.sb_config["Regions"]
    binning = {r["Name"]: r["Binning"] for r in regions}
    variables = {r["Name"]: r.get("Variable", "observable") for r in regions}
    lumi = model.analysis.luminosity
    tables = [
        *hepdata.yields_tables(background_ws, binning, variables, lumi, postfit=False),
        *hepdata.yields_tables(background_ws, binning, variables, lumi, postfit=True),
    ]
    labels = set.intersection(*(set(p["parameters"]) for p in points)) if points else set()
    if labels:
        tables.append(hepdata.limits_table(points, sorted(labels)[0], model.signal.poi))
    # the likelihood goes into the submission as HistFactory resources (pyhf JSON)
    resources = [
        hepdata.Resource(output / BACKGROUND_NAME, "Background-only likelihood (pyhf JSON workspace)", "HistFactory"),
    ]
    if (output / PATCHSET_NAME).is_file():
        resources.append(hepdata.Resource(output / PATCHSET_NAME, "Signal patchset (pyhf PatchSet)", "HistFactory"))
    hepdata.write_submission(output / HEPDATA_DIRNAME, tables, resources, record=inspire_id, analysis_id=analysis_id)


# -- reinterpretation ---------------------------------------------------------------------------

SIGNAL_HISTOGRAMS_NAME = "signal.root"
PATCH_NAME = "patch.json"
WORKSPACE_NAME = "workspace.json"
RESULT_NAME = "result.json"


@dataclass(frozen=True)
class ReinterpretationResult:
    point: PointResult
    output: Path
    timings: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {**self.point.to_dict(), "timings_s": dict(self.timings)}


def reinterpret_signal(
    signal_description: str | Path,
    published: str | Path,
    output: str | Path,
    *,
    limit: bool = True,
    params: Any = None,
) -> ReinterpretationResult:
    """Process a new signal with the published configuration, patch it into the published
    background-only likelihood, and compute CLs at signal strength 1 and the upper limit.

    Writes ``signal.root`` (+ record), ``patch.json`` (for ``pyhf cls BkgOnly.json -p``),
    ``patchset.json``, ``workspace.json`` (signal plus background), ``result.json`` and
    ``provenance.json`` into ``output``.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    preserved = PublishedAnalysis.load(published)
    signal = load_signal(signal_description)
    model = preserved.model
    histograms = process_signal(
        signal, output / SIGNAL_HISTOGRAMS_NAME, model.analysis, model.signal.sample_path, params
    )
    timings["processing"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    patch = signal_patch(
        histograms,
        model.sb_config,
        model.signal,
        preserved.background_ws,
        signal.name,
        signal.parameters,
        signal.xsec,
        model.treatment,
    )
    ws = patch.apply(preserved.background_ws)
    write_text_atomic(output / PATCH_NAME, _canonical(list(patch.operations)))
    write_text_atomic(output / PATCHSET_NAME, _canonical(make_patchset(preserved.background_ws, [patch])))
    write_text_atomic(output / WORKSPACE_NAME, _canonical(ws))
    timings["patch"] = round(time.perf_counter() - start, 3)
    point = evaluate(ws, signal.name, signal.parameters, signal.xsec, with_limit=limit)
    timings.update(point.timings)
    result = ReinterpretationResult(point, output, timings)
    write_json_atomic(output / RESULT_NAME, result.to_dict())

    record = Provenance(
        "reinterpretation",
        inputs={
            "signal": json.loads(sidecar(histograms).read_text())["inputs"]["samples"],
            "signal_description": FileRecord.of(signal_description).to_dict(),
            "published": {
                "path": str(preserved.root.resolve()),
                BACKGROUND_NAME: FileRecord.of(preserved.root / BACKGROUND_NAME).to_dict(),
                PROVENANCE_NAME: FileRecord.of(preserved.root / PROVENANCE_NAME).to_dict(),
            },
        },
        configuration=config_records(model.paths),
        seeds={"jet_pt_resolution": model.analysis.pt_res_seed, **json.loads(sidecar(histograms).read_text())["seeds"]},
        parameters={"poi": model.signal.poi, "limit": limit, "signal": signal.record()},
    )
    record.record_outputs(output, [p for p in output.rglob("*") if p.is_file() and p.name != PROVENANCE_NAME])
    record.write(output / PROVENANCE_NAME)
    return result
