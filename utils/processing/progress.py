"""coffea's local executors with one progress bar per stage that ends at 100 %.

coffea's futures executor draws a "Processing" bar and a "Merging (local)" bar with rich. The
merging bar restarts its count with every batch of results (rich's ``track`` sets the task's
completed count to the batch's, while the total grows by each batch), so it ends at 1/12 on a
12-chunk run and looks like a failure; rich's fixed console width also clips the bars in
JupyterLab. These executors draw one text bar per stage instead (tqdm, 80 columns, on stderr: it
fits a JupyterLab cell and a terminal, and an executed notebook keeps its last state, where a
widget bar would show its initial 0 % once the kernel is gone), named by coffea's stage
(``Preprocessing``, ``Processing``); it counts the chunks as they are merged and ends at 100 %.

The futures executor merges the results in submission order, as they arrive: the merged
output does not depend on which worker finished first.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from coffea.processor import FuturesExecutor, IterativeExecutor
from coffea.processor.accumulator import accumulate
from coffea.processor.executor import _compression_wrapper, _decompress

#: the bar's width in characters, stats included
BAR_COLUMNS = 80


def stage_bar(desc: str, total: int, unit: str, enabled: bool = True):
    """A progress bar of ``total`` steps for one stage (a no-op when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=f" {unit}" if unit else "it", disable=not enabled, ncols=BAR_COLUMNS,
                file=sys.stderr, mininterval=0.5)  # fmt: skip


@dataclass
class StageIterativeExecutor(IterativeExecutor):
    """coffea's iterative executor with a :func:`stage_bar`."""

    def __call__(self, items: Iterable, function: Callable, accumulator: Any):
        items = list(items)
        if len(items) == 0:
            return accumulator
        with stage_bar(self.desc, len(items), self.unit, self.status) as bar:
            for item in items:
                accumulator = accumulate([function(item)], accumulator)
                bar.update(1)
        return accumulator, 0


@dataclass
class StageFuturesExecutor(FuturesExecutor):
    """coffea's futures executor (an existing ``pool`` instance, merging in this process) with a
    :func:`stage_bar` and results merged in submission order. The first failed item cancels the
    items not yet started and raises its error."""

    def __call__(self, items: Iterable, function: Callable, accumulator: Any):
        if not isinstance(self.pool, concurrent.futures.Executor) or self.merging:
            return super().__call__(items, function, accumulator)  # a pool class, or merging jobs
        items = list(items)
        if len(items) == 0:
            return accumulator
        if self.compression is not None:
            function = _compression_wrapper(self.compression, function)
        futures = [self.pool.submit(function, item) for item in items]
        merged = None
        merged_upto = 0  # futures[:merged_upto] are merged (and released)
        try:
            with stage_bar(self.desc, len(futures), self.unit, self.status) as bar:
                for done in concurrent.futures.as_completed(futures):
                    done.result()  # the first error stops the run
                    while merged_upto < len(futures) and futures[merged_upto].done():
                        merged = accumulate([_decompress(futures[merged_upto].result())], merged)
                        futures[merged_upto] = None  # type: ignore[call-overload]
                        merged_upto += 1
                        bar.update(1)
        except BaseException:
            for f in futures:
                if f is not None:
                    f.cancel()
            raise
        return accumulate([merged, accumulator]), 0
