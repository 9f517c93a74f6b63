"""Checks of the input files before processing, and the policy for bad ones.

``fail`` (default): the first bad file stops the run with an :class:`InputFileError` that names
the file, the problem and what to do. ``skip``: bad files (and, during processing, unreadable
chunks) are left out, a report says which and why and how many events were lost, and the
normalisation uses the events actually processed.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from utils.datasets.urls import configure_https_trust, configure_xrootd_client, is_remote
from utils.errors import ConfigError, InputFileError
from utils.processing.selection import READ_BRANCHES

log = logging.getLogger(__name__)

POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class BadInput:
    """One file (or chunk of a file) left out of a run."""

    sample: str
    path: str
    problem: str
    events_lost: int
    entry_start: int | None = None
    entry_stop: int | None = None


@dataclass(frozen=True)
class FileInfo:
    """What the input check read from a usable file's metadata, once: coffea's preprocessing
    (``numentries``, ``uuid``) and the size metrics use it instead of opening the file again."""

    entries: int
    uuid: bytes
    branch_bytes: dict[str, int]  # compressed bytes of each analysis branch
    file_bytes: int | None  # size on disk; None for a remote file


@dataclass
class InputReport:
    """What was left out of a run and why; goes into the outputs and the metrics. ``files``: the
    :class:`FileInfo` of every usable file, by path (not part of :meth:`to_dict`)."""

    policy: str
    bad: list[BadInput] = field(default_factory=list)
    files: dict[str, FileInfo] = field(default_factory=dict)

    def lost_by_sample(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.bad:
            out[b.sample] = out.get(b.sample, 0) + b.events_lost
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "n_bad": len(self.bad),
            "events_lost": self.lost_by_sample(),
            "bad": [asdict(b) for b in self.bad],
        }


def remote_problem(err: BaseException) -> str | None:
    """The named outcome of a failed remote read (root:// or http(s)), or None if it is not one."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if "certificate verify failed" in low or "certificateerror" in low:
        return (
            f"the server's TLS certificate is not trusted ({text.strip()}); set AGC_CA_FILE to a PEM file "
            "of the CA that signed it"
        )
    if isinstance(err, FileNotFoundError) or "no such file" in low or "[3011]" in low or " 404" in low:
        return "file not found on the server"
    if "permission denied" in low or "[3010]" in low or " 403" in low or "unauthorized" in low:
        return "permission denied by the server"
    if "operation expired" in low or "timeout" in low or "timed out" in low:
        return f"no answer from the server within the read timeout ({text.strip()})"
    if "reset by peer" in low or "connectionreseterror" in low:
        return f"connection to the server lost ({text.strip()})"
    if (
        "connection refused" in low
        or "connection error" in low
        or "cannot connect" in low
        or "connect call failed" in low
    ):
        return f"server not reachable ({text.strip()})"
    if "reset" in low or "socket error" in low or "disconnected" in low or "operation on closed file" in low:
        return f"connection to the server lost ({text.strip()})"
    return None


def check_file(
    path: str,
    treename: str = "events",
    expected_entries: int | None = None,
    timeout_s: float = 30,
    required: Sequence[str] = READ_BRANCHES,
    floating: bool = True,
) -> str | None:
    """The problem with one input file, or None if it is usable (see :func:`inspect_file`)."""
    problem = inspect_file(path, treename, expected_entries, timeout_s, required, floating)
    return problem if isinstance(problem, str) else None


def inspect_file(
    path: str,
    treename: str = "events",
    expected_entries: int | None = None,
    timeout_s: float = 30,
    required: Sequence[str] = READ_BRANCHES,
    floating: bool = True,
) -> str | FileInfo:
    """The problem with one input file, or its :class:`FileInfo` if it is usable. Reads only
    metadata, once; a remote file (root://, http(s)://) gets at most ``timeout_s`` per request.
    ``required``: the branches the analysis reads; with ``floating`` each must be a jagged
    floating-point array (the ntuples' analysis branches). A local path that is not a regular file
    (a FIFO, a device, a folder) is refused before it is opened."""
    if "://" not in path:
        try:
            mode = Path(path).stat().st_mode
        except FileNotFoundError:
            return "file not found"
        except OSError as err:
            return f"cannot stat the file ({err.strerror})"
        if not stat.S_ISREG(mode):
            return "not a regular file (a FIFO, device or folder); give the path of a ROOT file"
    try:
        f = uproot.open(path, timeout=timeout_s)
    except Exception as err:  # uproot raises many types for non-ROOT or truncated files
        if is_remote(path):
            named = remote_problem(err)
            if named is not None:
                return named
        if isinstance(err, FileNotFoundError):
            return "file not found"
        return f"not a readable ROOT file ({type(err).__name__}: {err})"
    with f:
        size = f.file.source.num_bytes
        if size is not None and f.file.fEND > size:
            return f"truncated: the header says {f.file.fEND} bytes, the file has {size}"
        try:
            tree = f[treename]
        except Exception:
            keys = sorted({k.split(";")[0] for k in f.keys(recursive=False)})
            return f"no tree {treename!r} (the file holds {keys[:10]})"
        if not isinstance(tree, uproot.behaviors.TTree.TTree):
            return f"{treename!r} is not a TTree ({type(tree).__name__})"
        missing = [b for b in required if b not in tree]
        if missing:
            return f"missing branch(es) the analysis needs: {missing}"
        for b in required if floating else ():
            interp = tree[b].interpretation
            content = getattr(interp, "content", None)
            dtype = getattr(content, "from_dtype", None)
            if not isinstance(interp, uproot.interpretation.jagged.AsJagged) or dtype is None:
                return f"branch {b!r} has an unexpected type {tree[b].typename!r} (expected a jagged float array)"
            if np.dtype(dtype).kind != "f":
                return f"branch {b!r} has dtype {np.dtype(dtype)} (expected floating point)"
        if expected_entries is not None and tree.num_entries != expected_entries:
            return (
                f"holds {tree.num_entries} entries but the dataset description says {expected_entries} "
                "(a truncated or replaced file?)"
            )
        return FileInfo(
            int(tree.num_entries),
            bytes(f.file.fUUID),
            {b: int(tree[b].compressed_bytes) for b in required},
            None if "://" in path else size,
        )


def preflight(
    fileset: dict[str, dict[str, Any]],
    policy: str = "fail",
    expected_entries: dict[str, int] | None = None,
    threads: int = 8,
    timeout_s: float = 30,
    *,
    required: Sequence[str] = READ_BRANCHES,
    floating: bool = True,
) -> tuple[dict[str, dict[str, Any]], InputReport]:
    """Check every file of a fileset; return the usable fileset and the report.

    With ``policy="fail"`` the first problem raises :class:`InputFileError`; with ``"skip"`` bad
    files are dropped and their events subtracted from the sample's ``nevts``.
    ``expected_entries`` maps file paths to the event counts of the dataset description;
    ``timeout_s`` bounds each request to a remote file.
    ``required`` and ``floating`` as for :func:`check_file`.
    """
    if policy not in POLICIES:
        raise ConfigError(f"ON_BAD_INPUT={policy!r}: allowed {list(POLICIES)}")
    expected_entries = expected_entries or {}
    items = [(s, p, t) for s, e in fileset.items() for p, t in e["files"].items()]
    if any(is_remote(p) for _, p, _ in items):
        configure_xrootd_client(timeout_s)
        configure_https_trust()
    with ThreadPoolExecutor(max(1, min(threads, len(items)))) as pool:
        problems = list(
            pool.map(
                lambda it: inspect_file(it[1], it[2], expected_entries.get(it[1]), timeout_s, required, floating),
                items,
            )
        )
    report = InputReport(policy)
    clean = {s: {**e, "files": dict(e["files"]), "metadata": dict(e["metadata"])} for s, e in fileset.items()}
    for (sample, path, _), problem in zip(items, problems, strict=True):
        if isinstance(problem, FileInfo):
            report.files[path] = problem
            continue
        if policy == "fail":
            raise InputFileError(
                f"{path}: {problem}.\n  sample: {sample}\n  what to do: restore or replace the file, remove it "
                "from the dataset description, or rerun with ON_BAD_INPUT='skip' to leave it out "
                "(the normalisation then uses the events actually processed)"
            )
        lost = int(expected_entries.get(path, 0))
        report.bad.append(BadInput(sample, path, problem, lost))
        del clean[sample]["files"][path]
        clean[sample]["metadata"]["nevts"] -= lost
        log.warning("skipping %s (%s): %s; %d events lost", path, sample, problem, lost)
    for sample in [s for s, e in clean.items() if not e["files"]]:
        log.warning("sample %s has no usable file left", sample)
        del clean[sample]
    return clean, report
