"""The classifier in the measurement, and what inference costs in processing.

- :func:`analysis_histograms_with_categories`: process a fileset with the classifier and write a
  ``histograms.root`` that also holds the ML-category templates ``{region}_ML{c}_...``;
- :func:`compare_ml_categories`: fit one such file with ``cabinetry_config.yml`` (regions as they
  are) and with each region split into its ML0/ML1 categories and return both
  results, to compare the ``ttbar_norm`` uncertainty;
- :func:`inference_cost`: the processing rate with the classifier and without it, on the same
  files with the same executor, alternating runs (a benchmark, never a test assertion).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import AnalysisConfig, load_analysis_config
from utils.histograms.accumulate import save_histograms
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
