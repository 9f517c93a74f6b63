"""Full processing against I/O-only, per core, measured chunk by chunk in one process.

The grid runner's ratios compare separate notebook runs, minutes apart, on a shared machine
whose speed drifts by 10-30 % over minutes. Here every chunk of the dataset is processed in all
modes back to back (I/O-only, full, full with ML), the order rotating from round to round, and
each mode's processtime (``time.process_time`` around ``TtbarAnalysis.process``, the events
built outside it, as coffea's processtime) is summed over the chunks of a round. The result is
the median over rounds of the per-round ratio of sums, so drift between rounds cancels.

    python benchmarks/io_ratio.py data/embedded/benchmark_subset/fileset.json --rounds 7 \
        --output benchmarks/results/io_ratio/benchmark_subset.json

Writes a JSON with the per-round sums and ratios and prints a one-line summary per mode.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from coffea.nanoevents import NanoEventsFactory

from utils.config import load_analysis_config
from utils.datasets.fileset import build_fileset
from utils.io import write_json_atomic
from utils.processing.processor import TtbarAnalysis
from utils.processing.schema import AGCSchema
from utils.run.pipeline import make_classifier

log = logging.getLogger("io_ratio")


def _chunks(fileset: dict, chunksize: int):
    import uproot

    for dataset, entry in fileset.items():
        meta = entry["metadata"]
        for path, tree in entry["files"].items():
            with uproot.open(path) as f:
                n = int(f[tree].num_entries)
            for start in range(0, n, chunksize):
                yield dataset, meta, path, tree, start, min(n, start + chunksize)


def _events(dataset, meta, path, tree, start, stop):
    metadata = {"dataset": dataset, "filename": path, "entrystart": start, "entrystop": stop, "fileuuid": None, **meta}
    return NanoEventsFactory.from_root(
        {path: tree}, schemaclass=AGCSchema, mode="virtual", entry_start=start, entry_stop=stop, metadata=metadata
    ).events()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="dataset JSON (fileset description)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunksize", type=int, default=400_000)
    parser.add_argument("--output", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    config = load_analysis_config()
    processors = {
        "io_only": TtbarAnalysis(config, disable_processing=True),
        "full": TtbarAnalysis(config),
        "full_ml": TtbarAnalysis(config, classifier=make_classifier(True)),
    }
    chunks = list(_chunks(build_fileset(args.dataset), args.chunksize))
    for proc in processors.values():  # compile and warm every path once
        proc.process(_events(*chunks[0]))
    modes = list(processors)
    sums: dict[str, list[float]] = {m: [] for m in modes}
    entries = sum(stop - start for *_, start, stop in chunks)
    for r in range(args.rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        total = dict.fromkeys(modes, 0.0)
        for chunk in chunks:
            for mode in order:
                events = _events(*chunk)
                t0 = time.process_time()
                processors[mode].process(events)
                total[mode] += time.process_time() - t0
        for m in modes:
            sums[m].append(total[m])
        log.info("round %d/%d: %s", r + 1, args.rounds, ", ".join(f"{m} {total[m]:.3f} s" for m in modes))
    ratios = {m: [io / t for io, t in zip(sums["io_only"], sums[m], strict=True)] for m in modes if m != "io_only"}
    result = {
        "dataset": str(args.dataset),
        "chunks": len(chunks),
        "entries": entries,
        "rounds": args.rounds,
        "processtime_s": sums,
        "khz_per_core_median": {m: entries / statistics.median(s) / 1e3 for m, s in sums.items()},
        "io_only_over_mode_per_round": ratios,
        "io_only_over_mode_median": {m: statistics.median(v) for m, v in ratios.items()},
        "io_only_over_mode_range": {m: [min(v), max(v)] for m, v in ratios.items()},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(args.output, result)
    for m, v in result["io_only_over_mode_median"].items():
        lo, hi = result["io_only_over_mode_range"][m]
        log.info("%s: %.0f kHz per core; full / I/O-only per core %.3f (rounds %.3f-%.3f)",
                 m, result["khz_per_core_median"][m], v, lo, hi)  # fmt: skip
    log.info("written %s", args.output)


if __name__ == "__main__":
    main()
