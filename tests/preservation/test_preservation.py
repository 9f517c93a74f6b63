"""Analysis preservation and reinterpretation (utils.preservation, workflow/).

The workflow runs once, for real, on the tiny dataset (one published signal point, one new
point reinterpreted, CLs only: upper limits take a minute per point); its outputs are checked
against an oracle: the full pipeline (one processing of backgrounds and signals together,
utils.run.pipeline and utils.inference.fit) building the signal-plus-background workspace directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml

from utils.config import REPO_ROOT, load_analysis_config
from utils.datasets.fileset import build_fileset
from utils.errors import ConfigError, StatisticsError
from utils.histograms.accumulate import save_histograms
from utils.inference.config import DEFAULT_CABINETRY_CONFIG
from utils.inference.fit import workspace_text
from utils.inference.limits import CLsScan
from utils.inference.results import prepare_workspace
from utils.io import sha256_file
from utils.preservation.model import load_signal_model, make_patchset, signal_plus_background_config
from utils.preservation.publish import PublishedAnalysis, background_inputs
from utils.preservation.signal import load_signal, standalone_description
from utils.processing.run import ProcessingOptions, process_fileset

PUBLISHED_POINT = "zprime_750"
NEW_POINT = "zprime_1250"  # never in the patchset: reinterpreted against the published likelihood
SNAKEFILE = REPO_ROOT / "workflow" / "Snakefile"
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Snakemake as `make workflow` runs it: the project's environment first in PATH."""
    cmd = [str(BIN / "snakemake"), "-s", str(SNAKEFILE), "--cores", "2", "--directory", str(workdir), *args]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, tiny_dataset) -> Path:
    """The workflow, run for real: generation, per-sample processing, merge, publish, limit
    step, reinterpretation, summary."""
    workdir = tmp_path_factory.mktemp("workflow")
    config = workdir / "test_config.yaml"
    config.write_text(
        yaml.safe_dump({"published": [PUBLISHED_POINT], "reinterpret": [NEW_POINT], "upper_limits": False})
    )
    result = snakemake(workdir, "--configfile", str(config))
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("logs/**/*.log")))
    assert result.returncode == 0, f"{result.stderr[-5000:]}\n{logs}"
    return workdir


@pytest.fixture(scope="module")
def signal_descriptions(workflow_run) -> dict[str, Path]:
    return {p.stem: p for p in (workflow_run / "inputs" / "signals").glob("*.json")}


@pytest.fixture(scope="module")
def oracle(workflow_run, signal_descriptions, tmp_path_factory) -> Path:
    """The full pipeline's histograms.root of backgrounds and both signals, processed together:
    the published point as process 'signal', the new one as 'signal_new'."""
    folder = tmp_path_factory.mktemp("oracle")
    description = standalone_description(workflow_run / "inputs" / "background.json")
    for process, point in (("signal", PUBLISHED_POINT), ("signal_new", NEW_POINT)):
        ((entry,),) = [v.values() for v in json.loads(signal_descriptions[point].read_text()).values()]
        description[process] = {"nominal": entry}
    path = folder / "description.json"
    path.write_text(json.dumps(description))
    config = load_analysis_config()
    params = ProcessingOptions(executor="iterative", workers=1)
    result = process_fileset(build_fileset(path), params, config)
    save_histograms(result.histograms, folder / "histograms.root", config)
    return folder / "histograms.root"


def oracle_workspace(oracle: Path, published: Path, tmp_path: Path, sample_path: str = "signal") -> dict:
    """The signal-plus-background workspace the pipeline builds (utils.inference.fit) from the
    oracle histograms with the published model (reading the signal as ``sample_path``)."""
    config = yaml.safe_load((published / "analysis" / "cabinetry_config_signal_plus_background.yml").read_text())
    for sample in config["Samples"]:
        if sample["Name"] == "signal":
            sample["SamplePath"] = sample_path
    config_path = tmp_path / "sb.yml"
    config_path.write_text(yaml.safe_dump(config))
    _, ws, _ = prepare_workspace(oracle, tmp_path / "fit", config_path, keep_templates=False)
    return ws


# -- the workflow -------------------------------------------------------------------------------


def test_workflow_outputs(workflow_run):
    summary = json.loads((workflow_run / "results" / "summary" / "limits.json").read_text())
    assert {p["name"] for p in summary} == {PUBLISHED_POINT, NEW_POINT}
    for point in summary:
        assert 0 < point["cls"]["cls_obs"] < 1 and len(point["cls"]["cls_exp"]) == 5
        assert point["poi"] == "mu_sig"
    assert (workflow_run / "results" / "summary" / "hepdata" / "upper_limits.yaml").is_file()


