"""The dataset cache's file handling: leftover files of an interrupted or another request, the
per-folder lock, the disk-space check, and the cache rule itself (:func:`is_complete`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import uproot

from utils.datasets.embedded.schema import TREE_NAME
from utils.errors import ConfigError

log = logging.getLogger(__name__)

FILESET_NAME = "fileset.json"
MANIFEST_NAME = "manifest.json"
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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(directory: Path, key: str, relpaths: Iterable[str]) -> bool:
    """The cache rule: True when ``directory`` holds the complete dataset of the request ``key``
    with the files ``relpaths`` (see :mod:`utils.datasets.embedded.dataset`)."""
    manifest = read_json(directory / MANIFEST_NAME)
    if manifest is None or not (directory / FILESET_NAME).is_file():
        return False
    if not manifest.get("complete") or manifest.get("key") != key:
        return False
    files = manifest.get("files", {})
    for relpath in relpaths:
        path = directory / relpath
        recorded = files.get(relpath, {})
        if not path.is_file() or path.stat().st_size != recorded.get("bytes"):
            return False
    return True
