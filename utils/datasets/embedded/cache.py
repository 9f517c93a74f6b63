"""The dataset cache's file handling: leftover files of an interrupted or another request, the
per-folder lock, and the disk-space check (the cache rule itself: ``dataset.is_complete``)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import uproot

from utils.datasets.embedded.schema import TREE_NAME
from utils.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
BYTES_PER_EVENT_ESTIMATE = 3200  # upper end of the measured 2.3-2.9 kB/event, for the disk check
_SAMPLE_DIR = re.compile(r"^[A-Za-z0-9_]+__[A-Za-z0-9_]+$")


def file_is_whole(path: Path, n_events: int, tree_name: str = TREE_NAME) -> bool:
    """A file left by an interrupted run of the same request: readable, with all its events."""
    if not path.is_file():
        return False
    try:
        with uproot.open(path) as f:
            return f[tree_name].num_entries == n_events
    except Exception:  # any unreadable file is simply generated again
        log.warning("%s: unreadable, generating it again", path)
        return False


def remove_stale(directory: Path) -> None:
    """Delete generated files of another request (sample folders' ROOT and temporary files)."""
    for sub in directory.iterdir():
        if sub.is_dir() and _SAMPLE_DIR.match(sub.name):
            for f in sub.iterdir():
                if f.suffix == ".root" and f.is_file():
                    f.unlink()
            with contextlib.suppress(OSError):
                sub.rmdir()


def remove_temporaries(directory: Path) -> None:
    for f in directory.glob("*/.tmp-*"):
        with contextlib.suppress(OSError):
            f.unlink()


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One generator per dataset folder at a time (other processes wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_disk_space(directory: Path, n_events: int) -> None:
    need = n_events * BYTES_PER_EVENT_ESTIMATE
    free = shutil.disk_usage(directory).free
    if need > free:
        raise ConfigError(
            f"{directory}: generating {n_events:,} events needs about {need / 1e9:.1f} GB, only "
            f"{free / 1e9:.1f} GB are free; choose another --output folder or a smaller preset"
        )