def test_merged_per_sample_histograms_equal_one_processing(workflow_run, oracle):
    """Per-sample processing + merge gives bit for bit the pipeline's histograms.root."""
    with uproot.open(workflow_run / "histograms" / "background.root") as merged, uproot.open(oracle) as direct:
        names = merged.keys(cycle=False)
        assert "4j2b_pseudodata" in names and "4j1b_ttbar_btag_var_3_down" in names
        for name in names:
            np.testing.assert_array_equal(merged[name].values(flow=True), direct[name].values(flow=True), name)
            np.testing.assert_array_equal(merged[name].variances(flow=True), direct[name].variances(flow=True), name)


# -- the published likelihood -------------------------------------------------------------------


def test_patchset_validates_and_matches_the_background_workspace(workflow_run):
    import pyhf

    published = workflow_run / "published"
    spec = json.loads((published / "patchset.json").read_text())
    pyhf.schema.validate(spec, "patchset.json")
    patchset = pyhf.PatchSet(spec)
    background = json.loads((published / "BkgOnly.json").read_text())
    patchset.verify(pyhf.Workspace(background))
    assert patchset.labels == ["mass"] and patchset[PUBLISHED_POINT].values == (750.0,)
    assert spec["patches"][0]["metadata"]["xsec_pb"] == pytest.approx(21.8)
    # background only: ttbar_norm is a free parameter, the POI comes with the signal
    assert background["measurements"][0]["config"]["poi"] == "mu_sig"
    assert {s["name"] for c in background["channels"] for s in c["samples"]} == {
        "ttbar", "W+jets", "single top, s-channel", "single top, t-channel", "tW"}  # fmt: skip
    assert {p["name"]: p["bounds"] for p in background["measurements"][0]["config"]["parameters"]} == {
        "ttbar_norm": [[0, 10]], "mu_sig": [[0, 100]]}  # fmt: skip
    ops = spec["patches"][0]["patch"]
    assert [(op["op"], op["path"]) for op in ops] == [
        ("add", "/channels/0/samples/-"),
        ("add", "/channels/1/samples/-"),
    ]
    added = [op["value"] for op in ops]
    assert all(s["name"] == "signal" for s in added)
    modifiers = {(m["name"], m["type"]) for m in added[0]["modifiers"]}
    assert ("mu_sig", "normfactor") in modifiers and ("Luminosity", "normsys") in modifiers
    assert ("Jet energy scale", "histosys") in modifiers and ("b-tag NP 4", "normsys") in modifiers
    assert not any(name in ("ME variation", "ttbar_norm", "W+jets scale variation") for name, _ in modifiers)


