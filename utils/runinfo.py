"""Facts about a run's environment, in one home: package versions, git commit, machine, peak
memory, timestamps."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import resource
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT

log = logging.getLogger(__name__)

PACKAGES = ("coffea", "uproot", "awkward", "hist", "numba", "numpy", "torch", "cabinetry", "pyhf",
            "servicex", "func_adl_uproot", "dask", "distributed", "mplhep", "papermill")  # fmt: skip


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None for a package that is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def peak_memory_mb(children: bool = True) -> float:
    """Peak resident memory of this process (and of its finished children), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak / 1024.0


#: where a container's memory limit is (cgroup v2, then v1): Binder pods are limited there
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit_bytes(
    meminfo: str = "/proc/meminfo", cgroup_files: Iterable[str] = CGROUP_MEMORY_LIMITS
) -> int | None:
    """The memory this process may use: the machine's total, or its container's limit where
    that is lower (None where neither can be read)."""
    limits = []
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for path in cgroup_files:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))  # "max" (cgroup v2) or a huge number: no limit
    return min(limits) if limits else None


def process_age_s() -> float:
    """Seconds since this process started (in a notebook: since the kernel started)."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


class StageTimer:
    """Wall time per named stage: ``with timer("fit"): ...`` records ``timer.timings["fit"]``
    (seconds, also when the block raises)."""

    def __init__(self, timings: dict[str, float] | None = None) -> None:
        self.timings: dict[str, float] = timings if timings is not None else {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 4)
            log.debug("%s took %.3f s", name, self.timings[name])
