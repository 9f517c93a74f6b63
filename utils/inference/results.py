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

Entry point: :func:`run_inference`."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import AnalysisConfig, load_analysis_config
from utils.errors import StatisticsError
from utils.inference.config import (
    DEFAULT_CABINETRY_CONFIG,
    check_fit_data,
    load_model_config,
    with_observed,
    with_paths,
)
from utils.inference.diagnostics import FitDiagnostics, fit_with_diagnostics
from utils.inference.fit import (
    LimitSummary,
    SignificanceSummary,
    build_workspace,
    numpy_backend,
    significance_of,
    upper_limit_of,
)
from utils.inference.ranking import Ranking, rank_parameters
from utils.inference.scan import MINOS_SCAN_STEPS, LikelihoodScan, profile_scan
from utils.inference.templates import build_templates
from utils.inference.treatment import TreatmentRecord
from utils.io import json_ready, sha256_file, write_json_atomic
from utils.runinfo import StageTimer, package_versions

log = logging.getLogger(__name__)

WORKSPACE_NAME = "workspace.json"
RESULTS_NAME = "fit_results.json"
TEMPLATES_DIRNAME = "templates"
FIGURES_DIRNAME = "figures"
INFERENCE_PACKAGES = ("cabinetry", "pyhf", "iminuit", "uproot")


@dataclass(frozen=True)
class Impact:
    """One parameter of the ranking: the POI's shifts (NaN, null in the JSON, where the refit
    found no valid minimum; those are named in ``failed``) and one line per clipped or failed refit."""

    parameter: str
    bestfit: float
    uncertainty: float
    prefit_up: float
    prefit_down: float
    postfit_up: float
    postfit_down: float
    failed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def largest_postfit(self) -> float:
        """The larger post-fit impact in size (NaN where both refits failed)."""
        sizes = [abs(x) for x in (self.postfit_up, self.postfit_down) if not math.isnan(x)]
        return max(sizes) if sizes else float("nan")


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
    #: optional steps (significance, limit, scan) that failed -> why, and ``ranking`` where some of
    #: its refits found no valid minimum; the fit result stands
    failures: dict[str, str] = field(default_factory=dict)
    #: MINUIT's state, covariance, MINOS, constraints, pulls and one line per problem
    diagnostics: FitDiagnostics | None = None
    #: every template pruned or smoothed, where and why
    template_treatment: tuple[TreatmentRecord, ...] = ()
    #: the profile-likelihood scan of the POI (made with the figures)
    scan: LikelihoodScan | None = None
    #: what the fit was given as observed data (utils.inference.config.FIT_DATA)
    fit_data: str = "pseudodata"

    @property
    def problems(self) -> tuple[str, ...]:
        """One line per problem of the fit (none when all is well)."""
        return self.diagnostics.problems if self.diagnostics is not None else ()

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
            "significance": json_ready(self.significance),
            "limit": json_ready(self.limit),
            "ranking": json_ready(list(self.ranking)) if self.ranking is not None else None,
            "failures": dict(self.failures),
            "diagnostics": self.diagnostics.to_dict() if self.diagnostics is not None else None,
            "template_treatment": [r.to_dict() for r in self.template_treatment],
            "likelihood_scan": self.scan.to_dict() if self.scan is not None else None,
            "figures": {k: str(v.name) for k, v in self.figures.items()},
            "settings": {"pyhf_backend": "numpy", "minuit_strategy": self.strategy, "fit_data": self.fit_data},
            "timings_s": self.timings,
        }


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
    ml_categories: bool = False,
    analysis: AnalysisConfig | None = None,
    timer: StageTimer | None = None,
    treatment: list[TreatmentRecord] | None = None,
    fit_data: str = "pseudodata",
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Load the model configuration, build templates and write ``output_dir/workspace.json``.

    Returns ``(config, workspace, workspace sha256)``; ``config`` points at the run's
    histograms file and at ``output_dir/templates``. The template treatment decisions are
    appended to ``treatment`` when given. ``fit_data``: the observed data of the workspace,
    ``"pseudodata"`` or the dataset's ``"data"`` sample.
    """
    timer = timer or StageTimer()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    raw_config, rules = load_model_config(cabinetry_config_path, analysis, ml_categories=ml_categories)
    raw_config = with_observed(raw_config, fit_data)
    if fit_data == "data":
        _require_data(histograms_path, raw_config)
    with _template_folder(output_dir, keep_templates) as folder:
        config = with_paths(raw_config, histograms_path, folder)
        with timer("templates"):
            _, records = build_templates(config, histograms_path, rules)
        if treatment is not None:
            treatment.extend(records)
        with timer("workspace"):
            ws, ws_sha = build_workspace(config, output_dir / WORKSPACE_NAME)
    return with_paths(raw_config, histograms_path, output_dir / TEMPLATES_DIRNAME), ws, ws_sha


def _require_data(histograms_path: str | Path, config: dict[str, Any]) -> None:
    """FIT_DATA='data' needs the data sample's histograms: say so, naming what to do."""
    import uproot

    names = [f"{r['RegionPath']}_data" for r in config["Regions"]]
    with uproot.open(histograms_path) as f:
        missing = [n for n in names if n not in f]
    if missing:
        raise StatisticsError(
            f"{histograms_path}: FIT_DATA='data' needs the data sample's histograms, missing {missing}: "
            "process a dataset with a data sample (the embedded presets generate one; "
            "`agc generate --preset quickstart`), or fit the pseudo-data (FIT_DATA='pseudodata')"
        )