def same_numbers(a, b, rel: float = 1e-12) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_numbers(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_numbers(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-300)
    return a == b


def test_patch_reproduces_the_pipeline_workspace(workflow_run, oracle, tmp_path):
    published = PublishedAnalysis.load(workflow_run / "published")
    patched = published.patch(PUBLISHED_POINT).apply(published.background_ws)
    expected = oracle_workspace(oracle, published.root, tmp_path)
    # same structure; numbers equal to the last bits (normsys hi/lo are ratios computed once per path)
    assert same_numbers(json.loads(workspace_text(patched)), json.loads(workspace_text(expected)))


def test_reinterpretation_gives_the_cls_of_the_full_pipeline(workflow_run, oracle, tmp_path):
    folder = workflow_run / "reinterpretation" / NEW_POINT
    result = json.loads((folder / "result.json").read_text())
    ws = oracle_workspace(oracle, workflow_run / "published", tmp_path, sample_path="signal_new")
    assert workspace_text(ws) == workspace_text(json.loads((folder / "workspace.json").read_text()))
    cls = CLsScan.from_workspace(ws)(1.0)
    assert result["cls"]["cls_obs"] == pytest.approx(cls.cls_obs, abs=1e-6)
    assert result["cls"]["cls_exp"] == pytest.approx(list(cls.cls_exp), abs=1e-6)
    assert result["xsec_pb"] == pytest.approx(6.1) and result["parameters"] == {"mass": 1250.0}
    patches = json.loads((workflow_run / "published" / "patchset.json").read_text())["patches"]
    assert [p["metadata"]["name"] for p in patches] == [PUBLISHED_POINT]  # the new point was never published


def test_pyhf_command_line_on_the_published_files(workflow_run, tmp_path):
    published = workflow_run / "published"
    applied = tmp_path / "ws.json"
    subprocess.run(
        [str(BIN / "pyhf"), "patchset", "apply", str(published / "BkgOnly.json"), str(published / "patchset.json"),
         "--name", PUBLISHED_POINT, "--output-file", str(applied)],
        check=True, timeout=120,
    )  # fmt: skip
    ours = PublishedAnalysis.load(published)
    assert json.loads(applied.read_text()) == ours.patch(PUBLISHED_POINT).apply(ours.background_ws)
    # a reinterpretation's patch is a plain JSON patch of the published likelihood
    folder = workflow_run / "reinterpretation" / NEW_POINT
    out = subprocess.run(
        [str(BIN / "pyhf"), "cls", str(published / "BkgOnly.json"), "--patch", str(folder / "patch.json"),
         "--optimizer", "minuit"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    cli = json.loads(out.stdout)
    result = json.loads((folder / "result.json").read_text())
    assert cli["CLs_obs"] == pytest.approx(result["cls"]["cls_obs"], abs=1e-6)
    assert cli["CLs_exp"] == pytest.approx(result["cls"]["cls_exp"], abs=1e-6)


def test_hepdata_tables(workflow_run):
    folder = workflow_run / "published" / "hepdata"
    documents = list(yaml.safe_load_all((folder / "submission.yaml").read_text()))
    likelihood = {r["location"] for r in documents[0]["additional_resources"] if r.get("type") == "HistFactory"}
    assert likelihood == {"BkgOnly.json", "patchset.json"} and (folder / "BkgOnly.json").is_file()
    assert "AGC-CMS-ttbar-2015" in documents[0]["comment"] and "record_ids" not in documents[0]
    tables = {d["name"]: yaml.safe_load((folder / d["data_file"]).read_text()) for d in documents[1:]}
    assert set(tables) == {f"Yields {r} {s}" for r in ("4j1b CR", "4j2b SR") for s in ("pre-fit", "post-fit")}
    patchset = json.loads((workflow_run / "published" / "patchset.json").read_text())
    assert patchset["metadata"]["analysis_id"] == "AGC-CMS-ttbar-2015"
    table = tables["Yields 4j2b SR post-fit"]
    (independent,) = table["independent_variables"]
    assert independent["header"] == {"name": "$m_{bjj}$", "units": "GeV"}
    assert [b["low"] for b in independent["values"]] == list(range(110, 550, 40))
    names = [d["header"]["name"] for d in table["dependent_variables"]]
    assert "ttbar (post-fit)" in names and "Total background (post-fit)" in names and "Pseudo-data" in names
    for dependent in table["dependent_variables"]:
        assert len(dependent["values"]) == 11
        assert {"name": "Region", "value": "4j2b SR"} in dependent["qualifiers"]
    ttbar = table["dependent_variables"][names.index("ttbar (post-fit)")]
    assert all(v["value"] > 0 and v["errors"][0]["symerror"] > 0 for v in ttbar["values"])


def test_provenance_of_the_published_likelihood_and_the_reinterpretation(workflow_run, tmp_path):
    published = workflow_run / "published"
    record = json.loads((published / "provenance.json").read_text())
    samples = {s["sample"]: s for s in record["inputs"]["background"]["samples"]}
    assert "ttbar__PS_var" in samples and "wjets__nominal" in samples
    first = samples["ttbar__nominal"]["files"][0]
    assert first["sha256"] == sha256_file(first["path"]) and first["nevts"] == 3000
    assert record["configuration"]["analysis_config"]["sha256"] == sha256_file(REPO_ROOT / "analysis_config.yml")
    assert record["configuration"]["cabinetry_config"]["sha256"] == sha256_file(DEFAULT_CABINETRY_CONFIG)
    assert record["seeds"]["jet_pt_resolution"] == 2015 and record["seeds"]["generators"]["ttbar__nominal"] == 2015
    assert record["packages"]["pyhf"] and record["packages"]["cabinetry"] and "git_commit" in record
    assert record["outputs"]["BkgOnly.json"]["sha256"] == sha256_file(published / "BkgOnly.json")

    reinterpretation = json.loads((workflow_run / "reinterpretation" / NEW_POINT / "provenance.json").read_text())
    (signal,) = reinterpretation["inputs"]["signal"]
    assert signal["xsec"] == pytest.approx(6.1) and signal["nevts"] == 5000
    assert signal["files"][0]["sha256"] == sha256_file(signal["files"][0]["path"])
    assert (
        reinterpretation["inputs"]["published"]["BkgOnly.json"]["sha256"] == record["outputs"]["BkgOnly.json"]["sha256"]
    )

    # histograms of an `agc run` folder: the input files come from the run's manifest
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(workflow_run / "histograms" / "background.root", run / "histograms.root")
    description = workflow_run / "inputs" / "background.json"
    manifest = {"inputs": {"dataset_description": {"path": str(description), "sha256": sha256_file(description)}},
                "parameters": {"n_files_max_per_sample": 1}}  # fmt: skip
    (run / "manifest.json").write_text(json.dumps(manifest))
    inputs = background_inputs(run / "histograms.root", load_analysis_config())
    assert {s["sample"]: len(s["files"]) for s in inputs["samples"]}["wjets__nominal"] == 1
    assert inputs["run_manifest"]["sha256"] == sha256_file(run / "manifest.json")

    # a published folder whose likelihood was changed is refused
    copy = tmp_path / "published"
    shutil.copytree(published, copy)
    background = json.loads((copy / "BkgOnly.json").read_text())
    background["observations"][0]["data"][0] += 1
    (copy / "BkgOnly.json").write_text(json.dumps(background))
    with pytest.raises(ConfigError, match=r"changed since publication: \['BkgOnly.json'\]"):
        PublishedAnalysis.load(copy)


# -- inputs and model checks (no processing) -----------------------------------------------------


def _description(tmp_path: Path, **entry) -> Path:
    path = tmp_path / "signal.json"
    path.write_text(json.dumps({"my_signal": {"nominal": {"files": [{"path": "a.root", "nevts": 10}], **entry}}}))
    return path


def test_a_signal_brings_its_own_cross_section(tmp_path):
    signal = load_signal(_description(tmp_path, xsec=2.5, parameters={"mass": 900}))
    assert (signal.name, signal.xsec, signal.nevts, dict(signal.parameters)) == ("my_signal", 2.5, 10, {"mass": 900.0})
    fileset = signal.fileset("signal")
    assert list(fileset) == ["signal__nominal"]
    assert fileset["signal__nominal"]["metadata"]["process"] == "signal"
    with pytest.raises(ConfigError, match=r"\['xsec'\].*brings its own cross-section"):
        load_signal(_description(tmp_path))
    with pytest.raises(ConfigError, match="parameters"):
        load_signal(_description(tmp_path, xsec=1.0, parameters={"mass": "heavy"}))
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"a": {"nominal": {"files": []}}, "b": {"nominal": {"files": []}}}))
    with pytest.raises(ConfigError, match="exactly one process"):
        load_signal(two)


