"""How far the fitted ttbar_norm and its uncertainty can be trusted, per dataset, and how long the
impact ranking takes.

For each histograms file (the tiny embedded dataset, with and without the ML-score categories;
the quick start's where ``data/embedded/quickstart`` exists; the real AGC histograms), with the
template treatment of ``cabinetry_config.yml`` and without it (the section removed):

* the POI and its uncertainty with MINUIT strategies 0, 1 and 2 (the reported Hessian
  uncertainty and MINUIT's own HESSE), MINOS (strategy 1) and its symmetrised half-width;
* the impact ranking's time (:func:`utils.inference.ranking.rank_parameters`) and its refits
  without a valid minimum, and on request
  (``--reference``, AGC model) the time of the pyhf refits it replaced (``fast=False``, the
  refits of ``cabinetry.fit.ranking`` with a strategy-2 retry) and the largest impact difference.

    python benchmarks/inference.py --output benchmarks/results/inference [--reference]

Writes ``stability.json`` and ``stability.md`` in the output folder (with the machine's load
average before and after every ranking: the machine is shared).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from utils.config import REPO_ROOT
from utils.inference.config import DEFAULT_CABINETRY_CONFIG
from utils.inference.diagnostics import fit_with_diagnostics
from utils.inference.fit import numpy_backend
from utils.inference.ranking import rank_parameters
from utils.inference.results import prepare_workspace
from utils.inference.treatment import TREATMENT_KEY
from utils.io import write_json_atomic, write_text_atomic

log = logging.getLogger("benchmarks.inference")

AGC_HISTOGRAMS = REPO_ROOT.parent / "shared" / "realdata" / "agc-histograms" / "histograms.root"


def dataset_histograms(name: str, folder: Path) -> Path | None:
    """``histograms.root`` and ``histograms_ml.root`` of an embedded dataset, made once into ``folder``."""
    from utils.config import load_analysis_config
    from utils.histograms.accumulate import save_histograms
    from utils.run import pipeline
    from utils.run.parameters import RunParameters

    target = folder / name
    if (target / "histograms_ml.root").is_file():
        return target
    if name != "tiny" and not (REPO_ROOT / "data" / "embedded" / name).is_dir():
        return None
    from utils.datasets.embedded import ensure_dataset

    config = load_analysis_config()
    dataset = ensure_dataset(name, workers=2)
    target.mkdir(parents=True, exist_ok=True)
    params = RunParameters(dataset=str(dataset), use_ml=True, num_cores=2, output_dir=str(target))
    _, fileset = pipeline.fileset_for(params)
    delivered = pipeline.deliver(params, fileset, config)
    result = pipeline.process(params, delivered.fileset, config, pipeline.make_classifier(True))
    save_histograms(result.histograms, target / "histograms.root", config)
    save_histograms(result.histograms, target / "histograms_ml.root", config, ml_categories=True)
    return target


def untreated_config(folder: Path) -> Path:
    """``cabinetry_config.yml`` without its ``TemplateTreatment`` section."""
    data = yaml.safe_load(DEFAULT_CABINETRY_CONFIG.read_text())
    data.pop(TREATMENT_KEY, None)
    path = folder / "cabinetry_config_untreated.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def measure(histograms: Path, config: Path, ml: bool, reference: bool) -> dict[str, Any]:
    import cabinetry

    out: dict[str, Any] = {"strategies": {}}
    with numpy_backend(), tempfile.TemporaryDirectory() as tmp:
        treatment: list = []
        try:
            _, ws, _ = prepare_workspace(
                histograms, tmp, config, keep_templates=False, ml_categories=ml, treatment=treatment
            )
        except Exception as err:  # a model that cannot be built is a result of the table too
            out["error"] = f"{type(err).__name__}: {err}"
            return out
        model, data = cabinetry.model_utils.model_and_data(ws)
        poi = model.config.poi_index
        out["n_parameters"] = len(model.config.par_names)
        out["treatment"] = {}
        for record in treatment:
            out["treatment"][record.action] = out["treatment"].get(record.action, 0) + 1
        fits = {}
        for strategy in (0, 1, 2):
            try:
                fit, diag = fit_with_diagnostics(model, data, strategy=strategy, minos=strategy == 1)
            except Exception as err:
                out["strategies"][strategy] = {"error": str(err).splitlines()[0][:200]}
                continue
            fits[strategy] = fit
            out["strategies"][strategy] = {
                "bestfit": float(fit.bestfit[poi]),
                "uncertainty": float(fit.uncertainty[poi]),
                "hesse": diag.poi_hesse_uncertainty,
                "minos": diag.poi_minos,
                "minos_symmetric": diag.poi_minos_symmetric,
                "minos_valid": diag.minos_valid,
                "covariance_status": diag.covariance_status,
                "hessian_positive_definite": diag.hessian_positive_definite,
                "problems": len(diag.problems),
            }
        values = [s["uncertainty"] for s in out["strategies"].values() if "uncertainty" in s]
        out["spread"] = max(values) / min(values) - 1 if values else None
        if 1 in fits:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            try:
                fast = rank_parameters(model, data, fits[1])
            except Exception as err:
                out["ranking_error"] = str(err).splitlines()[0][:200]
                return out
            out["ranking_s"] = time.perf_counter() - start
            out["ranking_load"] = [load, os.getloadavg()[0]]
            out["ranking_impacts"] = 4 * len(fast.labels)
            out["ranking_failed"] = [n.line() for n in fast.failed]
            out["ranking_clipped"] = [n.line() for n in fast.notes if n.status == "clipped"]
            if reference:
                start = time.perf_counter()
                slow = rank_parameters(model, data, fits[1], fast=False)
                out["reference_ranking_s"] = time.perf_counter() - start
                out["max_impact_difference"] = float(
                    max(
                        np.max(np.abs(np.asarray(getattr(fast, f)) - np.asarray(getattr(slow, f))))
                        for f in ("prefit_up", "prefit_down", "postfit_up", "postfit_down")
                    )
                )
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: list[dict[str, Any]], notes: list[str]) -> str:
    lines = [
        "# POI uncertainty per dataset: strategies, Hesse against MINOS, template treatment, ranking time",
        "",
        "`python benchmarks/inference.py`; uncertainties of ttbar_norm. *reported*: the inverse of the",
        "likelihood's Hessian (what fit_results.json gives), per MINUIT strategy 0/1/2; *HESSE*: MINUIT's own;",
        "*MINOS*: strategy 1, symmetrised half-width; *spread*: max/min - 1 of the three reported;",
        "*treatment*: the TemplateTreatment of cabinetry_config.yml (`after`) or none (`before`);",
        "*ranking*: its time, and the impacts whose refit has no valid minimum (listed, with why, in",
        "stability.json: `ranking_failed`; held values clipped to a bound: `ranking_clipped`).",
        "",
        "| dataset | categories | treatment | POI (s1) | reported s0 / s1 / s2 | spread | HESSE s0 / s1 / s2 "
        "| MINOS (sym.) | ranking [s] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        m = r["result"]
        head = f"| {r['dataset']} | {'ML' if r['ml'] else 'regions'} | {r['treatment']} "
        if "error" in m:
            lines.append(head + f"| model not built: {m['error'][:80]} | | | | | |")
            continue
        s = m["strategies"]

        def cell(key: str, strategies: dict = s) -> str:
            return " / ".join(
                _fmt(strategies.get(k, {}).get(key)) if "error" not in strategies.get(k, {}) else "fails"
                for k in (0, 1, 2)
            )

        s1 = s.get(1, {})
        minos = s1.get("minos")
        minos_text = (
            f"{minos[0]:+.4f}/{minos[1]:+.4f} ({_fmt(s1.get('minos_symmetric'))})"
            + ("" if s1.get("minos_valid") else " invalid")
            if minos
            else ("fails" if s1.get("minos_valid") is False else "-")
        )
        ranking = _fmt(m.get("ranking_s"), 2) if "ranking_error" not in m else "fails"
        if m.get("ranking_failed"):
            ranking += f" ({len(m['ranking_failed'])} of {m['ranking_impacts']} impacts without a valid minimum)"
        if "reference_ranking_s" in m:
            ranking += f" (pyhf refits {m['reference_ranking_s']:.1f}, max diff {m['max_impact_difference']:.1e})"
        spread = "-" if m.get("spread") is None else f"{100 * m['spread']:.1f} %"
        lines.append(
            head
            + f"| {_fmt(s1.get('bestfit'))} | {cell('uncertainty')} | {spread} | {cell('hesse')} | {minos_text} | {ranking} |"
        )
    lines += ["", *notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/inference", type=Path)
    parser.add_argument("--histograms-cache", default=None, type=Path, help="folder for the datasets' histograms")
    parser.add_argument("--only", nargs="*", default=None, help="measure only these datasets: tiny, quickstart, agc")
    parser.add_argument(
        "--reference", action="store_true", help="also time the pyhf refits of the ranking (AGC model, minutes)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("cabinetry", "pyhf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cache = args.histograms_cache or Path(tempfile.mkdtemp(prefix="agc-inference-"))
    cache.mkdir(parents=True, exist_ok=True)
    untreated = untreated_config(cache)
    inputs: list[tuple[str, Path, bool]] = []
    notes = []
    wanted = set(args.only or ("tiny", "quickstart", "agc"))
    for name in ("tiny", "quickstart"):
        if name not in wanted:
            continue
        folder = dataset_histograms(name, cache)
        if folder is None:
            notes.append(f"{name}: data/embedded/{name} does not exist here; not measured (`agc generate {name}`).")
            continue
        inputs += [(name, folder / "histograms.root", False), (name, folder / "histograms_ml.root", True)]
    if "agc" not in wanted:
        pass
    elif AGC_HISTOGRAMS.is_file():
        inputs.append(("AGC (real histograms)", AGC_HISTOGRAMS, False))
        notes.append("AGC (real histograms): the published histograms have no ML-score categories.")
    else:
        notes.append(f"AGC: {AGC_HISTOGRAMS} not available; not measured.")
    results = []
    for dataset, histograms, ml in inputs:
        for treatment, config in (("after", DEFAULT_CABINETRY_CONFIG), ("before", untreated)):
            log.info("%s %s, treatment %s", dataset, "ML" if ml else "regions", treatment)
            reference = args.reference and treatment == "after" and dataset.startswith("AGC")
            result = measure(histograms, config, ml, reference)
            results.append({"dataset": dataset, "ml": ml, "treatment": treatment, "result": result})
            write(args.output, results, notes)  # after every row: a long run leaves what it measured
    notes.append(f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine).")
    write(args.output, results, notes)


def write(output: Path, results: list[dict[str, Any]], notes: list[str]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "stability.json", {"results": results, "notes": notes})
    write_text_atomic(output / "stability.md", markdown(results, notes))
    log.info("wrote %s", output / "stability.md")


if __name__ == "__main__":
    main()