@contextlib.contextmanager
def _recorded(failures: dict[str, str], step: str) -> Iterator[None]:
    """Turn a :class:`StatisticsError` of an optional step into an entry of ``failures``."""
    try:
        yield
    except StatisticsError as err:
        failures[step] = str(err)
        log.error("%s: %s", step, err)


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
    ml_categories: bool = False,
    analysis: AnalysisConfig | None = None,
    fit_data: str = "pseudodata",
    minos: bool = True,
) -> InferenceResult:
    """Run the whole inference stage on one ``histograms.root``; write everything to ``output_dir``.

    Writes ``workspace.json``, ``fit_results.json``, ``templates/`` (if ``keep_templates``) and
    ``figures/*.<figure_format>``. ``strategy``: the MINUIT strategy of every fit (None: pyhf's choice, 1).
    ``ml_categories``: split every region into its ML-score categories (the model of a run with the
    classifier, histograms saved with ``ml_categories=True``). ``analysis``: the analysis configuration
    the histograms were made with (the model is checked against it; default ``analysis_config.yml``).
    ``ranking`` refits the model four times per parameter (a few seconds for the AGC model, see
    :func:`~utils.inference.ranking.rank_parameters`; a refit without a valid minimum is a null
    impact and an entry ``ranking`` of ``failures``).
    ``minos``: MINOS errors of the POI in the diagnostics (off: the Hessian's only).
    ``fit_data``: the observed data, ``"pseudodata"`` (``{region}_pseudodata``) or the dataset's
    ``"data"`` sample (``{region}_data``); recorded in ``fit_results.json``.
    """
    check_fit_data(fit_data)
    from utils.inference import figures as inference_figures

    histograms_path = Path(histograms_path)
    output_dir = Path(output_dir)
    timer = StageTimer()
    sig_summary = lim_summary = impacts = ranking_results = scan = None
    figure_paths: dict[str, Path] = {}
    failures: dict[str, str] = {}
    treatment: list[TreatmentRecord] = []
    with timer("total"), numpy_backend():
        config, ws, ws_sha = prepare_workspace(
            histograms_path,
            output_dir,
            cabinetry_config_path,
            keep_templates=keep_templates,
            ml_categories=ml_categories,
            analysis=analysis,
            timer=timer,
            treatment=treatment,
            fit_data=fit_data,
        )
        with timer("fit"):
            model, data, fit_results, diagnostics = _fit(ws, strategy, minos)
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
            if ranking_results.failed:
                failed = ranking_results.failed
                failures["ranking"] = (
                    f"{len(failed)} refit(s) without a valid minimum, their impacts null: "
                    + ", ".join(f"{n.parameter} {n.impact} (held at {n.held:.4g})" for n in failed)
                )
        if figures:
            with timer("scan"), _recorded(failures, "scan"):
                scan = _scan(model, data, fit_results, diagnostics)
            analysis = analysis or load_analysis_config()
            with timer("figures"):
                figure_paths = inference_figures.inference_figures(
                    output_dir / FIGURES_DIRNAME,
                    model,
                    data,
                    fit_results,
                    config,
                    ranking_results,
                    suffix=f".{figure_format}",
                    scan=scan,
                    lumi_fb=round(analysis.luminosity / 1000.0, 2),
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
        diagnostics=diagnostics,
        template_treatment=tuple(treatment),
        scan=scan,
        fit_data=fit_data,
    )
    content = result.to_dict()
    content["inputs"] = {
        "histograms": str(histograms_path.resolve()),
        "histograms_sha256": sha256_file(histograms_path),
        "cabinetry_config": str(Path(cabinetry_config_path or DEFAULT_CABINETRY_CONFIG).resolve()),
        "ml_categories": ml_categories,
        "analysis_config": (analysis or load_analysis_config()).source,
        "versions": package_versions(INFERENCE_PACKAGES),
    }
    write_json_atomic(result.results_path, content)
    log.info(
        "%s = %.4f +/- %.4f (%d parameters)", result.poi_name, result.bestfit, result.uncertainty, result.n_parameters
    )
    for line in result.problems:
        log.warning("%s", line)
    return result


