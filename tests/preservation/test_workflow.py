"""The preserved workflow's specification: workflow/Snakefile parses with Python and Snakemake
alone (no project code, no numpy), its config booleans, per-step containers and resources, the
container recipe, and the REANA specification as reana-client validates it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from utils.config import REPO_ROOT

SNAKEFILE = REPO_ROOT / "workflow" / "Snakefile"
REANA_CLIENT = REPO_ROOT / ".venv-reana" / "bin" / "reana-client"
# Snakemake run in an isolated interpreter (-I: no PYTHONPATH, no user site) where importing the
# project or numpy fails, whatever the environment has installed
BARE_SNAKEMAKE = """
import sys
for name in ("utils", "numpy"):
    sys.modules[name] = None
from snakemake.cli import main
main(sys.argv[1:])
"""


def bare_dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-I", "-c", BARE_SNAKEMAKE, "-s", str(SNAKEFILE), "-n", "-p", "--cores", "2",
           "--directory", str(workdir), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=180)


def test_snakefile_parses_without_project_code(tmp_path):
    result = bare_dry_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.MULTILINE))
    # the background samples are known once the describe_background checkpoint ran
    assert {k: int(v) for k, v in counts.items()} == {
        "all": 1, "describe_background": 1, "describe_signal": 4, "merge": 1, "process_signal": 3,
        "publish": 1, "limit": 3, "reinterpret": 1, "summary": 1, "total": 16,
    }  # fmt: skip
    commands = re.findall(r"^Shell command: (.*)$", result.stdout, flags=re.MULTILINE)
    commands = [c for c in commands if c != "None"]  # rule all has none
    assert len(commands) == 15 and all(c.startswith("python -m utils.cli") for c in commands)
    assert sys.executable not in result.stdout  # no interpreter of the engine in the jobs
    publish = next(c for c in commands if " publish " in c)
    assert "--inspire ins0000000 --analysis-id AGC-CMS-ttbar-2015" in publish


@pytest.mark.parametrize(
    ("value", "limits"),
    [("false", False), ("False", False), ("no", False), ("0", False), ("true", True), ("True", True)],
)
def test_upper_limits_boolean_from_the_command_line(tmp_path, value, limits):
    result = bare_dry_run(tmp_path, "--config", f"upper_limits={value}")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = re.findall(r"^Shell command: (.*)$", result.stdout, re.M)
    steps = [c for c in commands if re.match(r"python -m utils\.cli(\.workflow limit| reinterpret) ", c)]
    assert len(steps) == 4
    assert all(("--no-limit" in c) is not limits for c in steps)


def test_upper_limits_not_a_boolean_is_refused(tmp_path):
    result = bare_dry_run(tmp_path, "--config", "upper_limits=maybe")
    assert result.returncode != 0
    assert "upper_limits='maybe' is not a boolean" in result.stdout + result.stderr


def test_every_step_has_a_container_and_resources():
    text = SNAKEFILE.read_text()
    blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", text, flags=re.M)[1:]
    steps = {re.match(r"(?:rule|checkpoint) (\w+):", b).group(1): b for b in blocks}
    assert len(steps) == 10
    for name, block in steps.items():
        if name == "all":
            continue
        assert "container:\n        IMAGE" in block, name
        assert "resources:" in block and "threads:" in block, name
    assert not re.search(r"^\s*(import|from) (utils|numpy)", text, re.M)


def test_container_recipe_builds_the_named_image():
    config = yaml.safe_load((REPO_ROOT / "workflow" / "config.yaml").read_text())
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert config["container"] == f"docker://agc-ttbar:{version}"
    dockerfile = (REPO_ROOT / "workflow" / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile and "pip install --no-cache-dir --no-deps -e ." in dockerfile
    assert "docker build -f workflow/Dockerfile -t $(IMAGE) ." in (REPO_ROOT / "Makefile").read_text()


def test_reana_specification_validates():
    if not REANA_CLIENT.is_file():
        pytest.skip(f"reana-client not installed at {REANA_CLIENT}: run `make reana-client`")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(REANA_CLIENT), "validate", "-f", "workflow/reana.yaml"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    # reana-client exits 0 even on an invalid specification: read what it says
    assert "ERROR" not in out, out[-3000:]
    assert "SUCCESS: Valid REANA specification file." in out
    assert "SUCCESS: Workflow operations appear valid." in out
