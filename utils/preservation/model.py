"""The preserved likelihood: background-only workspace, signal patches, patchsets.

The signal model (``cabinetry_config_signal.yml``) says what a signal adds to the analysis
model of ``cabinetry_config.yml``: one sample, its NormFactor (the POI of every
reinterpretation, ``mu_sig``) and the background systematics that also act on it. From both:

- :func:`background_only_workspace`: the analysis workspace of the backgrounds (ttbar with its
  ``ttbar_norm``, now a free nuisance parameter) with the measurement of the signal model: POI
  the signal strength, which only a signal patch brings to the channels (the HEPData
  ``BkgOnly.json`` convention);
- :func:`signal_patch`: the JSON patch that adds one signal (its templates from the signal's
  histograms alone, modifiers as cabinetry builds them) to every channel;
- :func:`make_patchset`: patches of a signal family as a ``pyhf.PatchSet`` (validated).

CLs and upper limits of a patched workspace: :mod:`utils.preservation.evaluation`.

Applying a patch to the background-only workspace gives the workspace cabinetry builds from
all histograms with the signal-plus-background configuration
(:func:`signal_plus_background_config`), so a signal never needs the backgrounds reprocessed.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import REPO_ROOT, AnalysisConfig, load_analysis_config, read_yaml, validate_against_schema
from utils.errors import ConfigError, StatisticsError
from utils.inference.treatment import TreatmentRules

log = logging.getLogger(__name__)

DEFAULT_SIGNAL_CONFIG = REPO_ROOT / "cabinetry_config_signal.yml"
PATCHSET_VERSION = "1.0.0"
#: pyhf's patchset schema requires a HEPData reference; this one says "none yet"
PLACEHOLDER_INSPIRE_ID = "ins0000000"

SIGNAL_MODEL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["POI", "Sample", "NormFactor", "Systematics"],
    "properties": {
        "POI": {"type": "string", "minLength": 1},
        "Sample": {
            "type": "object",
            "additionalProperties": False,
            "required": ["Name", "SamplePath"],
            "properties": {
                "Name": {"type": "string", "minLength": 1},
                "SamplePath": {"type": "string", "minLength": 1},
            },
        },
        "NormFactor": {
            "type": "object",
            "additionalProperties": False,
            "required": ["Name", "Nominal", "Bounds"],
            "properties": {
                "Name": {"type": "string"},
                "Nominal": {"type": "number"},
                "Bounds": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            },
        },
        "Systematics": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    },
}


# -- the signal model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalModel:
    """What a signal adds to the analysis model (``cabinetry_config_signal.yml``)."""

    poi: str
    sample: Mapping[str, Any]
    norm_factor: Mapping[str, Any]
    systematics: tuple[str, ...]
    source: str = ""

    @property
    def sample_name(self) -> str:
        return str(self.sample["Name"])

    @property
    def sample_path(self) -> str:
        """The process name the signal is processed as (its histograms' SamplePath)."""
        return str(self.sample["SamplePath"])


def load_signal_model(path: str | Path | None = None) -> SignalModel:
    path = Path(path) if path is not None else DEFAULT_SIGNAL_CONFIG
    data = read_yaml(path)
    validate_against_schema(data, SIGNAL_MODEL_SCHEMA, str(path))
    if data["NormFactor"]["Name"] != data["POI"]:
        raise ConfigError(
            f"{path}: at ['NormFactor']['Name']: {data['NormFactor']['Name']!r} must be the POI {data['POI']!r}"
        )
    low, high = data["NormFactor"]["Bounds"]
    if not low <= data["NormFactor"]["Nominal"] <= high:
        raise ConfigError(f"{path}: at ['NormFactor']: Nominal must lie within Bounds {[low, high]}")
    return SignalModel(data["POI"], data["Sample"], data["NormFactor"], tuple(data["Systematics"]), str(path))


def _as_list(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else [value]


def signal_plus_background_config(
    base: Mapping[str, Any], signal: SignalModel, analysis: AnalysisConfig | None = None
) -> dict[str, Any]:
    """The raw cabinetry configuration of signal plus background: ``base`` (the analysis
    model, as read from YAML) with the signal sample appended to Samples, its NormFactor to
    NormFactors, the POI set, and the sample added to the listed systematics.

    Checks: every listed systematic exists and its templates are ones the processor fills for
    a nominal sample of the signal; a systematic that names no samples (so acts on all) must be
    listed.
    """
    from utils.processing.processor import sample_variations

    analysis = analysis or load_analysis_config()
    config = copy.deepcopy(dict(base))
    where = signal.source or "signal model"
    names = [s["Name"] for s in config["Samples"]]
    if signal.sample_name in names:
        raise ConfigError(f"{where}: at ['Sample']['Name']: {signal.sample_name!r} is already a sample of the model")
    if signal.poi in [nf["Name"] for nf in config.get("NormFactors", [])]:
        raise ConfigError(f"{where}: at ['POI']: {signal.poi!r} is already a NormFactor of the model")
    systematics = {s["Name"]: s for s in config.get("Systematics", [])}
    unknown = sorted(set(signal.systematics) - set(systematics))
    if unknown:
        raise ConfigError(
            f"{where}: at ['Systematics']: {unknown} are not systematics of the model: {list(systematics)}"
        )
    filled = set(sample_variations(analysis, signal.sample_path, "nominal"))
    problems = []
    for name, syst in systematics.items():
        listed = name in signal.systematics
        if not listed and "Samples" not in syst:
            problems.append(f"{name!r} acts on every sample: list it, or give it Samples in the analysis model")
        if not listed:
            continue
        for template in ("Up", "Down"):
            path = syst.get(template, {}).get("VariationPath")
            if path is not None and path.lstrip("_") not in filled:
                problems.append(f"{name!r} needs template {path!r}, which a nominal signal sample does not fill")
        if "Samples" in syst:
            syst["Samples"] = [*_as_list(syst["Samples"]), signal.sample_name]
    if problems:
        raise ConfigError(f"{where}: at ['Systematics']:\n  " + "\n  ".join(problems))
    config["General"] = {**config["General"], "POI": signal.poi}
    config["Samples"] = [*config["Samples"], dict(signal.sample)]
    config["NormFactors"] = [*config.get("NormFactors", []), {**signal.norm_factor, "Samples": signal.sample_name}]
    return config


# -- workspaces and patches ---------------------------------------------------------------------


def background_only_workspace(
    histograms_path: str | Path,
    sb_config: Mapping[str, Any],
    cabinetry_config_path: str | Path | None = None,
) -> dict[str, Any]:
    """The analysis workspace of the backgrounds (``cabinetry_config_path``) with the
    measurement of the signal-plus-background model ``sb_config``: POI the signal strength, its
    bounds and initial value included (pyhf ignores settings of a parameter the model lacks),
    so that a patch only adds samples to channels (``pyhf cls --patch`` applies patches to the
    channels of the model, not to the measurement)."""
    import cabinetry

    from utils.inference.results import prepare_workspace

    with tempfile.TemporaryDirectory(prefix="agc-bkgonly-") as tmp:
        _, ws, _ = prepare_workspace(histograms_path, tmp, cabinetry_config_path, keep_templates=False)
    ws["measurements"] = cabinetry.workspace.WorkspaceBuilder(dict(sb_config)).measurements()
    return ws


@dataclass(frozen=True)
class SignalPatch:
    """One signal point: its name, model parameters, and the JSON patch (RFC 6902) operations."""

    name: str
    operations: tuple[dict[str, Any], ...]
    parameters: Mapping[str, float] = field(default_factory=dict)
    xsec: float | None = None  # pb, for the record (patch metadata)

    def apply(self, background_ws: Mapping[str, Any]) -> dict[str, Any]:
        import jsonpatch

        return jsonpatch.apply_patch(dict(background_ws), list(self.operations))


def signal_patch(
    signal_histograms: str | Path,
    sb_config: Mapping[str, Any],
    signal: SignalModel,
    background_ws: Mapping[str, Any],
    name: str,
    parameters: Mapping[str, float] | None = None,
    xsec: float | None = None,
    rules: TreatmentRules | None = None,
) -> SignalPatch:
    """The patch adding the signal of ``signal_histograms`` (its templates, read as sample
    ``signal.sample_path``) to ``background_ws``. ``rules``: the model's template treatment,
    applied to the signal's templates as in the full model (``DropEmptyBins`` with the background
    prediction of ``background_ws``), so that the patched workspace is the full model's.

    ``sb_config``: the parsed signal-plus-background configuration
    (:func:`utils.inference.fit.parse_cabinetry_config` of :func:`signal_plus_background_config`).
    Templates are built (rebinned) and turned into the sample's modifiers exactly as cabinetry
    does for the full model; only the signal sample is built.
    """
    import cabinetry

    from utils.inference.config import with_paths
    from utils.inference.templates import build_templates

    only_signal = copy.deepcopy(dict(sb_config))
    only_signal["Samples"] = [s for s in only_signal["Samples"] if s["Name"] == signal.sample_name]
    with tempfile.TemporaryDirectory(prefix="agc-signal-templates-") as tmp:
        config = with_paths(only_signal, signal_histograms, tmp)
        background = {
            c["name"]: np.sum([np.asarray(smp["data"], dtype=float) for smp in c["samples"]], axis=0)
            for c in background_ws["channels"]
        }
        build_templates(config, signal_histograms, rules, other_nominal=background)
        builder = cabinetry.workspace.WorkspaceBuilder(config)
        channels = builder.channels()
        measurement = builder.measurements()[0]
    index = {c["name"]: i for i, c in enumerate(background_ws["channels"])}
    missing = [c["name"] for c in channels if c["name"] not in index]
    if missing:
        raise StatisticsError(f"the background-only workspace has no channel(s) {missing}; it has {list(index)}")
    operations: list[dict[str, Any]] = []
    for channel in channels:
        for sample in channel["samples"]:
            operations.append({"op": "add", "path": f"/channels/{index[channel['name']]}/samples/-", "value": sample})
    bkg_measurements = {m["name"]: i for i, m in enumerate(background_ws["measurements"])}
    if measurement["name"] not in bkg_measurements:
        raise StatisticsError(
            f"the background-only workspace has no measurement {measurement['name']!r}; it has {list(bkg_measurements)}"
        )
    m = bkg_measurements[measurement["name"]]
    known = {p["name"] for p in background_ws["measurements"][m]["config"].get("parameters", [])}
    for parameter in measurement["config"]["parameters"]:
        if parameter["name"] not in known:
            operations.append({"op": "add", "path": f"/measurements/{m}/config/parameters/-", "value": parameter})
    return SignalPatch(name, tuple(operations), dict(parameters or {}), xsec)


def make_patchset(
    background_ws: Mapping[str, Any],
    patches: Sequence[SignalPatch],
    *,
    name: str = "AGC ttbar reinterpretation",
    description: str = "",
    labels: Sequence[str] | None = None,
    inspire_id: str = PLACEHOLDER_INSPIRE_ID,
) -> dict[str, Any]:
    """A ``pyhf.PatchSet`` specification (validated against pyhf's schema and digest-checked
    against ``background_ws``). ``labels``: the model parameters that label the points
    (default: those every patch has, sorted; ``index`` where they have none in common).
    ``inspire_id``: the HEPData reference (``ins`` + 7 digits) the schema requires."""
    import pyhf

    if not patches:
        raise StatisticsError("a patchset needs at least one signal patch")
    names = [p.name for p in patches]
    if len(set(names)) != len(names):
        raise StatisticsError(f"signal point names must be unique: {names}")
    if labels is None:
        labels = sorted(set.intersection(*(set(p.parameters) for p in patches)))
    if any(k not in p.parameters for p in patches for k in labels):
        raise StatisticsError(f"every signal point needs the parameters {list(labels)}")
    if labels:
        values = {p.name: [float(p.parameters[k]) for k in labels] for p in patches}
    else:
        labels, values = ["index"], {p.name: [float(i)] for i, p in enumerate(patches)}
    spec = {
        "metadata": {
            "name": name,
            "description": description or name,
            "digests": {"sha256": pyhf.utils.digest(dict(background_ws))},
            "labels": list(labels),
            "references": {"hepdata": inspire_id},
        },
        "patches": [{"metadata": _patch_metadata(p, values[p.name]), "patch": list(p.operations)} for p in patches],
        "version": PATCHSET_VERSION,
    }
    patchset = pyhf.PatchSet(spec)  # validates the schema
    patchset.verify(pyhf.Workspace(dict(background_ws)))
    return spec


def _patch_metadata(patch: SignalPatch, values: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": patch.name, "values": values}
    if patch.xsec is not None:
        out["xsec_pb"] = patch.xsec
    return out