def model_and_data(ws: dict[str, Any]):
    """``cabinetry.model_utils.model_and_data`` of a workspace that :func:`build_workspace` has
    validated already: the same model (HistFactory interpolation codes 4 and 4p), without
    pyhf's two more schema validations (a quarter of a second each for the AGC model)."""
    import pyhf

    workspace = pyhf.Workspace(ws, validate=False)
    settings = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
    model = workspace.model(modifier_settings=settings, validate=False)
    return model, workspace.data(model, include_auxdata=True)


def _fit(ws: dict[str, Any], strategy: int | None, minos: bool = True):
    """Model, data, cabinetry FitResults (with goodness of fit) and diagnostics of a workspace."""
    from cabinetry.fit import _goodness_of_fit

    model, data = model_and_data(ws)
    fit_results, diagnostics = fit_with_diagnostics(model, data, strategy=strategy, minos=minos)
    gof = _goodness_of_fit(model, data, fit_results.best_twice_nll)
    return model, data, fit_results._replace(goodness_of_fit=gof), diagnostics


def _scan(model: Any, data: list[float], fit_results: Any, diagnostics: FitDiagnostics) -> LikelihoodScan:
    """The POI's profile-likelihood scan: with a valid MINOS interval from the fit, its two points
    and two refits at the ends; else four refits (at 1.25 and 2.5 uncertainties each side: the
    crossings of 1 interpolated in the square root, exact for a parabola)."""
    if diagnostics.minos_valid and diagnostics.poi_minos is not None:
        return profile_scan(model, data, fit_results, n_steps=MINOS_SCAN_STEPS, minos=diagnostics.poi_minos)
    return profile_scan(model, data, fit_results, n_steps=5)


def _impacts(ranking_results: Ranking) -> tuple[Impact, ...]:
    return tuple(
        Impact(
            parameter=str(label),
            bestfit=float(ranking_results.bestfit[i]),
            uncertainty=float(ranking_results.uncertainty[i]),
            prefit_up=float(ranking_results.prefit_up[i]),
            prefit_down=float(ranking_results.prefit_down[i]),
            postfit_up=float(ranking_results.postfit_up[i]),
            postfit_down=float(ranking_results.postfit_down[i]),
            failed=tuple(n.impact for n in ranking_results.notes_of(label) if n.status == "failed"),
            notes=tuple(n.line() for n in ranking_results.notes_of(label)),
        )
        for i, label in enumerate(ranking_results.labels)
    )
