"""The statistical model's configuration: ``cabinetry_config.yml`` loaded, validated against
cabinetry's schema (extended by ``Categories``, which splits a region into ML-score categories) and
against the analysis configuration (regions, variations and binning the processor produces)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from utils.config import (
    REPO_ROOT,
    AnalysisConfig,
    load_analysis_config,
    read_yaml,
    validate_against_schema,
)
from utils.errors import ConfigError
from utils.histograms.accumulate import N_CLASSES, category_name
from utils.inference.treatment import TREATMENT_KEY, TreatmentRules, parse_treatment

log = logging.getLogger(__name__)


DEFAULT_CABINETRY_CONFIG = REPO_ROOT / "cabinetry_config.yml"
#: the key of our one extension to cabinetry's region schema
CATEGORIES_KEY = "Categories"

Template = Literal["Up", "Down"] | None

#: what the fit is given as observed data: the pseudo-data of ``analysis_config.yml``
#: (``{region}_pseudodata``) or the dataset's ``data`` sample (``{region}_data``)
FIT_DATA = ("pseudodata", "data")
OBSERVED_SAMPLES = {"pseudodata": ("Pseudodata", "pseudodata"), "data": ("Data", "data")}


def check_fit_data(fit_data: str) -> str:
    if fit_data not in FIT_DATA:
        raise ConfigError(
            f"FIT_DATA={fit_data!r}: allowed {list(FIT_DATA)} ('pseudodata': the pseudo-data built from the "
            "MC templates; 'data': the dataset's data sample)"
        )
    return fit_data


def with_observed(config: Mapping[str, Any], fit_data: str) -> dict[str, Any]:
    """A copy of ``config`` whose observed-data sample (the one with ``Data: true``) reads the
    histograms of ``fit_data`` (:data:`FIT_DATA`); ``"pseudodata"`` keeps the configuration's own."""
    check_fit_data(fit_data)
    out: dict[str, Any] = copy.deepcopy(dict(config))
    if fit_data == "pseudodata":
        return out
    observed = [s for s in out.get("Samples", []) if s.get("Data")]
    if len(observed) != 1:
        raise ConfigError(f"the model needs exactly one sample with 'Data: true'; found {len(observed)}")
    name, path = OBSERVED_SAMPLES[fit_data]
    old = observed[0]["Name"]
    observed[0]["Name"], observed[0]["SamplePath"] = name, path
    for section in ("NormFactors", "Systematics"):  # settings that name the observed sample
        for item in out.get(section, []):
            samples = item.get("Samples")
            if samples == old:
                item["Samples"] = name
            elif isinstance(samples, list):
                item["Samples"] = [name if s == old else s for s in samples]
    return out


# -- configuration ------------------------------------------------------------------------------


def _config_schema() -> dict[str, Any]:
    """cabinetry's configuration schema, with our ``Categories`` region key added."""
    import pkgutil

    raw = pkgutil.get_data("cabinetry", "schemas/config.json")
    if raw is None:  # pragma: no cover - broken cabinetry installation
        raise ConfigError("cabinetry's configuration schema (cabinetry/schemas/config.json) is missing")
    schema = json.loads(raw)
    # the template treatment section is validated by utils.inference.treatment
    schema["properties"][TREATMENT_KEY] = {"type": "object"}
    schema["definitions"]["region"]["properties"][CATEGORIES_KEY] = {
        "description": "split the region into one region per category (ML-score categories)",
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
    }
    return schema


