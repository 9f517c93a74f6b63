"""Atomic output helpers: every output is written to a temporary name beside its target and
moved into place only when complete, so a crash never leaves a half-written file that looks done."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    On an exception the temporary file is removed and ``target`` is left untouched.
    The temporary name keeps the target's suffix (``.root``, ``.json``) so writers that look at
    the extension behave, and starts with ``.tmp-`` so it never matches an output glob.
    ``mode`` is the permission of the finished file (0o600 for secrets).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".tmp-{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        tmp_path.chmod(mode)  # mkstemp creates 0600; outputs are ordinary readable files by default
        tmp_path.replace(target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | Path, text: str, mode: int = 0o644) -> Path:
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json_atomic(target: str | Path, data: Any, indent: int | None = 2, mode: int = 0o644) -> Path:
    text = json.dumps(data, indent=indent, sort_keys=False, default=_json_default) + "\n"
    return write_text_atomic(target, text, mode=mode)


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON content: dataclass instances as dicts, tuples as lists, and
    non-finite numbers (NaN, an infinite significance) as None, since strict JSON has none."""
    import dataclasses
    import math

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_figure(fig: Any, path: str | Path | None, *, dpi: float | None = 110, png_compression: int = 6) -> Any:
    """Write a matplotlib figure atomically to ``path`` (format from the suffix, PNG without one)
    when a path is given; return the figure. ``png_compression``: zlib level of a PNG (0-9;
    1 writes about three times faster than the default 6, files about 1.5 times larger)."""
    if path is not None:
        fmt = Path(path).suffix.lstrip(".") or "png"
        extra = {"pil_kwargs": {"compress_level": png_compression}} if fmt == "png" else {}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, **extra)
    return fig
