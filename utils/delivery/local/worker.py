"""The work of one file: run a request's generated code on one input and write the output.

Runs in a worker process of the endpoint's pool; everything here is picklable and top level.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from utils.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileTask:
    request_id: str
    index: int
    input_path: str
    codegen: str  # a key of codegen.CODE_GENERATORS
    selection: str  # the request's selection, checked again before it is interpreted
    result_format: str  # "root-file" or "parquet"
    output_path: str


@dataclass(frozen=True)
class FileOutcome:
    request_id: str
    index: int
    output_path: str
    bytes: int
    events: int


def init_worker(parent_pid: int) -> None:
    """Pool initializer: end this worker when the endpoint process is gone (killed with -9, the
    pool cannot tell its workers), instead of lingering as an orphan. Trusts the CA file of
    ``AGC_CA_FILE`` for https:// inputs, as the endpoint's process does."""
    from utils.datasets.urls import configure_https_trust

    configure_https_trust()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def warm_up() -> None:
    """Import the heavy modules once per worker process, before the first file arrives."""
    import awkward  # noqa: F401
    import uproot  # noqa: F401


def _input_branches(path: str) -> list[str]:
    """The branch names of the input's trees (their counters name the output's counters)."""
    import uproot

    with uproot.open(path) as f:
        return [b.name for key, cls in f.classnames(cycle=False).items() if cls == "TTree" for b in f[key].branches]


def run_file(task: FileTask) -> FileOutcome:
    """Transform ``task.input_path``; the output appears at ``task.output_path`` only when complete."""
    from utils.delivery.local.codegen import run_query
    from utils.delivery.local.output import counter_prefix_of, write_parquet, write_root

    if "://" not in task.input_path and not Path(task.input_path).is_file():
        raise FileNotFoundError(f"input file not found: {task.input_path}")
    trees, histograms = run_query(task.codegen, task.selection, task.input_path)
    with atomic_path(task.output_path) as tmp:
        if task.result_format == "parquet":
            if len(trees) != 1 or histograms:
                raise ValueError(f"parquet output holds exactly one tree; the query produced {sorted(trees)}")
            events = write_parquet(tmp, next(iter(trees.values())))
        else:
            events = write_root(tmp, trees, histograms, counter_prefix_of(_input_branches(task.input_path)))
    size = Path(task.output_path).stat().st_size
    log.debug("%s -> %s (%d events, %d bytes)", task.input_path, task.output_path, events, size)
    return FileOutcome(task.request_id, task.index, task.output_path, size, events)
