"""``make setup`` on a machine without a local torch wheel installs the CPU build from the CPU-only
index (overridable with TORCH_INDEX_URL), and then the single specification.

The real Makefile recipe runs under GNU make with a virtual environment whose ``pip`` writes down
each command it is given and, as pip does where no wheel folder is configured, finds no torch
without an index (``--no-index`` fails)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

PIP = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *--no-index*torch==*) echo "ERROR: No matching distribution found for torch" >&2; exit 1;;
  list*) exit 0;;
esac
exit 0
"""


def torch_pin() -> str:
    return next(
        line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch==")
    )


def run_setup(tmp_path: Path, *args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    for name, text in {"pip": PIP.format(log=log), "python": "#!/bin/sh\nexit 0\n"}.items():
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    done = subprocess.run(["make", "-C", str(REPO_ROOT), "setup", f"VENV={venv}", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (venv / ".installed").exists()
    return log.read_text().splitlines()


def test_without_a_local_wheel_setup_installs_the_cpu_build(tmp_path):
    calls = run_setup(tmp_path)
    pin = torch_pin()
    torch_calls = [c for c in calls if "torch==" in c]
    assert torch_calls == [
        f"install --quiet --no-index --no-deps {pin}",  # a local wheel (pip's find-links): none here
        f"install --quiet --index-url https://download.pytorch.org/whl/cpu {pin}",
    ]
    # torch before the specification, so that its pin is already satisfied by the CPU build
    assert calls.index(torch_calls[1]) < calls.index("install --quiet -r requirements.txt")
    assert "list" in calls  # the check that no nvidia-* (CUDA) package came in


def test_the_cpu_index_is_overridable(tmp_path):
    calls = run_setup(tmp_path, "TORCH_INDEX_URL=https://mirror.example/whl/cpu")
    assert f"install --quiet --index-url https://mirror.example/whl/cpu {torch_pin()}" in calls
    assert not any("download.pytorch.org" in c for c in calls)
