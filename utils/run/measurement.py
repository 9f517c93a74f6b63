"""The classifier in the measurement, and what inference costs in processing.

- :func:`analysis_histograms_with_categories`: process a fileset with the classifier and write a
  ``histograms.root`` that also holds the ML-category templates ``{region}_ML{c}_...``;
- :func:`compare_ml_categories`: fit one such file with ``cabinetry_config.yml`` (regions as they
  are) and with each region split into its ML0/ML1 categories and return both
  results, to compare the ``ttbar_norm`` uncertainty;
- :func:`ml_category_effect`: the same comparison for a run that has fitted its regions already,
  :func:`start_ml_category_fit`, the same started in a worker process while the notebook goes on,
  and :func:`plot_category_comparison`, its figure;
- :func:`inference_cost`: the processing rate with the classifier and without it, on the same
  files with the same executor, alternating runs (a benchmark, never a test assertion).
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import AnalysisConfig, load_analysis_config
from utils.histograms.accumulate import AnalysisHistograms, save_histograms
from utils.inference.config import DEFAULT_CABINETRY_CONFIG
from utils.inference.results import InferenceResult, run_inference
from utils.processing.run import ProcessingOptions, ProcessingResult, process_fileset

log = logging.getLogger(__name__)


def analysis_histograms_with_categories(
    fileset: dict[str, Any],
    params: ProcessingOptions,
    classifier: Any,
    path: str | Path,
    config: AnalysisConfig | None = None,
) -> ProcessingResult:
    """Process ``fileset`` with ``classifier`` and save ``path`` with the ML-category templates."""
    config = config or load_analysis_config()
    result = process_fileset(fileset, params, config, classifier)
    if result.histograms is None:
        raise ValueError("processing returned no histograms (disable_processing is set?)")
    save_histograms(result.histograms, path, config, ml_categories=True)
    return result


@dataclass(frozen=True)
class CategoryComparison:
    """The same histograms fitted without and with ML-score categories."""

    histograms_path: Path
    without_ml: InferenceResult
    with_ml: InferenceResult

    @property
    def uncertainty_ratio(self) -> float:
        """POI uncertainty with categories over without (below 1: the categories help)."""
        return self.with_ml.uncertainty / self.without_ml.uncertainty

    def summary(self) -> dict[str, Any]:
        return {
            "histograms": str(self.histograms_path),
            "poi": self.without_ml.poi_name,
            "without_ml": {
                "bestfit": self.without_ml.bestfit,
                "uncertainty": self.without_ml.uncertainty,
                "n_parameters": self.without_ml.n_parameters,
            },
            "with_ml": {
                "bestfit": self.with_ml.bestfit,
                "uncertainty": self.with_ml.uncertainty,
                "n_parameters": self.with_ml.n_parameters,
            },
            "uncertainty_ratio": self.uncertainty_ratio,
        }


def compare_ml_categories(
    histograms_path: str | Path,
    output_dir: str | Path,
    base_config: str | Path | None = None,
    **inference_options: Any,
) -> CategoryComparison:
    """Run the inference stage twice on one ``histograms.root`` (written with
    ``ml_categories=True``): with ``base_config`` (default ``cabinetry_config.yml``) into
    ``output_dir/without_ml`` and with the same model split into ML-score categories
    (:func:`utils.inference.config.with_ml_categories`) into ``output_dir/with_ml``. ``inference_options`` go to :func:`utils.inference.fit.run_inference`."""
    output_dir = Path(output_dir)
    options = {"figures": False, **inference_options}
    without = run_inference(
        histograms_path, output_dir / "without_ml", base_config or DEFAULT_CABINETRY_CONFIG, **options
    )
    with_ml = run_inference(
        histograms_path, output_dir / "with_ml", base_config or DEFAULT_CABINETRY_CONFIG, ml_categories=True, **options
    )
    comparison = CategoryComparison(Path(histograms_path), without, with_ml)
    log.info(
        "%s: %.4f +/- %.4f without ML categories, %.4f +/- %.4f with (ratio %.3f)",
        without.poi_name,
        without.bestfit,
        without.uncertainty,
        with_ml.bestfit,
        with_ml.uncertainty,
        comparison.uncertainty_ratio,
    )
    return comparison


#: where :func:`ml_category_effect` writes in a run's output folder
ML_HISTOGRAMS_NAME = "histograms_ml.root"
ML_FIT_DIRNAME = "ml_categories"


def empty_category_bins(histograms: AnalysisHistograms, config: AnalysisConfig) -> dict[str, int]:
    """Per ML-score category (``4j1b_ML0``, ...), the bins of its fit binning (``Binning`` of
    ``cabinetry_config.yml``) with no simulated event or no pseudo-data: there the fit is ill-posed
    (variations drive the expected yield negative where the Poisson term of a bin without data is
    unbounded; docs/inference.md, "The tiny dataset with the ML-score categories"). Categories
    without such bins are left out."""
    import numpy as np

    from utils.datasets.fileset import DATA_PROCESS
    from utils.histograms.accumulate import N_CLASSES, _project, category_name, pseudodata
    from utils.inference.config import load_model_config

    model, _ = load_model_config(analysis=config)
    binning = {r["RegionPath"]: np.asarray(r["Binning"], dtype=float) for r in model["Regions"] if r.get("Binning")}
    nominal = sorted(p for p, v in histograms.filled if v == "nominal" and p != DATA_PROCESS)
    out = {}
    for region in config.region_names:
        for cls in range(N_CLASSES):
            mc = sum(_project(histograms.hist, region, p, "nominal", cls).values() for p in nominal)
            data = pseudodata(histograms, region, config, cls)
            edges = data.axes[0].edges
            fit_edges = binning.get(region, edges)
            index = np.searchsorted(edges, fit_edges)  # the fit binning's edges are histogram edges
            sums = [np.add.reduceat(np.asarray(v, dtype=float), index[:-1]) for v in (mc, data.values())]
            empty = int(np.count_nonzero((sums[0] <= 0) | (sums[1] <= 0)))
            if empty:
                out[f"{region}_{category_name(cls)}"] = empty
    return out


@dataclass(frozen=True)
class CategoryEffect:
    """The classifier's effect on a run's fit, or why the categories were not fitted."""

    comparison: CategoryComparison | None
    not_fitted: str | None = None

    def summary(self) -> str:
        if self.comparison is None:
            return f"ML categories not fitted: {self.not_fitted}"
        c = self.comparison
        return (f"{c.without_ml.poi_name} = {c.without_ml.bestfit:.3f} +/- {c.without_ml.uncertainty:.3f} in the "
                f"regions, {c.with_ml.bestfit:.3f} +/- {c.with_ml.uncertainty:.3f} in their ML categories "
                f"(uncertainty ratio {c.uncertainty_ratio:.2f})")  # fmt: skip


def ml_category_effect(
    histograms: AnalysisHistograms,
    config: AnalysisConfig,
    output_dir: str | Path,
    without_ml: InferenceResult,
    **inference_options: Any,
) -> CategoryEffect:
    """The classifier's effect on a run's fit: its histograms (filled with the classifier) saved
    with the ML-score category templates to ``output_dir/histograms_ml.root`` and fitted with each
    region split into its categories (into ``output_dir/ml_categories/``), beside the run's own
    fit of the regions as they are (``without_ml``, not refitted). Categories with fit bins
    without simulated events (:func:`empty_category_bins`: the tiny dataset) are fitted when the
    model's template treatment drops such bins (``DropEmptyBins``, on in ``cabinetry_config.yml``);
    else they are not fitted, and nothing is written. The fit runs here;
    :func:`start_ml_category_fit` runs it in a worker process meanwhile."""
    return start_ml_category_fit(histograms, config, output_dir, background=False, **inference_options).effect(
        without_ml
    )


class PendingCategoryFit:
    """The fit with ML-score categories that :func:`start_ml_category_fit` started (or why there is
    none); :meth:`effect` waits for it and compares it with the fit of the regions."""

    def __init__(self, future: Any = None, result: InferenceResult | None = None, not_fitted: str | None = None,
                 path: Path | None = None) -> None:  # fmt: skip
        self._future, self._result, self.not_fitted, self.path = future, result, not_fitted, path

    def effect(self, without_ml: InferenceResult) -> CategoryEffect:
        """:class:`CategoryEffect` of the categories' fit beside ``without_ml`` (the run's fit of
        the regions as they are). The worker's log lines (the fit's problems among them) are
        logged here, where the caller sees them; an error of the fit is raised here."""
        if self.not_fitted is not None:
            return CategoryEffect(None, self.not_fitted)
        if self._future is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                self._result, records = self._future.result()
            except BrokenProcessPool as err:
                raise RuntimeError(
                    f"the fit with ML categories of {self.path} ended without a result: its worker process "
                    f"stopped ({err}); run it in this process with `agc fit {self.path} --ml-categories`"
                ) from err
            finally:
                _close_background()
            for name, level, message in records:
                logging.getLogger(name).log(level, "%s", message)
        assert self._result is not None and self.path is not None
        effect = CategoryEffect(CategoryComparison(self.path, without_ml, self._result))
        log.info("%s", effect.summary())
        return effect


def start_ml_category_fit(
    histograms: AnalysisHistograms,
    config: AnalysisConfig,
    output_dir: str | Path,
    *,
    background: bool = True,
    **inference_options: Any,
) -> PendingCategoryFit:
    """Save ``output_dir/histograms_ml.root`` and start its fit with ML-score categories (see
    :func:`ml_category_effect`): with ``background`` in one worker process forked from the
    processing workers' fork server (one thread, the other core: the notebook draws its figures
    and fits its regions meanwhile), else here, before this returns."""
    from utils.inference.config import load_model_config

    empty = empty_category_bins(histograms, config)
    if empty:
        where = ", ".join(f"{name} {n}" for name, n in empty.items())
        _, rules = load_model_config(analysis=config)
        if not rules.drop_empty_bins:
            reason = (f"bins without simulated events or pseudo-data ({where}) and no DropEmptyBins in the "
                      "template treatment (docs/inference.md)")  # fmt: skip
            log.info("ML categories not fitted: %s", reason)
            return PendingCategoryFit(not_fitted=reason)
        log.info("ML categories: bins without simulated events or pseudo-data (%s); DropEmptyBins applies", where)
    output_dir = Path(output_dir)
    path = output_dir / ML_HISTOGRAMS_NAME
    save_histograms(histograms, path, config, ml_categories=True)
    # a comparison of best fits and Hessian uncertainties: no figures, no MINOS
    options = {"figures": False, "keep_templates": False, "minos": False, "analysis": config, **inference_options}
    folder = output_dir / ML_FIT_DIRNAME
    if not background or (os.cpu_count() or 1) < 2:
        return PendingCategoryFit(result=run_inference(path, folder, ml_categories=True, **options), path=path)
    return PendingCategoryFit(future=_background_pool().submit(_fit_in_worker, path, folder, options), path=path)


_BACKGROUND: list[Any] = []


def _background_pool() -> Any:
    from concurrent.futures import ProcessPoolExecutor

    from utils.processing.executors import worker_context

    _close_background()
    _BACKGROUND.append(ProcessPoolExecutor(max_workers=1, mp_context=worker_context()))
    return _BACKGROUND[0]


def _close_background() -> None:
    while _BACKGROUND:
        _BACKGROUND.pop().shutdown(wait=False, cancel_futures=True)


def _fit_in_worker(path: Path, folder: Path, options: dict[str, Any]) -> tuple[InferenceResult, list[tuple]]:
    """The categories' fit in the worker, with the log lines of ``utils`` it made (INFO and up)."""
    records: list[tuple[str, int, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.name, record.levelno, record.getMessage()))

    handler = Keep(logging.INFO)
    root = logging.getLogger("utils")
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        return run_inference(path, folder, ml_categories=True, **options), records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def plot_category_comparison(comparison: CategoryComparison, path: str | Path | None = None) -> Any:
    """The POI fitted in the regions and in their ML-score categories, side by side: best fit and
    uncertainty of each (a fit with problems is marked), the uncertainty ratio in the title."""
    import matplotlib.pyplot as plt

    from utils.histograms.figures import cms_style
    from utils.io import save_figure

    fits = (("regions", comparison.without_ml), ("ML categories", comparison.with_ml))
    with cms_style(figsize=(8.0, 5.0)):
        fig, ax = plt.subplots(layout="constrained")
        for y, (_, fit) in enumerate(fits):
            color = "C0" if not fit.problems else "C3"
            ax.errorbar([fit.bestfit], [y], xerr=[fit.uncertainty], fmt="o", color=color, ms=9, lw=2, capsize=6)
            note = rf"{fit.bestfit:.3f} $\pm$ {fit.uncertainty:.3f}" + (" (fit problems)" if fit.problems else "")
            ax.annotate(note, (fit.bestfit, y), xytext=(0, 14), textcoords="offset points", ha="center",
                        fontsize=15, color=color)  # fmt: skip
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_yticks([0, 1], [f"{label}\n({fit.n_parameters} par.)" for label, fit in fits], fontsize=15)
        ax.set_ylim(-0.6, 1.8)
        lo = min(f.bestfit - f.uncertainty for _, f in fits)
        hi = max(f.bestfit + f.uncertainty for _, f in fits)
        pad = 0.25 * (hi - lo) + 1e-3
        ax.set_xlim(min(lo - pad, 0.9), max(hi + pad, 1.1))
        ax.set_xlabel(comparison.without_ml.poi_name, fontsize=18)
        ax.tick_params(axis="x", labelsize=15)
        ax.set_title(f"uncertainty with ML categories / without: {comparison.uncertainty_ratio:.2f}", fontsize=15)
    return save_figure(fig, path)


