"""Notebooks: each .ipynb agrees with its Markdown twin, carries no outputs, and the main
notebook runs end to end under papermill on the tiny embedded dataset."""

import json
import re
from pathlib import Path

import jupytext
import pytest

from utils.config import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_and_markdown_twin_agree(path: Path):
    twin = path.with_suffix(".md")
    assert twin.is_file(), f"{path.name} has no paired {twin.name}"
    assert _cells(jupytext.read(path)) == _cells(jupytext.read(twin)), f"run `jupytext --sync {path}`"
    assert jupytext.read(path).metadata["jupytext"]["formats"] == "ipynb,md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path: Path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if path.stem == "ttbar_analysis_pipeline":
        assert len(tagged) == 1


#: lines a run once printed that are not the user's business, and where they came from
NOISY_LINES = {
    "Kernel is running over TCP without encryption": "ipykernel on a TCP transport (papermill's default)",
    "findfont:": "matplotlib looking up fonts for a figure drawn outside its style (mathtext.cal 'cursive')",
    "has empty bins": "cabinetry, one line per template with an empty bin",
    "DATASET='auto'": "a notebook dataset resolved where none is used",
    "Input Notebook:": "papermill's INFO lines",
}
#: Python warnings (``file.py:12: UserWarning: ...``) and tracebacks are never the reader's business
NOISY_PATTERN = re.compile(r"\b\w*Warning: |Traceback \(most recent call last\)")


def _stream_text(nb: dict) -> str:
    """Everything the executed notebook's cells printed (stdout and stderr streams)."""
    return "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for cell in nb["cells"]
        for o in cell.get("outputs", [])
        if o["output_type"] == "stream"
    )


@pytest.mark.slow
def test_main_notebook_runs_under_papermill(tiny_dataset, tmp_path, capfd):
    from utils.cli.run import execute_notebook

    out = tmp_path / "run"
    capfd.readouterr()
    executed = execute_notebook({"DATASET": "embedded:tiny", "NUM_CORES": 1, "EXECUTOR": "iterative"}, out,
                                progress=False)  # fmt: skip
    captured = capfd.readouterr()  # the kernel's own stderr and stdout (its process inherits ours)
    assert executed.is_file()
    for name in ("histograms.root", "workspace.json", "fit_results.json", "metrics.json"):
        assert (out / name).is_file(), name
    fit = json.loads((out / "fit_results.json").read_text())
    assert fit["poi"]["name"] == "ttbar_norm"
    assert 0.3 < fit["poi"]["bestfit"] < 3.0 and fit["poi"]["uncertainty"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["entries"] > 0 and metrics["pipeline"] == "direct" and metrics["packages"]["coffea"]
    assert list((out / "figures").glob("stack_4j2b.png"))
    # the classifier's score figures, drawn from the score histograms the processing filled
    assert sorted(p.name for p in (out / "figures").glob("ml_scores_*.png")) == ["ml_scores_4j1b.png",
                                                                               "ml_scores_4j2b.png"]  # fmt: skip
    assert "score_figures" in metrics["stage_walltime_s"]
    text = executed.read_text()
    assert "fit result for ttbar_norm" in text and "Traceback" not in text
    printed = _stream_text(json.loads(text))
    assert "in their ML categories (uncertainty ratio" in printed  # the classifier's effect on the fit
    for where, output in (("the notebook's cells", printed), ("the kernel's stderr", captured.err + captured.out)):
        noisy = [f"{line!r} ({why})" for line, why in NOISY_LINES.items() if line in output]
        noisy += NOISY_PATTERN.findall(output)
        assert not noisy, f"{where} printed: {noisy}\n{output}"


@pytest.fixture(scope="module")
def nanoaod_run(tiny_nanoaod, tmp_path_factory):
    """The main notebook on the generated NanoAOD tiny dataset (DATASET='embedded:tiny-nanoaod',
    INPUT_FORMAT='auto'), the fit on and the jet-parton assignment on (models/ holds its models):
    ``(output folder, executed notebook)``."""
    from utils.cli.run import execute_notebook

    out = tmp_path_factory.mktemp("nanoaod") / "run"
    params = {"DATASET": "embedded:tiny-nanoaod", "INPUT_FORMAT": "auto", "USE_ML": False, "RUN_FIT": True,
              "USE_JET_ASSIGNMENT": "on", "NUM_CORES": 1, "EXECUTOR": "iterative"}  # fmt: skip
    return out, execute_notebook(params, out, progress=False)


def _fits_near_one(fit: dict) -> None:
    """A valid minimum, ttbar_norm within its uncertainty of the true 1, and the PositiveWithin
    rule's records: the tiny NanoAOD templates come from too few events for their shapes."""
    assert fit["diagnostics"]["minuit_valid"] and fit["diagnostics"]["negative_yields"] == 0
    assert abs(fit["poi"]["bestfit"] - 1.0) < fit["poi"]["uncertainty"] < 0.5, fit["poi"]
    capped = [t for t in fit["template_treatment"] if "effective Monte Carlo events" in t["reason"]]
    assert capped and all(t["action"] == "capped" for t in capped)


@pytest.mark.slow
def test_main_notebook_runs_on_generated_nanoaod(nanoaod_run, tiny_nanoaod):
    """The notebook reads the generated NanoAOD, writes the histograms and figures, and fits: the
    template treatment's PositiveWithin bounds the shapes of its small Monte Carlo samples (the
    tight NanoAOD selection keeps about 170 ttbar events per region), without which MIGRAD finds
    no valid minimum (docs/inference.md)."""
    import uproot

    out, executed = nanoaod_run
    text = executed.read_text()
    assert "Traceback" not in text and "fit result for ttbar_norm" in text
    metrics = json.loads((out / "metrics.json").read_text())
    described = json.loads(tiny_nanoaod.read_text())
    assert metrics["entries"] == sum(v["nevts_total"] for s in described.values() for v in s.values())  # every event
    with uproot.open(out / "histograms.root") as f:
        ttbar = f["4j2b_ttbar"].values()
        assert ttbar.sum() > f["4j2b_wjets"].values().sum() and (out / "figures" / "stack_4j2b.png").is_file()
    _fits_near_one(json.loads((out / "fit_results.json").read_text()))


@pytest.mark.slow
def test_jet_assignment_feature_fit_on_generated_nanoaod(nanoaod_run, tmp_path):
    """cabinetry_config_jet_assignment.yml on the run's histograms_ml.root (m(W1 W2 b_had) of the
    chosen assignments) converges. Its templates carry the AGC's 1e-6 in every bin: bins holding
    only that offset count as empty, for NonNegative and DropEmptyBins alike."""
    from utils.inference.results import run_inference

    out, _ = nanoaod_run
    result = run_inference(out / "histograms_ml.root", tmp_path, REPO_ROOT / "cabinetry_config_jet_assignment.yml",
                           figures=False, keep_templates=False)  # fmt: skip
    assert not result.failures
    fit = json.loads(result.results_path.read_text())
    _fits_near_one(fit)
    assert any(t["action"] == "bins dropped" for t in fit["template_treatment"])  # bins with the offset only