def test_signal_model_checks_which_systematics_can_act_on_a_signal(tmp_path):
    base = yaml.safe_load(DEFAULT_CABINETRY_CONFIG.read_text())
    model = load_signal_model()
    config = signal_plus_background_config(base, model)
    assert config["General"]["POI"] == "mu_sig" and config["Samples"][-1]["Name"] == "signal"
    jes = next(s for s in config["Systematics"] if s["Name"] == "Jet energy scale")
    assert jes["Samples"][-1] == "signal"
    for systematics, message in (
        ([*model.systematics, "ME variation"], "'_ME_var', which a nominal signal sample does not fill"),
        ([*model.systematics, "No such"], "not systematics of the model"),
        ([s for s in model.systematics if s != "Luminosity"], "'Luminosity' acts on every sample"),
    ):
        raw = yaml.safe_load(Path(model.source).read_text())
        raw["Systematics"] = systematics
        path = tmp_path / "signal.yml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=message):
            signal_plus_background_config(base, load_signal_model(path))
    raw = yaml.safe_load(Path(model.source).read_text())
    raw["NormFactr"] = raw.pop("NormFactor")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="NormFactr"):
        load_signal_model(path)


def test_patchset_needs_patches_with_common_labels(counting_workspace):
    from utils.preservation.model import SignalPatch

    ws = counting_workspace(1.0)
    with pytest.raises(StatisticsError, match="at least one"):
        make_patchset(ws, [])
    spec = make_patchset(ws, [SignalPatch("a", (), {"mass": 1.0}), SignalPatch("b", (), {"mass": 2.0, "width": 3})])
    assert spec["metadata"]["labels"] == ["mass"] and spec["patches"][1]["metadata"]["values"] == [2.0]
    with pytest.raises(StatisticsError, match="unique"):
        make_patchset(ws, [SignalPatch("a", ()), SignalPatch("a", ())])
