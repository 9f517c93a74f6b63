"""Templates of the statistical model from a run's ``histograms.root``: every histogram the model
needs must exist (a missing one is an error naming all missing, never a silent zero); each region's
``Binning`` is applied when the templates are built."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from utils.errors import StatisticsError
from utils.inference.config import Template
from utils.inference.treatment import TreatmentRecord, TreatmentRules, empty_bins, treat_templates

log = logging.getLogger(__name__)


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
    try:
        f = uproot.open(histograms_path)
    except Exception as err:  # uproot raises many types for a file that is not ROOT
        raise StatisticsError(
            f"{histograms_path}: not a readable ROOT file ({type(err).__name__}); give the histograms.root a run wrote"
        ) from None
    with f:
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
            bad = np.flatnonzero(~np.isfinite(out[name].values) | ~np.isfinite(out[name].variances))
            if bad.size:
                raise StatisticsError(
                    f"{histograms_path}: template {name!r} has non-finite content in bin(s) "
                    f"{(bad + 1).tolist()} (values {out[name].values[bad].tolist()}); the fit cannot use it: "
                    "rerun the processing stage, or check the inputs of that sample"
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


def build_templates(
    config: Mapping[str, Any],
    histograms_path: str | Path | None = None,
    rules: TreatmentRules | None = None,
    other_nominal: Mapping[str, np.ndarray] | None = None,
) -> tuple[list[TemplateRef], list[TreatmentRecord]]:
    """Write every template (rebinned to its region's Binning) into ``HistogramFolder``.

    ``histograms_path`` defaults to the file part of ``InputPath``. All needed histograms are
    checked before anything is written. ``rules`` (the configuration's ``TemplateTreatment``)
    smooth and prune the variation templates (see :mod:`utils.inference.treatment`); returns
    the templates and every treatment decision. ``other_nominal``: per region, the nominal
    prediction of samples of the model that ``config`` leaves out (a signal patch built beside a
    published background model), added to this configuration's for ``DropEmptyBins``.
    """
    import cabinetry

    if histograms_path is None:
        histograms_path = config["General"]["InputPath"].rpartition(":")[0]
    refs = required_templates(config)
    histograms = read_histograms(histograms_path, [r.histogram for r in refs])
    folder = Path(config["General"]["HistogramFolder"])
    folder.mkdir(parents=True, exist_ok=True)
    binned: dict[str, HistogramData] = {}
    for ref in refs:
        hist = histograms[ref.histogram]
        if ref.region.get("Binning") is not None:
            hist = rebin(hist, ref.region["Binning"], name=f"{histograms_path}:{ref.histogram}")
        binned[ref.name] = hist
    records = _treat(refs, binned, rules, other_nominal or {}) if rules is not None and rules.enabled else []
    empty = 0
    for ref in refs:
        hist = binned[ref.name]
        template = cabinetry.histo.Histogram.from_arrays(hist.edges, hist.values, np.sqrt(hist.variances))
        empty += _check_template(ref.name, template.yields, template.stdev)
        template.save(folder / ref.name)
    log.info("built %d templates from %s into %s", len(refs), histograms_path, folder)
    if empty:
        log.info("%d of %d templates have empty bins (few simulated events; listed at DEBUG)", empty, len(refs))
    if records:
        log.info("template treatment: %d decision(s)", len(records))
    with _empty_bin_notices_dropped():  # postprocessing checks every template again
        cabinetry.templates.postprocess(dict(config))
    return refs, records


class _EmptyBinNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "has empty bins" in str(record.msg))


@contextmanager
def _empty_bin_notices_dropped() -> Iterator[None]:
    """Without cabinetry's one warning per template with empty bins (counted and listed at
    DEBUG by :func:`_check_template` already); its other warnings pass."""
    logger = logging.getLogger("cabinetry.histo")
    notices = _EmptyBinNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


def _check_template(name: str, yields: np.ndarray, stdev: np.ndarray) -> bool:
    """cabinetry's template checks, summarised: empty bins are common in small datasets and
    are listed at DEBUG (one line per template would bury the run's output; the caller counts
    them); a non-empty bin without a finite uncertainty is a warning. Returns whether the
    template has empty bins."""
    empty = np.flatnonzero(np.atleast_1d(yields) == 0.0)
    if empty.size:
        log.debug("%s has empty bins: %s", name, empty.tolist())
    bad = np.flatnonzero(~np.isfinite(np.atleast_1d(stdev)) & (np.atleast_1d(yields) != 0.0))
    if bad.size:
        log.warning("%s: bins %s have events but no finite statistical uncertainty", name, bad.tolist())
    return bool(empty.size)


def _treat(refs: list[TemplateRef], binned: dict[str, HistogramData], rules: TreatmentRules,
           other_nominal: Mapping[str, np.ndarray]) -> list[TreatmentRecord]:  # fmt: skip
    """Smooth and prune the NormPlusShape variation templates in ``binned`` (in place)."""
    import cabinetry

    records: list[TreatmentRecord] = _drop_empty_bins(refs, binned, other_nominal) if rules.drop_empty_bins else []
    groups: dict[tuple[str, str, str], dict[str, TemplateRef]] = {}
    for ref in refs:
        if ref.template is not None and ref.systematic.get("Type") == "NormPlusShape":
            key = (ref.systematic["Name"], ref.region["Name"], ref.sample["Name"])
            groups.setdefault(key, {})[ref.template] = ref
    for (syst_name, region_name, sample_name), templates in groups.items():
        any_ref = next(iter(templates.values()))
        nominal = binned[cabinetry.histo.name(any_ref.region, any_ref.sample, {})]
        symmetrized = bool(any_ref.systematic.get("Down", {}).get("Symmetrize", False))
        new, decisions = treat_templates(
            (nominal.values, nominal.variances),
            {k: (binned[r.name].values, binned[r.name].variances) for k, r in templates.items()},
            rules.settings_for(syst_name),
            symmetrized,
            (syst_name, region_name, sample_name),
        )
        for k, r in templates.items():
            binned[r.name] = binned[r.name]._replace(values=new[k])
        records.extend(decisions)
    return records


def _drop_empty_bins(refs: list[TemplateRef], binned: dict[str, HistogramData],
                     other_nominal: Mapping[str, np.ndarray]) -> list[TreatmentRecord]:  # fmt: skip
    """``DropEmptyBins``: zero every template of a region (data included) in the bins where the
    summed nominal prediction (with ``other_nominal`` of the region) is empty, without a
    simulated event (:func:`utils.inference.treatment.empty_bins`) (in place); one record per
    region that has such bins."""
    records: list[TreatmentRecord] = []
    regions: dict[str, list[TemplateRef]] = {}
    for ref in refs:
        regions.setdefault(ref.region["Name"], []).append(ref)
    for region_name, region_refs in regions.items():
        nominal = [binned[r.name] for r in region_refs if r.template is None and not r.sample.get("Data", False)]
        values = [h.values for h in nominal]
        sumw2 = [h.variances for h in nominal]
        if region_name in other_nominal:  # a published model's prediction: its bins with a yield have events
            values.append(np.asarray(other_nominal[region_name], dtype=float))
            sumw2.append(np.asarray(other_nominal[region_name], dtype=float))
        if not values:
            continue
        empty = empty_bins(np.sum(values, axis=0), np.sum(sumw2, axis=0))
        if not empty.any():
            continue
        data = [binned[r.name].values[empty].sum() for r in region_refs if r.sample.get("Data", False)]
        for r in region_refs:
            hist = binned[r.name]
            kept, kept_variances = hist.values.copy(), hist.variances.copy()
            kept[empty] = kept_variances[empty] = 0.0
            binned[r.name] = hist._replace(values=kept, variances=kept_variances)
        bins = [int(b) + 1 for b in np.flatnonzero(empty)]
        records.append(
            TreatmentRecord(
                "",
                region_name,
                "all samples",
                "bins dropped",
                f"bins {bins} have no nominal prediction; every template set to zero there "
                f"(data removed: {sum(data):.6g})",
            )
        )
        log.info("%s: bins %s have no nominal prediction and leave the fit", region_name, bins)
    return records