def expand_categories(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with every region that lists ``Categories`` split up.

    Region ``{"Name": "4j2b SR", "RegionPath": "4j2b", "Categories": ["ML0", "ML1"]}`` becomes
    regions "4j2b SR ML0" and "4j2b SR ML1" reading histograms ``4j2b_ML0_...`` and
    ``4j2b_ML1_...``. Every ``Regions`` setting (samples, norm factors, systematics, smoothing)
    that names the original region is rewritten to name all of its categories.
    """
    out: dict[str, Any] = copy.deepcopy(dict(config))
    renamed: dict[str, list[str]] = {}
    regions: list[dict[str, Any]] = []
    for region in out.get("Regions", []):
        categories = region.pop(CATEGORIES_KEY, None)
        if not categories:
            regions.append(region)
            continue
        names = []
        for category in categories:
            new = dict(region, Name=f"{region['Name']} {category}")
            if "RegionPath" in region:
                new["RegionPath"] = f"{region['RegionPath']}_{category}"
            regions.append(new)
            names.append(new["Name"])
        renamed[region["Name"]] = names
    out["Regions"] = regions
    if renamed:

        def rewrite(item: dict[str, Any]) -> None:
            if "Regions" in item:
                setting = item["Regions"] if isinstance(item["Regions"], list) else [item["Regions"]]
                item["Regions"] = [n for r in setting for n in renamed.get(r, [r])]

        for section in ("Samples", "NormFactors", "Systematics"):
            for item in out.get(section, []):
                rewrite(item)
                if isinstance(item.get("Smoothing"), dict):
                    rewrite(item["Smoothing"])
    return out


def _analysis_histogram_edges(analysis: AnalysisConfig) -> np.ndarray:
    return np.linspace(analysis.hist_low, analysis.hist_high, analysis.hist_bins + 1)


def _assignment_feature_edges() -> dict[str, np.ndarray]:
    """Bin edges of the jet-assignment feature histograms (``histograms_ml.root``) by name."""
    from utils.ml.assignment.features import FEATURES, N_BINS

    return {f.name: np.linspace(f.low, f.high, N_BINS + 1) for f in FEATURES}


def _known_variations(analysis: AnalysisConfig) -> set[str]:
    """Every variation name the processor writes histograms for (nominal excluded)."""
    names = set(analysis.jet_variations[1:]) | set(analysis.alternative_variations)
    processes = {p for fw in analysis.flat_weights for p in fw.processes} | {analysis.alternative_process}
    for process in processes:
        names |= set(analysis.weight_variations(process))
    return names


def _semantic_checks(config: dict[str, Any], analysis: AnalysisConfig, source: str) -> None:
    """Checks cabinetry cannot make: does the model fit the histograms the analysis produces?"""
    problems: list[str] = []
    general = config["General"]
    if ":" not in general["InputPath"]:
        problems.append(
            f"at ['General']['InputPath']: {general['InputPath']!r} has no colon; expected "
            "'histograms.root:{RegionPath}_{SamplePath}{VariationPath}'"
        )
    norm_factors = [nf["Name"] for nf in config["NormFactors"]]
    if general.get("POI") and general["POI"] not in norm_factors:
        problems.append(f"at ['General']['POI']: {general['POI']!r} is not a NormFactor; NormFactors: {norm_factors}")

    analysis_edges = _analysis_histogram_edges(analysis)
    features = _assignment_feature_edges()
    for i, region in enumerate(config["Regions"]):
        region_path = str(region.get("RegionPath", ""))
        edges, where = analysis_edges, (f"{analysis.hist_bins} bins, {analysis.hist_low}-{analysis.hist_high} in "
                                        f"{analysis.source}")  # fmt: skip
        if region_path in features:  # a histogram of histograms_ml.root (jet-parton assignment)
            edges = features[region_path]
            where = f"{len(edges) - 1} bins, {edges[0]:g}-{edges[-1]:g} of jet-assignment feature {region_path}"
        elif not any(region_path == r or region_path.startswith(f"{r}_") for r in analysis.region_names):
            problems.append(
                f"at ['Regions'][{i}]['RegionPath']: {region.get('RegionPath')!r} does not start with a region of "
                f"{analysis.source} (allowed: {list(analysis.region_names)}) and is no jet-assignment feature "
                f"({sorted(features)})"
            )
        binning = region.get("Binning")
        if binning is not None:
            outside = [b for b in binning if not np.isclose(edges, b, rtol=0, atol=1e-9).any()]
            if outside or list(binning) != sorted(binning):
                problems.append(
                    f"at ['Regions'][{i}]['Binning']: edges must increase and be edges of the saved histograms "
                    f"({where}); not edges: {outside}"
                )
    for i, sample in enumerate(config["Samples"]):
        if not isinstance(sample.get("SamplePath"), str):
            problems.append(
                f"at ['Samples'][{i}]: sample {sample['Name']!r} needs one SamplePath string for histogram inputs"
            )

    known = _known_variations(analysis)
    for i, syst in enumerate(config.get("Systematics", [])):
        for template in ("Up", "Down"):
            path = syst.get(template, {}).get("VariationPath")
            if path is None:
                continue
            if not path.startswith("_") or path[1:] not in known:
                problems.append(
                    f"at ['Systematics'][{i}][{template!r}]['VariationPath']: {path!r} is not '_' + a variation "
                    f"of {analysis.source}; allowed: {sorted('_' + n for n in known)}"
                )
    if problems:
        raise ConfigError(
            f"{source}: inconsistent statistical model ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )


def parse_cabinetry_config(
    data: Any, source: str = "<cabinetry configuration>", analysis: AnalysisConfig | None = None
) -> dict[str, Any]:
    """Validate a cabinetry configuration given as data; return it with categories expanded.

    Raises :class:`ConfigError` naming the source and the key path of every problem.
    """
    import cabinetry

    validate_against_schema(data, _config_schema(), source)
    config = expand_categories(data)
    treatment_rules(data, source)  # ours, not cabinetry's: checked here, removed below
    config.pop(TREATMENT_KEY, None)
    try:
        cabinetry.configuration.validate(config)
    except (ValueError, NotImplementedError) as err:
        raise ConfigError(f"{source}: {err}") from None
    _semantic_checks(config, analysis or load_analysis_config(), source)
    return config


def with_ml_categories(config: Mapping[str, Any], n_classes: int = N_CLASSES) -> dict[str, Any]:
    """The model with every region split into its ML-score categories (``Categories: [ML0, ML1]``,
    expanded by :func:`expand_categories`): the histograms ``save_histograms(...,
    ml_categories=True)`` writes from a run with the classifier. The only source of the ML model:
    no second configuration file to keep in step."""
    out: dict[str, Any] = copy.deepcopy(dict(config))
    for region in out.get("Regions", []):
        if CATEGORIES_KEY in region:
            raise ConfigError(
                f"region {region.get('Name')!r} already has {CATEGORIES_KEY}; ML categories are added once"
            )
        region[CATEGORIES_KEY] = [category_name(c) for c in range(n_classes)]
    return out


def load_cabinetry_config(
    path: str | Path | None = None, analysis: AnalysisConfig | None = None, *, ml_categories: bool = False
) -> dict[str, Any]:
    """Load and validate ``cabinetry_config.yml`` (default: the repository's); with
    ``ml_categories`` every region is split into its ML-score categories (:func:`with_ml_categories`)."""
    path = Path(path) if path is not None else DEFAULT_CABINETRY_CONFIG
    data = read_yaml(path)
    if ml_categories:
        data = with_ml_categories(data)
    return parse_cabinetry_config(data, source=str(path), analysis=analysis)


def treatment_rules(data: Any, source: str = "<cabinetry configuration>") -> TreatmentRules:
    """The validated ``TemplateTreatment`` section of a configuration given as data (may be absent)."""
    names = [s["Name"] for s in data.get("Systematics", [])] if isinstance(data, Mapping) else []
    section = data.get(TREATMENT_KEY) if isinstance(data, Mapping) else None
    return parse_treatment(section, source, names)


def load_model_config(
    path: str | Path | None = None, analysis: AnalysisConfig | None = None, *, ml_categories: bool = False
) -> tuple[dict[str, Any], TreatmentRules]:
    """:func:`load_cabinetry_config` and the template treatment rules of the same file."""
    path = Path(path) if path is not None else DEFAULT_CABINETRY_CONFIG
    data = read_yaml(path)
    rules = treatment_rules(data, str(path))
    if ml_categories:
        data = with_ml_categories(data)
    return parse_cabinetry_config(data, source=str(path), analysis=analysis), rules


def with_paths(config: Mapping[str, Any], histograms_path: str | Path, histogram_folder: str | Path) -> dict[str, Any]:
    """Return a copy of ``config`` reading ``histograms_path`` and keeping templates in ``histogram_folder``.

    The file part of ``InputPath`` (everything before its last colon) is replaced; the part
    after it (the histogram name with its placeholders) is kept.
    """
    out: dict[str, Any] = copy.deepcopy(dict(config))
    _, _, in_file = out["General"]["InputPath"].rpartition(":")
    out["General"]["InputPath"] = f"{Path(histograms_path).resolve()}:{in_file}"
    out["General"]["HistogramFolder"] = str(histogram_folder)
    return out


# -- templates ----------------------------------------------------------------------------------
