"""A reference-style processor, written the way the AGC ttbar notebook's processor is (awkward
array operations on NanoEvents records, ``ak.combinations`` for the trijets, one ``hist`` fill per
region, variation and weight), and a comparison of its per-core rate with the project's fused
kernel (``TtbarAnalysis``) on the same files, with the same coffea Runner and executor.

Same selection and systematics as ``analysis_config.yml`` (jet-pT scale and resolution,
b-tag weight variations, flat weights are left out as the reference does them in the fit):

    python benchmarks/reference_processor.py --dataset embedded:tiny --output benchmarks/results/reference_tiny

Writes ``comparison.json`` and ``summary.md`` (rates by processtime and wall time, the ratio,
the machine's load average before and after every run).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import awkward as ak
import hist
import numpy as np
from coffea import processor

from utils.config import load_analysis_config
from utils.datasets.fileset import build_fileset
from utils.datasets.resolve import resolve_dataset
from utils.io import write_json_atomic, write_text_atomic
from utils.processing.executors import make_executor
from utils.processing.processor import TtbarAnalysis
from utils.processing.run import TREE_NAME
from utils.processing.schema import AGCSchema
from utils.runinfo import machine

log = logging.getLogger(__name__)


class ReferenceTtbarProcessor(processor.ProcessorABC):
    """The AGC notebook's processor style: high-level awkward operations per variation."""

    def __init__(self, config) -> None:
        self.cfg = config
        raw = config.raw
        self.h = raw["histogram"]
        self.obj = raw["objects"]
        self.sys = raw["systematics"]

    def _hist(self):
        return (
            hist.Hist.new.Reg(self.h["bins"], self.h["low"], self.h["high"], name="observable")
            .StrCat(["4j1b", "4j2b"], name="region")
            .StrCat([], name="process", growth=True)
            .StrCat([], name="variation", growth=True)
            .Weight()
        )

    def process(self, events):
        h = self._hist()
        process = events.metadata["process"]
        variation = events.metadata["variation"]
        pt_variations = ["nominal", "pt_scale_up", "pt_res_up"] if variation == "nominal" else ["nominal"]
        rng = np.random.default_rng(2015)
        for pt_var in pt_variations:
            jets = events.jet
            if pt_var == "pt_scale_up":
                jets = ak.with_field(jets, jets.pt * self.sys["jet_pt_scale"]["factor"], "pt")
            elif pt_var == "pt_res_up":
                sigma = self.sys["jet_pt_resolution"]["sigma"]
                smear = ak.unflatten(rng.normal(1.0, sigma, len(ak.flatten(jets.pt))), ak.num(jets.pt))
                jets = ak.with_field(jets, jets.pt * smear, "pt")
            electrons = events.electron[events.electron.pt > self.obj["lepton_pt_min"]]
            muons = events.muon[events.muon.pt > self.obj["lepton_pt_min"]]
            jets = jets[jets.pt > self.obj["jet_pt_min"]]
            btagged = jets.btag > self.obj["btag_threshold"]
            n_btag = ak.sum(btagged, axis=1)
            selection = (ak.num(electrons) + ak.num(muons) == 1) & (ak.num(jets) >= 4) & (n_btag >= 1)
            jets = jets[selection]
            n_btag = n_btag[selection]
            for region in ("4j1b", "4j2b"):
                if region == "4j1b":
                    in_region = n_btag == 1
                    region_jets = jets[in_region]
                    observable = ak.sum(region_jets.pt, axis=-1)
                else:
                    in_region = n_btag >= 2
                    region_jets = jets[in_region]
                    trijet = ak.combinations(region_jets, 3, fields=["j1", "j2", "j3"])
                    trijet["p4"] = trijet.j1 + trijet.j2 + trijet.j3
                    trijet["max_btag"] = np.maximum(trijet.j1.btag, np.maximum(trijet.j2.btag, trijet.j3.btag))
                    trijet = trijet[trijet.max_btag > self.obj["btag_threshold"]]
                    best = ak.argmax(trijet.p4.pt, axis=1, keepdims=True)
                    observable = ak.flatten(trijet.p4[best].mass)
                name = variation if pt_var == "nominal" else pt_var
                h.fill(observable=observable, region=region, process=process, variation=name, weight=1.0)
                if pt_var == "nominal" and variation == "nominal":
                    btag = self.sys["btag"]
                    for i in range(btag["n_jets"]):
                        pt_i = region_jets.pt[:, i]
                        for direction, sign in (("up", 1.0), ("down", -1.0)):
                            weight = 1.0 + sign * btag["magnitude"] * pt_i / btag["pt_reference"]
                            h.fill(observable=observable, region=region, process=process,
                                   variation=f"{btag['name']}_{i}_{direction}", weight=weight)  # fmt: skip
        return {"nevents": {events.metadata["dataset"]: len(events)}, "hist": h}

    def postprocess(self, accumulator):
        return accumulator


