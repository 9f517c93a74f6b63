"""The run layer under misuse and faults (issue 14): nothing stale counts, parameters say what
they do, and the operating system's refusals and Ctrl-C give one line, not a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from utils.cli import cli, run_command
from utils.config import REPO_ROOT
from utils.errors import AGCError, ConfigError
from utils.run import pipeline
from utils.run.outputs import MANIFEST_NAME, prepare_output_dir
from utils.run.parameters import RunParameters

SLEEP_MARK = "notebook started"


def small_notebook(path: Path, body: str) -> Path:
    """A notebook with a ``parameters`` cell and one cell of ``body``: the real papermill path of
    ``agc run`` without the cost of the analysis."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('DATASET = "embedded:quickstart"\nOUTPUT_DIR = None\nOVERWRITE = False\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


WRITER = 'from pathlib import Path\nPath(OUTPUT_DIR, "ran.json").write_text(repr(DATASET))\n'


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def agc(capsys, monkeypatch):
    """``agc ARGS`` as the program runs it (:func:`utils.cli.run_command`), in this process."""

    def run(*args: str) -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["agc", *args])
        try:
            run_command(cli)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


# --- case 2: a used output folder -------------------------------------------------------------------


def test_used_output_folder_is_refused_then_cleared_with_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "fit_results.json").write_text("{}")
    (out / "templates").mkdir()
    (out / "templates" / "old.root").write_bytes(b"x")
    with pytest.raises(AGCError, match=r"not empty.*fit_results\.json.*--overwrite"):
        pipeline.output_dir_for(RunParameters(output_dir=str(out)))
    assert (out / "fit_results.json").is_file()
    pipeline.output_dir_for(RunParameters(output_dir=str(out), overwrite=True))
    assert list(out.iterdir()) == []


def test_executed_notebook_does_not_count_as_a_used_folder(tmp_path):
    (tmp_path / "ttbar_analysis_pipeline.ipynb").write_text("{}")  # papermill writes it first
    assert prepare_output_dir(tmp_path) == tmp_path


def test_agc_run_into_a_used_folder(tmp_path, agc):
    nb = small_notebook(tmp_path / "small.ipynb", WRITER)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fit_results.json").write_text(json.dumps({"poi": {"name": "ttbar_norm", "bestfit": 9.0, "uncertainty": 1}}))
    refused = agc("run", "--notebook", str(nb), "--output", str(out))
    assert refused.returncode == 2 and "not empty" in refused.stderr and "Traceback" not in refused.stderr
    done = agc("run", "--notebook", str(nb), "--output", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "ttbar_norm" not in done.stdout  # the old fit result is gone, not reported as this run's
    assert not (out / "fit_results.json").exists() and (out / "ran.json").is_file()


# --- case 18: parameters that say what they do ---------------------------------------------------


def test_dataset_and_output_dir_parameters_are_honoured(tmp_path, agc):
    nb = small_notebook(tmp_path / "small.ipynb", WRITER)
    out = tmp_path / "chosen"
    done = agc("run", "--notebook", str(nb), "-p", "DATASET", "embedded:tiny", "-p", "OUTPUT_DIR", str(out))
    assert done.returncode == 0, done.stderr
    assert "on embedded:tiny" in done.stdout and "quickstart" not in done.stdout
    assert (out / "ran.json").read_text() == repr("embedded:tiny")


def test_conflicting_dataset_given_twice_is_refused(tmp_path, agc):
    nb = small_notebook(tmp_path / "small.ipynb", WRITER)
    res = agc("run", "--notebook", str(nb), "--dataset", "embedded:tiny", "-p", "DATASET", "embedded:quickstart")
    assert res.returncode == 2 and "disagree" in res.stderr


# --- case 15: bad parameter values are named ------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [("NUM_CORES", "zero"), ("USE_DASK", "1"), ("CHUNKSIZE", "1.5")])
def test_bad_parameter_value_names_the_parameter(name, value):
    with pytest.raises(ConfigError, match=rf"{name}="):
        RunParameters.from_notebook({name: __import__("ast").literal_eval(value) if value != "zero" else value})


def test_agc_run_bad_parameter_is_one_line(tmp_path, agc):
    res = agc("run", "--output", str(tmp_path / "out"), "-p", "NUM_CORES", "zero")
    assert res.returncode == 2
    assert "NUM_CORES='zero'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


# --- case 13 and 11: read-only folder, full disk ------------------------------------------------


@pytest.fixture()
def tmpfs(tmp_path):
    """A small tmpfs (root only): real EROFS / ENOSPC from the kernel."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


def test_read_only_output_folder_is_one_clear_error(tmpfs, tmp_path, agc):
    mnt = tmpfs("ro,size=64k")
    with pytest.raises(AGCError, match=r"cannot use the output folder: Read-only file system"):
        prepare_output_dir(mnt / "run")
    res = agc("run", "--notebook", str(small_notebook(tmp_path / "s.ipynb", WRITER)), "--output", str(mnt / "run"))
    assert res.returncode == 2 and "Read-only" in res.stderr and "Traceback" not in res.stderr


def test_full_disk_is_one_clear_error_and_no_manifest(tmpfs, tmp_path, agc):
    mnt = tmpfs("size=256k")
    body = 'from pathlib import Path\nPath(OUTPUT_DIR, "big.bin").write_bytes(bytes(1 << 20))\n'
    res = agc("run", "--notebook", str(small_notebook(tmp_path / "s.ipynb", body)), "--output", str(mnt / "run"))
    assert res.returncode == 2, res.stderr
    assert "No space left on device" in res.stderr and "Traceback" not in res.stderr
    assert not (mnt / "run" / MANIFEST_NAME).exists()


def test_agc_fit_on_a_non_root_file_names_it(agc, tmp_path):
    res = agc("fit", "/etc/passwd", "-o", str(tmp_path / "fit"), "--no-figures")
    assert res.returncode == 2
    assert "/etc/passwd: not a readable ROOT file" in res.stderr and "Traceback" not in res.stderr


# --- case 12: Ctrl-C --------------------------------------------------------------------------


def test_sigint_stops_with_one_line_and_exit_130(tmp_path):
    body = f'import time\nprint("{SLEEP_MARK}", flush=True)\ntime.sleep(120)\n'
    nb = small_notebook(tmp_path / "slow.ipynb", body)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "utils.cli", "run", "--notebook", str(nb), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
                            start_new_session=True)  # fmt: skip
    # wait until the kernel runs the slow cell (papermill logs the cell start on stderr)
    for _line in iter(proc.stdout.readline, ""):
        if "running" in _line:
            break
    executed = out / "slow.ipynb"
    for _ in range(600):
        if executed.is_file() and SLEEP_MARK in executed.read_text():
            break
        try:
            proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole foreground group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "ZMQError" not in stderr
    assert "interrupted" in stderr
    assert not (out / MANIFEST_NAME).exists()