@dataclass(frozen=True)
class RateComparison:
    """Processing with and without the classifier, same files and executor, alternating runs."""

    executor: str
    entries: int
    walltime_without: tuple[float, ...]
    walltime_with: tuple[float, ...]
    processtime_without: tuple[float, ...]
    processtime_with: tuple[float, ...]

    @staticmethod
    def _rate(entries: int, times: tuple[float, ...]) -> float:
        return entries / statistics.median(times)

    def summary(self) -> dict[str, Any]:
        """Median rates in events per second: per worker (entries / processtime) and wall time."""
        out: dict[str, Any] = {"executor": self.executor, "entries": self.entries, "repeats": len(self.walltime_with)}
        for tag, wall, proc in (
            ("without_ml", self.walltime_without, self.processtime_without),
            ("with_ml", self.walltime_with, self.processtime_with),
        ):
            out[tag] = {
                "walltime_rate_hz": self._rate(self.entries, wall),
                "processtime_rate_hz": self._rate(self.entries, proc),
            }
        out["processtime_ratio_with_over_without"] = statistics.median(self.processtime_with) / statistics.median(
            self.processtime_without
        )
        return out


def inference_cost(
    fileset: dict[str, Any],
    params: ProcessingOptions,
    classifier: Any,
    repeats: int = 3,
    config: AnalysisConfig | None = None,
) -> RateComparison:
    """Process ``fileset`` ``repeats`` times without and with ``classifier``, alternating, after
    one untimed warm-up of each (page cache, numba and torch loading)."""
    config = config or load_analysis_config()
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    entries = 0
    for i in range(repeats + 1):
        for use_ml in (False, True):
            result = process_fileset(fileset, params, config, classifier if use_ml else None)
            entries = int(result.metrics["entries"])
            if i > 0:
                runs[use_ml].append(result.metrics)
    return RateComparison(
        params.executor,
        entries,
        tuple(float(m["walltime"]) for m in runs[False]),
        tuple(float(m["walltime"]) for m in runs[True]),
        tuple(float(m["processtime"]) for m in runs[False]),
        tuple(float(m["processtime"]) for m in runs[True]),
    )
