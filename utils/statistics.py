"""The statistical inference stage: cabinetry templates, pyhf workspace, fit, ranking, limits.

The model is described by ``cabinetry_config.yml`` (repository root). This module

1. loads it, validates it against cabinetry's JSON schema (extended by one key, ``Categories``,
   that splits a region into ML-score categories) and against the analysis configuration
   (regions, variation names and binning must be ones the processor produces);
2. checks that every histogram the model needs exists in the run's ``histograms.root``
   (a missing template is an error naming all missing histograms, never a silent zero);
3. builds the templates from the un-rebinned histograms, applying each region's ``Binning``;
4. builds and saves ``workspace.json``, runs the maximum-likelihood fit (and on request the
   impact ranking, discovery significance and upper limit), saves figures and a results JSON.

Every output lands atomically: cabinetry writes its template files into a temporary folder
that is renamed into place, and everything else goes through :mod:`utils.io`.

Entry point: :func:`run_inference`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from utils.config import (
    REPO_ROOT,
    AnalysisConfig,
    load_analysis_config,
    read_yaml,
    validate_against_schema,
)
from utils.errors import ConfigError, StatisticsError
from utils.io import sha256_file, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_CABINETRY_CONFIG = REPO_ROOT / "cabinetry_config.yml"
#: the key of our one extension to cabinetry's region schema
CATEGORIES_KEY = "Categories"
WORKSPACE_NAME = "workspace.json"
RESULTS_NAME = "fit_results.json"
TEMPLATES_DIRNAME = "templates"
FIGURES_DIRNAME = "figures"

Template = Literal["Up", "Down"] | None


# -- configuration ------------------------------------------------------------------------------


def _config_schema() -> dict[str, Any]:
    """cabinetry's configuration schema, with our ``Categories`` region key added."""
    import pkgutil

    raw = pkgutil.get_data("cabinetry", "schemas/config.json")
    if raw is None:  # pragma: no cover - broken cabinetry installation
        raise ConfigError("cabinetry's configuration schema (cabinetry/schemas/config.json) is missing")
    schema = json.loads(raw)
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
    config = copy.deepcopy(dict(config))
    renamed: dict[str, list[str]] = {}
    regions: list[dict[str, Any]] = []
    for region in config.get("Regions", []):
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
    config["Regions"] = regions
    if renamed:

        def rewrite(item: dict[str, Any]) -> None:
            if "Regions" in item:
                setting = item["Regions"] if isinstance(item["Regions"], list) else [item["Regions"]]
                item["Regions"] = [n for r in setting for n in renamed.get(r, [r])]

        for section in ("Samples", "NormFactors", "Systematics"):
            for item in config.get(section, []):
                rewrite(item)
                if isinstance(item.get("Smoothing"), dict):
                    rewrite(item["Smoothing"])
    return config


