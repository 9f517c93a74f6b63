"""The notebook's parameters: one mapping to every stage's options, validated with their names."""

import ast
import re
from dataclasses import fields

import pytest

from utils.config import REPO_ROOT
from utils.errors import ConfigError
from utils.processing.run import ProcessingOptions
from utils.run.parameters import RunParameters


def notebook_parameter_names(name: str) -> list[str]:
    """The names assigned in the ``parameters`` cell of a notebook's Markdown twin."""
    text = (REPO_ROOT / "notebooks" / f"{name}.md").read_text()
    cell = re.search(r'```python tags=\["parameters"\]\n(.*?)```', text, re.S)
    assert cell, f"{name}.md has no parameters cell"
    return re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", cell.group(1), re.M)


def test_every_notebook_parameter_is_a_run_parameter_and_back():
    names = notebook_parameter_names("ttbar_analysis_pipeline")
    assert len(names) == len(set(names))
    assert set(names) == set(RunParameters.notebook_names())


def test_from_notebook_reads_the_names_and_ignores_other_globals():
    params = RunParameters.from_notebook({"NUM_CORES": 1, "USE_DASK": True, "np": object(), "_": 3})
    assert params.num_cores == 1 and params.use_dask and params.executor_name == "dask"
    with pytest.raises(ConfigError, match=r"unknown notebook parameter\(s\) \['NUM_CORE'\]"):
        RunParameters.from_notebook({"NUM_CORE": 1}, strict=True)
    assert RunParameters.from_notebook(params.to_notebook()) == params


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"PIPELINE": "spark"}, "PIPELINE='spark'"),
        ({"NUM_CORES": 0}, "NUM_CORES=0"),
        ({"CHUNKSIZE": -5}, "CHUNKSIZE=-5"),
        ({"IO_FILE_PERCENT": 7}, "IO_FILE_PERCENT=7"),
        ({"ON_BAD_INPUT": "ignore"}, "ON_BAD_INPUT='ignore'"),
        ({"N_FILES_MAX_PER_SAMPLE": 0}, "N_FILES_MAX_PER_SAMPLE=0"),
        ({"SERVICEX_QUERY_LANGUAGE": "sql"}, "SERVICEX_QUERY_LANGUAGE='sql'"),
        ({"PROCESSOR": "agc"}, "PROCESSOR='agc': allowed ['fused', 'reference']"),
        ({"PROCESSOR": "reference"}, "PROCESSOR='reference' with USE_ML=True"),
        ({"PROCESSOR": "reference", "USE_ML": False, "DISABLE_PROCESSING": True}, "DISABLE_PROCESSING=True"),
        ({"PROCESSOR": "reference", "USE_ML": False, "INPUT_FORMAT": "nanoaod"}, "INPUT_FORMAT='nanoaod'"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunParameters.from_notebook(values)


def test_processing_options_carry_exactly_what_processing_needs():
    params = RunParameters(use_dask=True, num_cores=3, chunksize=1234, systematics="none", on_bad_input="skip")
    assert params.processing_options() == ProcessingOptions(
        executor="dask", workers=3, chunksize=1234, systematics=False, on_bad_input="skip"
    )
    # keep_workers is the caller's choice (a notebook or a benchmark keeping its pool), not a parameter
    not_parameters = {"workers", "keep_workers"}
    assert {f.name for f in fields(ProcessingOptions)} < {f.name for f in fields(RunParameters)} | not_parameters
    with pytest.raises(ConfigError, match="workers=0"):
        ProcessingOptions(workers=0)


def test_the_processor_reaches_the_processing_options():
    assert RunParameters().processing_options().processor == "fused"
    reference = RunParameters(processor="reference", use_ml=False, dataset="embedded:tiny")
    assert reference.processing_options().processor == "reference" and reference.runs_fit


def test_the_fit_runs_only_with_systematics_and_processing():
    assert RunParameters().runs_fit
    assert not RunParameters(systematics="none").runs_fit
    assert not RunParameters(disable_processing=True).runs_fit
    assert not RunParameters(run_fit=False).runs_fit


REFERENCE_NOTEBOOK = REPO_ROOT.parent / "shared" / "reference" / "agc_ttbar_ml_notebook.md"


@pytest.mark.parametrize(
    ("reference", "here"),
    [("coffea", "direct"), ("servicex_processor", "servicex"), ("servicex_databinder", "servicex")],
)
def test_reference_pipeline_names_are_aliases(reference, here):
    assert RunParameters.from_notebook({"PIPELINE": reference}).pipeline == here
    assert RunParameters(pipeline=reference).pipeline == here


def test_reference_notebook_parameters_are_accepted():
    """The AGC reference notebook's GLOBAL CONFIGURATION cell, as it is, gives valid parameters
    (its AF is the facility name when AF_NAME is absent)."""
    if not REFERENCE_NOTEBOOK.is_file():
        pytest.skip(f"the AGC reference notebook is not at {REFERENCE_NOTEBOOK}")
    cell = REFERENCE_NOTEBOOK.read_text().split("### GLOBAL CONFIGURATION", 1)[1].split("```", 1)[0]
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=\s*([^#\n]+?)\s*(?:#.*)?$", cell, re.M))
    values = {k: ast.literal_eval(v) for k, v in values.items() if not v.startswith("torch.")}
    assert values["PIPELINE"] == "coffea"
    params = RunParameters.from_notebook(values)
    assert params.pipeline == "direct" and params.af_name == "coffea_casa" and params.num_cores == 2
    without_af_name = {k: v for k, v in values.items() if k != "AF_NAME"} | {"AF": "EAF"}
    assert RunParameters.from_notebook(without_af_name, strict=True).af_name == "EAF"


@pytest.mark.parametrize(
    ("environ", "memory", "dataset"),
    [
        ({}, 64 * 1024**3, "embedded:quickstart"),
        ({"BINDER_LAUNCH_HOST": "https://mybinder.org/"}, 64 * 1024**3, "embedded:tiny"),
        ({"JUPYTERHUB_API_URL": "http://hub"}, 64 * 1024**3, "embedded:tiny"),
        ({}, 2 * 1024**3, "embedded:tiny"),
    ],
)
def test_auto_dataset_is_tiny_on_binder_or_with_little_memory(environ, memory, dataset):
    from utils.run.parameters import default_dataset

    assert default_dataset(environ, memory)[0] == dataset


def test_auto_dataset_resolved_on_construction(monkeypatch):
    monkeypatch.setenv("BINDER_REQUEST", "v2/gh/x/y/HEAD")
    assert RunParameters().dataset == "embedded:tiny"
    assert RunParameters.from_notebook({"DATASET": "auto"}).dataset == "embedded:tiny"
    assert RunParameters(dataset="embedded:quickstart").dataset == "embedded:quickstart"


def test_memory_limit_is_the_lower_of_machine_and_container(tmp_path):
    from utils.runinfo import memory_limit_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree: 1 kB\n")
    (tmp_path / "v2").write_text("2147483648\n")
    (tmp_path / "v1").write_text("max\n")
    assert memory_limit_bytes(str(meminfo), [str(tmp_path / "v1")]) == 16384000 * 1024
    assert memory_limit_bytes(str(meminfo), [str(tmp_path / "v2"), str(tmp_path / "v1")]) == 2 * 1024**3
    assert memory_limit_bytes(str(tmp_path / "absent"), []) is None
