"""Hand-made analysis histograms: every process and variation a run fills, smooth falling shapes,
written as a real ``histograms.root`` (tests of the inference, publishing and run layers)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from utils.config import AnalysisConfig
from utils.histograms.accumulate import AnalysisHistograms, empty_hist
from utils.processing.processor import sample_variations

MC = ("ttbar", "wjets", "single_top_s_chan", "single_top_t_chan", "single_top_tW")


def handmade_histograms(
    config: AnalysisConfig,
    shape: Callable[[str, np.ndarray], np.ndarray] | None = None,
    signal_fraction: Callable[[str], float] | None = None,
) -> AnalysisHistograms:
    """Every process with every variation of :func:`sample_variations` (ttbar also with the
    alternative samples), in every region. ``shape(process, x)``: the nominal yield at the bin
    centres ``x`` (default a falling exponential, smaller per process); each variation is it
    times 1 + a percent or so. ``signal_fraction(process)``: the share filled into the ML
    category 1 (predicted signal), the rest into 0; default all into 1."""
    variations = {v for p in MC for v in sample_variations(config, p, "nominal")} | set(config.alternative_variations)
    h = empty_hist(config, list(MC), ["nominal", *sorted(variations - {"nominal"})])
    x = h.axes["observable"].centers
    filled = set()
    for k, process in enumerate(MC):
        base = shape(process, x) if shape is not None else (200.0 / (k + 1)) * np.exp(-x / 150.0)
        share = signal_fraction(process) if signal_fraction is not None else 1.0
        own = sample_variations(config, process, "nominal")
        if process == "ttbar":
            own = (*own, *config.alternative_variations)
        for j, variation in enumerate(own):
            weights = base * (1.0 + 0.01 * (j % 7 - 3))
            for region in config.region_names:
                for cls, part in ((1, share), (0, 1.0 - share)):
                    if part > 0:
                        h.fill(observable=x, region=region, process=process, variation=variation,
                               classification=cls, weight=weights * part)  # fmt: skip
            filled.add((process, variation))
    return AnalysisHistograms(h, frozenset(filled))
