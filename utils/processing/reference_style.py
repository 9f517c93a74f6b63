"""The reference-style processor (``PROCESSOR = "reference"``): the AGC-notebook-style baseline
of ``benchmarks/reference_processor.py``, run by the processing stage like the fused processor.

:class:`ReferenceStyleAnalysis` loads that file by its fixed path (:data:`REFERENCE_FILE`) and
class name (:data:`REFERENCE_CLASS`), in each process that runs it (the driver for the iterative
executor, every worker else: only this wrapper is pickled, by reference to ``utils``). It adds
what the processing stage needs of every processor, at the fused processor's cost: the entries
read of each file, the check of the opened file's UUID, the worker's peak memory, and ISA-L
decompression (both processors read their baskets alike, so their ratio is the processing's).
:func:`reference_histograms` turns its ``hist`` output into the project's
:class:`~utils.histograms.accumulate.AnalysisHistograms`.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coffea import processor

from utils.config import REPO_ROOT, AnalysisConfig
from utils.errors import ConfigError, InputFileError
from utils.histograms.accumulate import AnalysisHistograms, empty_hist
from utils.processing.fastio import use_fast_zlib
from utils.processing.processor import PeakMemory, entries_read, file_uuid_problem, sample_variations

log = logging.getLogger(__name__)

#: the processing stage's processors: the project's fused kernel, or the AGC-style baseline
PROCESSORS = ("fused", "reference")
REFERENCE_FILE = REPO_ROOT / "benchmarks" / "reference_processor.py"
REFERENCE_CLASS = "ReferenceTtbarProcessor"
_MODULE_NAME = "agc_benchmarks_reference_processor"


def load_reference_class(path: Path = REFERENCE_FILE) -> type:
    """The reference-style processor class of ``benchmarks/reference_processor.py`` (loaded once
    per process, under a fixed module name)."""
    module = sys.modules.get(_MODULE_NAME)
    if module is None or Path(module.__file__ or "") != path:
        if not path.is_file():
            raise ConfigError(
                f"PROCESSOR='reference': {path} not found; the reference-style processor lives in the "
                "repository's benchmarks/ folder: run from a checkout, or use PROCESSOR='fused'"
            )
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_MODULE_NAME]
            raise
    cls = getattr(module, REFERENCE_CLASS, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{path}: defines no class {REFERENCE_CLASS} (PROCESSOR='reference' runs it)")
    return cls


class ReferenceStyleAnalysis(processor.ProcessorABC):
    """Run :data:`REFERENCE_CLASS` of :data:`REFERENCE_FILE` on each chunk, with the entries read,
    the UUID check and the peak memory the processing stage expects of a processor.

    A chunk whose file was replaced after the input checks stops the run (the fused processor
    can leave it out with ``ON_BAD_INPUT="skip"``; the baseline keeps to the AGC's behaviour).
    """

    def __init__(self, config: AnalysisConfig, systematics: bool = True) -> None:
        self.config = config
        self.systematics = systematics
        self._impl: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "systematics": self.systematics, "_impl": None}

    def _processor(self) -> Any:
        if self._impl is None:
            self._impl = load_reference_class()(self.config, systematics=self.systematics)
        return self._impl

    def process(self, events) -> dict[str, Any]:
        use_fast_zlib()
        replaced = file_uuid_problem(events)
        if replaced is not None:
            meta = events.metadata
            raise InputFileError(f"{meta['filename']}: {replaced}.\n  sample: {meta['dataset']}\n  what to do: "
                                 "rerun on files that do not change during the run")  # fmt: skip
        out = dict(self._processor().process(events))
        out["entries"] = entries_read(events)
        out["peak_memory"] = PeakMemory.now()
        return out

    def postprocess(self, accumulator):
        return accumulator


def reference_histograms(
    hists: Mapping[str, Any],
    fileset: Mapping[str, dict[str, Any]],
    normalisation: Mapping[str, float],
    config: AnalysisConfig,
    systematics: bool = True,
) -> AnalysisHistograms:
    """The analysis histograms of the reference-style processor's output ``{sample: hist.Hist}``
    (unnormalised; observable, region, process, variation): each sample's cells times its
    ``normalisation``, all in ML classification 0 (no classifier), with the processes and
    variations ordered as :func:`~utils.histograms.accumulate.to_hist` orders the fused ones. The
    templates are those the fused processor declares for the same samples (a variation no event
    filled is an empty template)."""
    filled: set[tuple[str, str]] = set()
    cells: dict[str, tuple[str, tuple[str, ...]]] = {}
    for sample in sorted(hists):
        if sample not in fileset:
            raise ConfigError(f"the reference-style processor returned histograms of {sample!r}, not in the fileset")
        meta = fileset[sample]["metadata"]
        process, variation = meta["process"], meta["variation"]
        names = sample_variations(config, process, variation) if systematics else (variation,)
        cells[sample] = (process, names)
        filled |= {(process, v) for v in names}
    processes = sorted({p for p, _ in cells.values()})
    variations = sorted({v for _, vs in cells.values() for v in vs}, key=lambda v: (v != "nominal", v))
    out = empty_hist(config, processes, variations)
    view = out.view(flow=True)
    for sample, (process, names) in cells.items():
        h, norm = hists[sample], float(normalisation[sample])
        ip = out.axes["process"].index(process)
        for variation in names:
            if variation not in h.axes["variation"] or process not in h.axes["process"]:
                continue  # no event filled it
            iv = out.axes["variation"].index(variation)
            for ir, region in enumerate(config.region_names):
                cell = h[{"region": region, "process": process, "variation": variation}].view(flow=True)
                # hist view axes: (observable+flow, region, process, variation, classification)
                view.value[:, ir, ip, iv, 0] += cell.value * norm  # type: ignore[attr-defined]
                view.variance[:, ir, ip, iv, 0] += cell.variance * norm * norm  # type: ignore[attr-defined]
    return AnalysisHistograms(out, frozenset(filled))