def _analysis_histogram_edges(analysis: AnalysisConfig) -> np.ndarray:
    return np.linspace(analysis.hist_low, analysis.hist_high, analysis.hist_bins + 1)


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
    for i, region in enumerate(config["Regions"]):
        region_path = str(region.get("RegionPath", ""))
        if not any(region_path == r or region_path.startswith(f"{r}_") for r in analysis.region_names):
            problems.append(
                f"at ['Regions'][{i}]['RegionPath']: {region.get('RegionPath')!r} does not start with a region of "
                f"{analysis.source} (allowed: {list(analysis.region_names)})"
            )
        binning = region.get("Binning")
        if binning is not None:
            outside = [b for b in binning if not np.isclose(analysis_edges, b, rtol=0, atol=1e-9).any()]
            if outside or list(binning) != sorted(binning):
                problems.append(
                    f"at ['Regions'][{i}]['Binning']: edges must increase and be edges of the saved histograms "
                    f"({analysis.hist_bins} bins, {analysis.hist_low}-{analysis.hist_high} in {analysis.source}); "
                    f"not edges: {outside}"
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
    try:
        cabinetry.configuration.validate(config)
    except (ValueError, NotImplementedError) as err:
        raise ConfigError(f"{source}: {err}") from None
    _semantic_checks(config, analysis or load_analysis_config(), source)
    return config


def load_cabinetry_config(path: str | Path | None = None, analysis: AnalysisConfig | None = None) -> dict[str, Any]:
    """Load and validate ``cabinetry_config.yml`` (default: the repository's)."""
    path = Path(path) if path is not None else DEFAULT_CABINETRY_CONFIG
    return parse_cabinetry_config(read_yaml(path), source=str(path), analysis=analysis)


def with_paths(config: Mapping[str, Any], histograms_path: str | Path, histogram_folder: str | Path) -> dict[str, Any]:
    """Return a copy of ``config`` reading ``histograms_path`` and keeping templates in ``histogram_folder``.

    The file part of ``InputPath`` (everything before its last colon) is replaced; the part
    after it (the histogram name with its placeholders) is kept.
    """
    config = copy.deepcopy(dict(config))
    _, _, in_file = config["General"]["InputPath"].rpartition(":")
    config["General"]["InputPath"] = f"{Path(histograms_path).resolve()}:{in_file}"
    config["General"]["HistogramFolder"] = str(histogram_folder)
    return config


# -- templates ----------------------------------------------------------------------------------


class TemplateRef(NamedTuple):
    """One histogram the model needs: where it comes from and what cabinetry calls it."""

    region: dict[str, Any]
    sample: dict[str, Any]
    systematic: dict[str, Any]
    template: Template
    histogram: str  # name inside histograms.root
    name: str  # cabinetry's template name (file stem in the template folder)


def _histogram_key(config: Mapping[str, Any], region, sample, systematic, template: Template) -> str:
    """The in-file histogram name for one template (cabinetry's placeholder rules)."""
    general = config["General"]
    settings = systematic.get(template, {}) if template is not None else {}
    values = {
        "{RegionPath}": settings.get("RegionPath", region.get("RegionPath", "")),
        "{SamplePath}": settings.get("SamplePath", sample.get("SamplePath", "")),
        "{VariationPath}": settings.get("VariationPath", general.get("VariationPath", "")),
    }
    key = general["InputPath"].rpartition(":")[2]
    for placeholder, value in values.items():
        key = key.replace(placeholder, value)
    return key


def required_templates(config: Mapping[str, Any]) -> list[TemplateRef]:
    """Every template the configuration needs, in cabinetry's order."""
    import cabinetry

    refs: list[TemplateRef] = []

    def collect(region, sample, systematic, template) -> None:
        refs.append(
            TemplateRef(
                region,
                sample,
                systematic,
                template,
                _histogram_key(config, region, sample, systematic, template),
                cabinetry.histo.name(region, sample, systematic, template=template),
            )
        )

    cabinetry.route.apply_to_all_templates(dict(config), collect)
    return refs


class HistogramData(NamedTuple):
    edges: np.ndarray
    values: np.ndarray  # in-range bins only
    variances: np.ndarray


def read_histograms(histograms_path: str | Path, names: list[str]) -> dict[str, HistogramData]:
    """Read the named 1D histograms; a missing file or histogram is a :class:`StatisticsError`."""
    import uproot

    histograms_path = Path(histograms_path)
    if not histograms_path.is_file():
        raise StatisticsError(f"{histograms_path}: histograms file not found; run the processing stage first")
    wanted = sorted(set(names))
    with uproot.open(histograms_path) as f:
        present = set(f.keys(cycle=False))
        missing = [n for n in wanted if n not in present]
        if missing:
            raise StatisticsError(
                f"{histograms_path}: {len(missing)} histogram(s) the statistical model needs are missing: "
                f"{', '.join(missing)}. Check the sample and variation names in the cabinetry configuration "
                "or rerun the processing stage with these systematics."
            )
        out: dict[str, HistogramData] = {}
        for name in wanted:
            obj = f[name]
            if not obj.classname.startswith("TH1"):
                raise StatisticsError(
                    f"{histograms_path}: {name!r} is a {obj.classname}, expected a 1D histogram (TH1)"
                )
            out[name] = HistogramData(
                np.asarray(obj.axis().edges(), dtype=float),
                np.asarray(obj.values(flow=False), dtype=float),
                np.asarray(obj.variances(flow=False), dtype=float),
            )
    return out


def rebin(histogram: HistogramData, new_edges: np.ndarray | list[float], name: str = "histogram") -> HistogramData:
    """Sum bins into ``new_edges`` (each must be an edge of the histogram); sumw2 adds up too.

    Content outside ``new_edges`` is left out (the fit range), flow bins included.
    """
    new_edges = np.asarray(new_edges, dtype=float)
    index = np.abs(histogram.edges[None, :] - new_edges[:, None]).argmin(axis=1)
    if not np.allclose(histogram.edges[index], new_edges, rtol=1e-9, atol=1e-9) or np.any(np.diff(index) <= 0):
        raise StatisticsError(
            f"{name}: cannot rebin edges {histogram.edges.tolist()} to {new_edges.tolist()}: every new edge must be "
            "an edge of the histogram, in increasing order"
        )
    segments = list(itertools.pairwise(index))
    values = np.array([histogram.values[a:b].sum() for a, b in segments])
    variances = np.array([histogram.variances[a:b].sum() for a, b in segments])
    return HistogramData(new_edges, values, variances)


def build_templates(config: Mapping[str, Any], histograms_path: str | Path | None = None) -> list[TemplateRef]:
    """Write every template (rebinned to its region's Binning) into ``HistogramFolder``.

    ``histograms_path`` defaults to the file part of ``InputPath``. All needed histograms are
    checked before anything is written.
    """
    import cabinetry

    if histograms_path is None:
        histograms_path = config["General"]["InputPath"].rpartition(":")[0]
    refs = required_templates(config)
    histograms = read_histograms(histograms_path, [r.histogram for r in refs])
    folder = Path(config["General"]["HistogramFolder"])
    folder.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        hist = histograms[ref.histogram]
        if ref.region.get("Binning") is not None:
            hist = rebin(hist, ref.region["Binning"], name=f"{histograms_path}:{ref.histogram}")
        template = cabinetry.histo.Histogram.from_arrays(hist.edges, hist.values, np.sqrt(hist.variances))
        template.validate(ref.name)  # logs empty bins and ill-defined uncertainties
        template.save(folder / ref.name)
    log.info("built %d templates from %s into %s", len(refs), histograms_path, folder)
    cabinetry.templates.postprocess(dict(config))
    return refs


# -- fitting ------------------------------------------------------------------------------------


@contextlib.contextmanager
def numpy_backend() -> Iterator[None]:
    """Run pyhf on its numpy backend inside the block (whatever a notebook set), then restore.

    Build models inside the block: a pyhf model keeps tensors of the backend it was built with.
    """
    import pyhf

    previous = pyhf.get_backend()
    pyhf.set_backend("numpy")
    try:
        yield
    finally:
        pyhf.set_backend(*previous)


def workspace_text(ws: Mapping[str, Any]) -> str:
    """The canonical serialisation of a workspace (cabinetry's: sorted keys, indent 4)."""
    return json.dumps(ws, sort_keys=True, indent=4)


def build_workspace(config: Mapping[str, Any], workspace_path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """Build the pyhf workspace from the templates; save it atomically if a path is given.

    Returns the workspace and the sha256 of its canonical JSON text.
    """
    import cabinetry

    ws = cabinetry.workspace.build(dict(config))
    text = workspace_text(ws)
    if workspace_path is not None:
        write_text_atomic(workspace_path, text)
        log.info("saved workspace to %s", workspace_path)
    return ws, hashlib.sha256(text.encode()).hexdigest()


def fit_workspace(ws: Mapping[str, Any], *, strategy: int | None = None, goodness_of_fit: bool = True):
    """Build model and data from a workspace and fit them (see :func:`fit_model`).

    Returns ``(model, data, cabinetry FitResults)``.
    """
    import cabinetry

    with numpy_backend():
        model, data = cabinetry.model_utils.model_and_data(dict(ws))
        return model, data, fit_model(model, data, strategy=strategy, goodness_of_fit=goodness_of_fit)


def fit_model(
    model: Any,
    data: list[float],
    *,
    strategy: int | None = None,
    goodness_of_fit: bool = True,
    init_pars: list[float] | None = None,
    fix_pars: list[bool] | None = None,
):
    """Maximum-likelihood fit with ``cabinetry.fit.fit`` (MINUIT through pyhf's numpy backend).

    ``strategy``: the MINUIT strategy; None is pyhf's choice (1 without gradients), which gives
    the published AGC uncertainty. Returns cabinetry's ``FitResults``; a failed minimisation is a
    :class:`StatisticsError`.
    """
    import cabinetry

    try:
        with numpy_backend():
            return cabinetry.fit.fit(
                model,
                data,
                strategy=strategy,
                goodness_of_fit=goodness_of_fit,
                init_pars=init_pars,
                fix_pars=fix_pars,
            )
    except Exception as err:  # pyhf.exceptions.FailedMinimization and friends
        raise StatisticsError(
            f"the maximum-likelihood fit failed ({_first_line(err)}); try another MINUIT strategy "
            "(--strategy 2) or check the templates for empty bins"
        ) from err


def _first_line(err: Exception) -> str:
    """Exception type and first message line (pyhf puts a whole MINUIT dump in its messages)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


@contextlib.contextmanager
def _quiet(level: int, *loggers: str) -> Iterator[None]:
    """Raise the named loggers to ``level`` inside the block."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, previous in saved.items():
            logging.getLogger(name).setLevel(previous)


def _impact_row(model, data, fit_results, i, prefit_unc, init, fixed, strategies) -> list[float]:
    """POI shifts with parameter ``i`` held at best-fit +/- pre-fit and +/- post-fit uncertainty.

    Refits start from ``init`` with parameter ``i`` moved and held.
    """
    label = model.config.par_names[i]
    poi_index = model.config.poi_index
    best, post = fit_results.bestfit[i], fit_results.uncertainty[i]
    row = []
    for value in (best + prefit_unc, best - prefit_unc, best + post, best - post):
        if value == best:  # unconstrained (no pre-fit uncertainty) or fixed parameter
            row.append(0.0)
            continue
        init_i, fixed_i = list(init), list(fixed)
        init_i[i], fixed_i[i] = float(value), True
        for attempt, strategy in enumerate(strategies):
            try:
                refit = fit_model(
                    model,
                    data,
                    strategy=strategy,
                    goodness_of_fit=False,
                    init_pars=init_i,
                    fix_pars=fixed_i,
                )
                break
            except StatisticsError as err:
                if attempt == len(strategies) - 1:
                    raise StatisticsError(f"ranking: the refit with {label} = {value:.4g} failed: {err}") from err
                log.warning("ranking: refit with %s = %.4g failed, retrying with MINUIT strategy 2", label, value)
        row.append(float(refit.bestfit[poi_index] - fit_results.bestfit[poi_index]))
    log.debug("impact of %s on the POI: %s", label, row)
    return row


def rank_parameters(
    model: Any,
    data: list[float],
    fit_results: Any,
    *,
    strategy: int | None = None,
    parameters: Sequence[str] | None = None,
):
    """Impact of each nuisance parameter on the POI; returns cabinetry's ``RankingResults``.

    The definition of ``cabinetry.fit.ranking``: refit with the parameter held at its best-fit
    value plus/minus its pre-fit and its post-fit uncertainty; the impact is the POI shift.
    Refits use :func:`fit_model`. A MINUIT refit that fails is retried with
    strategy 2 (with strategy 1, the default, a staterror refit of the AGC model fails), so one
    bad refit does not lose the whole ranking. ``parameters``: rank only these (default: all
    but the POI).
    """
    import cabinetry
    from cabinetry.fit.results_containers import RankingResults

    poi_index = model.config.poi_index
    if poi_index is None:
        raise StatisticsError("the model has no POI; cannot rank parameters by their impact on it")
    prefit = cabinetry.model_utils.prefit_uncertainties(model)
    names = list(model.config.par_names)
    unknown = sorted(set(parameters or ()) - set(names))
    if unknown:
        raise StatisticsError(f"ranking: no parameter(s) {unknown} in the model; parameters: {names}")
    ranked = [i for i, n in enumerate(names) if i != poi_index and (parameters is None or n in parameters)]
    # refits start from the suggested initial values, as cabinetry's do (starting from the
    # best-fit point was measured slower with MINUIT here)
    init = list(model.config.suggested_init())
    fixed = list(model.config.suggested_fixed())
    retry = [strategy] + ([2] if strategy != 2 else [])
    impacts = []
    # one summary per refit (and pyhf's dump of a failed one, retried here) would drown the log
    with _quiet(logging.WARNING, "cabinetry.fit"), _quiet(logging.CRITICAL, "pyhf"):
        for i in ranked:
            impacts.append(_impact_row(model, data, fit_results, i, prefit[i], init, fixed, retry))
    impacts_np = np.asarray(impacts).reshape(-1, 4)
    return RankingResults(
        np.asarray(fit_results.bestfit)[ranked],
        np.asarray(fit_results.uncertainty)[ranked],
        [names[i] for i in ranked],
        impacts_np[:, 0],
        impacts_np[:, 1],
        impacts_np[:, 2],
        impacts_np[:, 3],
    )


@dataclass(frozen=True)
class SignificanceSummary:
    observed_p_value: float
    observed_significance: float
    expected_p_value: float
    expected_significance: float


@dataclass(frozen=True)
class LimitSummary:
    confidence_level: float
    observed_limit: float
    expected_limit: tuple[float, ...]  # -2, -1, 0, +1, +2 sigma


@dataclass(frozen=True)
class Impact:
    parameter: str
    bestfit: float
    uncertainty: float
    prefit_up: float
    prefit_down: float
    postfit_up: float
    postfit_down: float


@dataclass(frozen=True)
class InferenceResult:
    """What the inference stage produced: the POI, every parameter, and where the outputs are."""

    poi_name: str
    bestfit: float
    uncertainty: float
    parameter_names: tuple[str, ...]
    parameter_values: tuple[float, ...]
    parameter_uncertainties: tuple[float, ...]
    correlations: np.ndarray = field(repr=False, compare=False)
    twice_nll: float
    goodness_of_fit: float | None  # p-value with a saturated model; None where undefined
    workspace_sha256: str
    workspace_path: Path
    results_path: Path
    templates_path: Path | None
    figures: dict[str, Path]
    timings: dict[str, float]
    strategy: int | None
    significance: SignificanceSummary | None = None
    limit: LimitSummary | None = None
    ranking: tuple[Impact, ...] | None = None
    #: optional steps (significance, limit) that failed -> why; the fit result stands
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def n_parameters(self) -> int:
        return len(self.parameter_names)

    def parameter(self, name: str) -> tuple[float, float]:
        """Best-fit value and uncertainty of a parameter by name."""
        try:
            i = self.parameter_names.index(name)
        except ValueError:
            raise StatisticsError(f"no parameter {name!r}; parameters: {list(self.parameter_names)}") from None
        return self.parameter_values[i], self.parameter_uncertainties[i]

    def to_dict(self) -> dict[str, Any]:
        """The results JSON content."""
        gof = self.goodness_of_fit
        return {
            "poi": {"name": self.poi_name, "bestfit": self.bestfit, "uncertainty": self.uncertainty},
            "parameters": [
                {"name": n, "bestfit": v, "uncertainty": u}
                for n, v, u in zip(
                    self.parameter_names, self.parameter_values, self.parameter_uncertainties, strict=True
                )
            ],
            "n_parameters": self.n_parameters,
            "correlations": np.round(self.correlations, 12).tolist(),
            "fit_quality": {"twice_nll": self.twice_nll, "goodness_of_fit_p_value": gof},
            "workspace": {"path": self.workspace_path.name, "sha256": self.workspace_sha256},
            "significance": _asdict(self.significance),
            "limit": _asdict(self.limit),
            "ranking": [_asdict(i) for i in self.ranking] if self.ranking is not None else None,
            "failures": dict(self.failures),
            "figures": {k: str(v.name) for k, v in self.figures.items()},
            "settings": {"pyhf_backend": "numpy", "minuit_strategy": self.strategy},
            "timings_s": self.timings,
        }


def _asdict(obj: Any) -> Any:
    """A dataclass as JSON-ready dict; infinite or NaN numbers (a 'significance' of a signal
    too large for double precision, say) become None, as strict JSON has no such numbers."""
    from dataclasses import asdict

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return {k: clean(v) for k, v in asdict(obj).items()} if obj is not None else None


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 4)
            log.debug("%s took %.3f s", name, self.timings[name])


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` that replaces ``target`` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary output folder
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}.", dir=target.parent))
            target.replace(old / target.name)
            tmp.replace(target)
            shutil.rmtree(old)
        else:
            tmp.replace(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def _template_folder(output_dir: Path, keep: bool) -> Iterator[Path]:
    """A scratch folder for cabinetry's template files; kept as ``output_dir/templates`` if asked."""
    if keep:
        with _atomic_dir(output_dir / TEMPLATES_DIRNAME) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix=".tmp-templates.", dir=output_dir) as tmp:
            yield Path(tmp)


def prepare_workspace(
    histograms_path: str | Path,
    output_dir: str | Path,
    cabinetry_config_path: str | Path | None = None,
    *,
    keep_templates: bool = True,
    timer: _Timer | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Load the model configuration, build templates and write ``output_dir/workspace.json``.

    Returns ``(config, workspace, workspace sha256)``; ``config`` points at the run's
    histograms file and at ``output_dir/templates``.
    """
    timer = timer or _Timer()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    raw_config = load_cabinetry_config(cabinetry_config_path)
    with _template_folder(output_dir, keep_templates) as folder:
        config = with_paths(raw_config, histograms_path, folder)
        with timer("templates"):
            build_templates(config, histograms_path)
        with timer("workspace"):
            ws, ws_sha = build_workspace(config, output_dir / WORKSPACE_NAME)
    return with_paths(raw_config, histograms_path, output_dir / TEMPLATES_DIRNAME), ws, ws_sha


@contextlib.contextmanager
def _recorded(failures: dict[str, str], step: str) -> Iterator[None]:
    """Turn a :class:`StatisticsError` of an optional step into an entry of ``failures``."""
    try:
        yield
    except StatisticsError as err:
        failures[step] = str(err)
        log.error("%s: %s", step, err)


def significance_of(model: Any, data: list[float], *, strategy: int | None = None) -> SignificanceSummary:
    """Discovery significance of the POI (``cabinetry.fit.significance``, asymptotic)."""
    import cabinetry

    try:
        with numpy_backend():
            sig = cabinetry.fit.significance(model, data, strategy=strategy)
    except Exception as err:  # pyhf's FailedMinimization, scipy's bracketing errors, ...
        raise StatisticsError(f"the significance calculation failed: {_first_line(err)}") from err
    return SignificanceSummary(*(float(x) for x in sig))


def upper_limit_of(model: Any, data: list[float], *, strategy: int | None = None) -> LimitSummary:
    """95% CL upper limit on the POI (``cabinetry.fit.limit``, CLs, asymptotic).

    The search starts at 1e-3, not cabinetry's 0.1: with a signal as large as ttbar the expected
    limit lies below 0.1 and the default bracket fails.
    """
    import cabinetry

    upper = model.config.suggested_bounds()[model.config.poi_index][1]
    try:
        with numpy_backend():
            lim = cabinetry.fit.limit(model, data, bracket=(1e-3, upper), strategy=strategy)
    except Exception as err:
        raise StatisticsError(
            f"the upper-limit search failed: {_first_line(err)} (a limit is meaningful for a small signal; "
            "for a measured signal such as ttbar the CLs scan near zero may not converge)"
        ) from err
    return LimitSummary(
        float(lim.confidence_level), float(lim.observed_limit), tuple(float(x) for x in lim.expected_limit)
    )


def run_inference(
    histograms_path: str | Path,
    output_dir: str | Path,
    cabinetry_config_path: str | Path | None = None,
    *,
    ranking: bool = False,
    significance: bool = False,
    limit: bool = False,
    figures: bool = True,
    strategy: int | None = None,
    keep_templates: bool = True,
    figure_format: str = "pdf",
) -> InferenceResult:
    """Run the whole inference stage on one ``histograms.root``; write everything to ``output_dir``.

    Writes ``workspace.json``, ``fit_results.json``, ``templates/`` (if ``keep_templates``) and
    ``figures/*.<figure_format>``. ``strategy``: the MINUIT strategy of every fit (None: pyhf's choice, 1).
    ``ranking`` refits the model four times per parameter (about two minutes for the AGC model).
    """
    from utils import plotting_stats

    histograms_path = Path(histograms_path)
    output_dir = Path(output_dir)
    timer = _Timer()
    sig_summary = lim_summary = impacts = ranking_results = None
    figure_paths: dict[str, Path] = {}
    failures: dict[str, str] = {}
    with timer("total"), numpy_backend():
        config, ws, ws_sha = prepare_workspace(
            histograms_path, output_dir, cabinetry_config_path, keep_templates=keep_templates, timer=timer
        )
        with timer("fit"):
            model, data, fit_results = fit_workspace(ws, strategy=strategy)
        # the fit stands without the optional extras: a failed one is recorded, not raised
        if significance:
            with timer("significance"), _recorded(failures, "significance"):
                sig_summary = significance_of(model, data, strategy=strategy)
        if limit:
            with timer("limit"), _recorded(failures, "limit"):
                lim_summary = upper_limit_of(model, data, strategy=strategy)
        if ranking:
            with timer("ranking"):
                ranking_results = rank_parameters(model, data, fit_results, strategy=strategy)
            impacts = _impacts(ranking_results)
        if figures:
            with timer("figures"):
                figure_paths = plotting_stats.inference_figures(
                    output_dir / FIGURES_DIRNAME,
                    model,
                    data,
                    fit_results,
                    config,
                    ranking_results,
                    suffix=f".{figure_format}",
                )

    poi_index = model.config.poi_index
    gof = float(fit_results.goodness_of_fit)
    result = InferenceResult(
        poi_name=model.config.poi_name,
        bestfit=float(fit_results.bestfit[poi_index]),
        uncertainty=float(fit_results.uncertainty[poi_index]),
        parameter_names=tuple(fit_results.labels),
        parameter_values=tuple(float(x) for x in fit_results.bestfit),
        parameter_uncertainties=tuple(float(x) for x in fit_results.uncertainty),
        correlations=np.asarray(fit_results.corr_mat, dtype=float),
        twice_nll=float(fit_results.best_twice_nll),
        goodness_of_fit=gof if np.isfinite(gof) and gof >= 0 else None,
        workspace_sha256=ws_sha,
        workspace_path=output_dir / WORKSPACE_NAME,
        results_path=output_dir / RESULTS_NAME,
        templates_path=output_dir / TEMPLATES_DIRNAME if keep_templates else None,
        figures=figure_paths,
        timings=timer.timings,
        strategy=strategy,
        significance=sig_summary,
        limit=lim_summary,
        ranking=impacts,
        failures=failures,
    )
    content = result.to_dict()
    content["inputs"] = {
        "histograms": str(histograms_path.resolve()),
        "histograms_sha256": sha256_file(histograms_path),
        "cabinetry_config": str(Path(cabinetry_config_path or DEFAULT_CABINETRY_CONFIG).resolve()),
        "versions": _versions(),
    }
    write_json_atomic(result.results_path, content)
    log.info(
        "%s = %.4f +/- %.4f (%d parameters)", result.poi_name, result.bestfit, result.uncertainty, result.n_parameters
    )
    return result


def _impacts(ranking_results: Any) -> tuple[Impact, ...]:
    return tuple(
        Impact(
            parameter=str(label),
            bestfit=float(ranking_results.bestfit[i]),
            uncertainty=float(ranking_results.uncertainty[i]),
            prefit_up=float(ranking_results.prefit_up[i]),
            prefit_down=float(ranking_results.prefit_down[i]),
            postfit_up=float(ranking_results.postfit_up[i]),
            postfit_down=float(ranking_results.postfit_down[i]),
        )
        for i, label in enumerate(ranking_results.labels)
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("cabinetry", "pyhf", "iminuit", "uproot"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
