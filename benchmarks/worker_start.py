"""Worker start-up of the futures executor: workers forked from the preloaded fork server (the
default) against fresh interpreters that each import everything (loky's own start method, what
the project used before), interleaved, on the tiny dataset.

Each repeat is a fresh Python process (so that the fork server's one-time preload is counted), and
measures what ``make_executor`` reports as ``startup_s`` (pool start, imports, numba, the warm-up
on 2000 events) right after the imports of the calling process, as a notebook does.

    python benchmarks/worker_start.py --repeat 5 --output benchmarks/results/worker_start
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import functools, json, os, sys, time
def main():
    from utils.config import load_analysis_config
    from utils.datasets.embedded import ensure_dataset
    from utils.datasets.fileset import build_fileset
    from utils.processing import executors
    from utils.processing.processor import TtbarAnalysis
    from utils.processing.schema import AGCSchema

    if sys.argv[1] == "fresh-interpreters":
        executors.worker_context = lambda: None  # loky's default start method: each worker imports itself
    fileset = build_fileset(ensure_dataset("tiny"), -1)
    warm = functools.partial(executors.warm_processor, TtbarAnalysis(load_analysis_config()), fileset, AGCSchema)
    load0 = os.getloadavg()[0]
    with executors.make_executor("futures", int(sys.argv[2]), warm=warm) as ex:
        out = {"startup_s": ex.startup_s, "numba_cache": ex.numba_cache}
    out["loadavg_1min"] = [load0, os.getloadavg()[0]]
    print("RESULT " + json.dumps(out))
if __name__ == "__main__":
    main()
"""

MODES = ("fork-server", "fresh-interpreters")


def run_once(mode: str, workers: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(workers)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode}: no result\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.repeat):
        for mode in MODES:
            runs[mode].append(run_once(mode, args.workers))
    medians = {m: statistics.median(r["startup_s"] for r in runs[m]) for m in MODES}
    loads = [x for m in MODES for r in runs[m] for x in r["loadavg_1min"]]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "worker_start.json").write_text(
        json.dumps(
            {
                "workers": args.workers,
                "repeat": args.repeat,
                "cores": os.cpu_count(),
                "runs": runs,
                "median_startup_s": medians,
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"# Futures worker start-up, {args.workers} workers, tiny dataset",
        "",
        f"- {args.repeat} interleaved repeats per start method, each in a fresh Python process; `startup_s` of "
        "`make_executor` (pool start, imports, numba, warm-up on 2000 events), medians",
        f"- {os.cpu_count()} cores; 1-min load average around the runs: median {statistics.median(loads):.1f}, "
        f"range {min(loads):.1f}-{max(loads):.1f}",
        "",
        "| start method | median [s] | runs [s] |",
        "|---|---|---|",
    ]
    for m in MODES:
        each = ", ".join(f"{r['startup_s']:.1f}" for r in runs[m])
        lines.append(f"| {m} | {medians[m]:.1f} | {each} |")
    (args.output / "summary.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