def _run(proc, fileset, executor: str, workers: int, chunksize: int) -> dict:
    load_before = os.getloadavg()[0]
    with make_executor(executor, workers) as ex:
        runner = processor.Runner(executor=ex.executor, schema=AGCSchema, savemetrics=True, chunksize=chunksize)
        t0 = time.monotonic()
        _, metrics = runner(fileset, processor_instance=proc, treename=TREE_NAME)
        wall = time.monotonic() - t0
    return {
        "entries": int(metrics["entries"]),
        "processtime": float(metrics["processtime"]),
        "walltime": wall,
        "khz_per_core": metrics["entries"] / metrics["processtime"] / 1e3,
        "khz_wall": metrics["entries"] / wall / 1e3,
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="embedded:tiny")
    ap.add_argument("--executor", default="iterative", choices=["iterative", "futures"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunksize", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-files", type=int, default=-1, help="files per sample (-1: all)")
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    config = load_analysis_config()
    fileset = build_fileset(resolve_dataset(args.dataset, workers=args.workers), args.n_files)
    processors = {"fused (TtbarAnalysis)": TtbarAnalysis(config), "reference-style": ReferenceTtbarProcessor(config)}
    runs: dict[str, list[dict]] = {name: [] for name in processors}
    first = {s: {**e, "files": dict(list(e["files"].items())[:1])} for s, e in list(fileset.items())[:1]}
    for proc in processors.values():  # untimed: imports, numba cache, first-use costs
        _run(proc, first, "iterative", 1, args.chunksize)
    for _ in range(args.repeat):  # interleaved
        for name, proc in processors.items():
            runs[name].append(_run(proc, fileset, args.executor, args.workers, args.chunksize))
            log.info("%s: %s", name, runs[name][-1])
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("khz_per_core", "khz_wall")} for n, rs in runs.items()}
    fused, ref = med["fused (TtbarAnalysis)"], med["reference-style"]
    result = {
        "dataset": args.dataset, "executor": args.executor, "workers": args.workers, "repeat": args.repeat,
        "runs": runs, "medians": med,
        "ratio_per_core": fused["khz_per_core"] / ref["khz_per_core"],
        "ratio_wall": fused["khz_wall"] / ref["khz_wall"],
        "machine": machine(),
    }  # fmt: skip
    args.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output / "comparison.json", result)
    loads = [x for rs in runs.values() for r in rs for x in r["loadavg_1min"]]
    lines = [
        f"# Fused kernel against a reference-style processor (`{args.dataset}`)",
        "",
        f"- {args.executor} executor, {args.workers} worker(s), medians over {args.repeat} interleaved repeats; "
        f"same files, same coffea Runner, all systematics; both warmed by an untimed run first",
        f"- machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores; 1-min load average "
        f"around the runs: median {statistics.median(loads):.1f}, range {min(loads):.1f}-{max(loads):.1f}",
        "",
        "| processor | kHz per core (entries/processtime) | kHz wall |",
        "|---|---|---|",
        *(f"| {n} | {m['khz_per_core']:.0f} | {m['khz_wall']:.0f} |" for n, m in med.items()),
        "",
        f"Ratio fused / reference-style: {result['ratio_per_core']:.1f}x per core, {result['ratio_wall']:.1f}x "
        "in wall time.",
        "",
    ]
    write_text_atomic(args.output / "summary.md", "\n".join(lines))
    log.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
