"""Histogram validation: compare a ``histograms.root`` with a reference JSON, bin by bin.

The reference (format: ``utils/schemas/histogram_reference.schema.json``, written by
:func:`dump_reference` / ``agc validate --dump-json``) holds each histogram's edges and its sumw
and sumw2 per bin, under- and overflow included. The comparison is exact up to float rounding
(``rtol``, default 1e-9) except for histograms the reference names in ``migrations``: those may
differ by up to ``max_events`` events that moved between bins or in or out of the histogram
(for variations where a one-event migration is legitimate, e.g. a smeared jet pT landing on the
other side of a cut after a change of floating-point summation order).

Every difference is reported (histogram, bin, expected, got); missing and extra histograms are
mismatches too.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from utils.config import load_schema, validate_against_schema
from utils.errors import ConfigError, InputFileError
from utils.io import sha256_file, write_text_atomic

log = logging.getLogger(__name__)

FORMAT = "agc-histogram-reference"
VERSION = 1
DEFAULT_RTOL = 1e-9
#: slack on the migration bounds, for the rounding of the event-weight estimate
_MIGRATION_SLACK = 1e-6


class HistogramContent(NamedTuple):
    """One histogram: edges per axis, sumw and sumw2 with flow bins (one extra bin each side)."""

    edges: tuple[np.ndarray, ...]
    sumw: np.ndarray
    sumw2: np.ndarray
    classname: str = ""


@dataclass(frozen=True)
class MigrationRule:
    pattern: str  # fnmatch pattern on the histogram name
    max_events: int
    reason: str = ""


@dataclass(frozen=True)
class Reference:
    histograms: dict[str, HistogramContent]
    rtol: float = DEFAULT_RTOL
    migrations: tuple[MigrationRule, ...] = ()
    source: str = ""

    def allowed_migrations(self, name: str) -> int:
        """How many migrated events the reference tolerates in histogram ``name`` (0: exact)."""
        return max((m.max_events for m in self.migrations if fnmatch.fnmatchcase(name, m.pattern)), default=0)


@dataclass(frozen=True)
class Mismatch:
    histogram: str
    bin: str  # bin label, or "-" for the whole histogram
    quantity: str  # sumw, sumw2, edges, missing, extra
    expected: Any = None
    got: Any = None

    def __str__(self) -> str:
        if self.quantity == "missing":
            return f"{self.histogram}: missing (in the reference, not in the file)"
        if self.quantity == "extra":
            return f"{self.histogram}: extra (in the file, not in the reference)"
        return f"{self.histogram} {self.bin} {self.quantity}: expected {self.expected!r}, got {self.got!r}"


@dataclass(frozen=True)
class ValidationReport:
    histograms_path: Path
    reference: str
    n_compared: int
    mismatches: tuple[Mismatch, ...]
    #: histograms that differed within their allowed migrations -> estimated number of events moved
    tolerated: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        head = f"{self.histograms_path}: {self.n_compared} histogram(s) compared with {self.reference}: " + (
            "all agree" if self.ok else f"{len(self.mismatches)} mismatch(es)"
        )
        if self.tolerated:
            head += (
                f"; within allowed migrations: {', '.join(f'{k} (~{v:.1f} events)' for k, v in self.tolerated.items())}"
            )
        return head


# -- reading ------------------------------------------------------------------------------------


def read_histogram_file(path: str | Path) -> dict[str, HistogramContent]:
    """Every histogram (TH1, TH2, TH3) of a ROOT file, by name; other objects are skipped."""
    import uproot

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: histograms file not found")
    out: dict[str, HistogramContent] = {}
    try:
        with uproot.open(path) as f:
            for name, classname in sorted(f.classnames(cycle=False).items()):
                if not classname.startswith(("TH1", "TH2", "TH3")):
                    log.debug("%s: skipping %s (%s), not a histogram", path, name, classname)
                    continue
                h = f[name]
                out[name] = HistogramContent(
                    tuple(np.asarray(axis.edges(), dtype=float) for axis in h.axes),
                    np.asarray(h.values(flow=True), dtype=float),
                    np.asarray(h.variances(flow=True), dtype=float),
                    classname,
                )
    except (OSError, ValueError) as err:
        raise InputFileError(f"{path}: cannot read histograms ({err})") from None
    return out


def reference_dict(
    histograms: Mapping[str, HistogramContent],
    *,
    migrations: Iterable[MigrationRule] = (),
    rtol: float = DEFAULT_RTOL,
    source: str | None = None,
    source_sha256: str | None = None,
) -> dict[str, Any]:
    """The reference JSON content for some histograms."""
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if source is not None:
        out["source"] = source
    if source_sha256 is not None:
        out["source_sha256"] = source_sha256
    out["rtol"] = rtol
    out["migrations"] = [
        {"pattern": m.pattern, "max_events": m.max_events, **({"reason": m.reason} if m.reason else {})}
        for m in migrations
    ]
    out["histograms"] = {
        name: {
            "classname": h.classname,
            "edges": [e.tolist() for e in h.edges],
            "sumw": h.sumw.tolist(),
            "sumw2": h.sumw2.tolist(),
        }
        for name, h in sorted(histograms.items())
    }
    return out


def reference_text(content: Mapping[str, Any]) -> str:
    """JSON text of a reference with one line per histogram (readable, diff-friendly)."""
    head = {k: v for k, v in content.items() if k != "histograms"}
    head_text = json.dumps(head, indent=1)
    lines = [f"  {json.dumps(name)}: {json.dumps(h)}" for name, h in content["histograms"].items()]
    return head_text[: -len("\n}")] + ',\n "histograms": {\n' + ",\n".join(lines) + "\n }\n}\n"


def dump_reference(
    histograms_path: str | Path,
    output_path: str | Path | None = None,
    *,
    migrations: Iterable[MigrationRule] = (),
    rtol: float = DEFAULT_RTOL,
) -> dict[str, Any]:
    """Write (atomically, if ``output_path``) and return the reference of a histograms file."""
    histograms_path = Path(histograms_path)
    content = reference_dict(
        read_histogram_file(histograms_path),
        migrations=migrations,
        rtol=rtol,
        source=histograms_path.name,
        source_sha256=sha256_file(histograms_path),
    )
    validate_against_schema(content, load_schema("histogram_reference"), f"reference of {histograms_path}")
    if output_path is not None:
        write_text_atomic(output_path, reference_text(content))
        log.info("wrote reference of %d histograms to %s", len(content["histograms"]), output_path)
    return content


def parse_reference(data: Any, source: str = "<histogram reference>") -> Reference:
    """Validate reference JSON content (schema and shapes) and return it typed."""
    validate_against_schema(data, load_schema("histogram_reference"), source)
    histograms: dict[str, HistogramContent] = {}
    for name, h in data["histograms"].items():
        edges = tuple(np.asarray(e, dtype=float) for e in h["edges"])
        shape = tuple(len(e) + 1 for e in edges)  # bins + under- and overflow
        sumw, sumw2 = np.asarray(h["sumw"], dtype=float), np.asarray(h["sumw2"], dtype=float)
        for key, arr in (("sumw", sumw), ("sumw2", sumw2)):
            if arr.shape != shape:
                raise ConfigError(
                    f"{source}: at ['histograms'][{name!r}][{key!r}]: shape {arr.shape} does not match the edges "
                    f"(expected {shape}: the bins plus under- and overflow)"
                )
        histograms[name] = HistogramContent(edges, sumw, sumw2, h.get("classname", ""))
    migrations = tuple(
        MigrationRule(m["pattern"], int(m["max_events"]), m.get("reason", "")) for m in data.get("migrations", [])
    )
    return Reference(histograms, float(data.get("rtol", DEFAULT_RTOL)), migrations, source)


def load_reference(path: str | Path) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: histogram reference not found; write one with `agc validate FILE --dump-json {path}`"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    return parse_reference(data, source=str(path))


# -- comparing ----------------------------------------------------------------------------------


def _bin_label(edges: tuple[np.ndarray, ...], index: tuple[int, ...]) -> str:
    parts = []
    for axis_edges, k in zip(edges, index, strict=True):
        n = len(axis_edges) - 1
        if k == 0:
            parts.append(f"underflow (< {axis_edges[0]:g})")
        elif k == n + 1:
            parts.append(f"overflow (>= {axis_edges[-1]:g})")
        else:
            parts.append(f"bin {k} [{axis_edges[k - 1]:g}, {axis_edges[k]:g})")
    return " x ".join(parts)


def _differs(expected: np.ndarray, got: np.ndarray, rtol: float) -> np.ndarray:
    return np.abs(got - expected) > rtol * np.maximum(np.abs(expected), np.abs(got))


def _event_weight(expected: HistogramContent, got: HistogramContent) -> float:
    """Largest per-bin sumw2/sumw of either histogram: the event weight for single-weight samples."""
    ratios = [h.sumw2[h.sumw != 0] / np.abs(h.sumw[h.sumw != 0]) for h in (expected, got) if np.any(h.sumw != 0)]
    return float(max((r.max() for r in ratios), default=0.0))


def _within_migrations(expected: HistogramContent, got: HistogramContent, max_events: int) -> tuple[bool, float]:
    """Can ``max_events`` events moving between bins, in or out explain the difference?

    Each moved event changes at most two bins by its weight ``w`` (sumw) and ``w**2`` (sumw2).
    Returns (allowed, estimated number of events moved).
    """
    w = _event_weight(expected, got)
    if w <= 0:
        return False, float("inf")
    slack = 1.0 + _MIGRATION_SLACK
    dsumw, dsumw2 = np.abs(got.sumw - expected.sumw), np.abs(got.sumw2 - expected.sumw2)
    allowed = (
        np.all(dsumw <= max_events * w * slack)
        and np.all(dsumw2 <= max_events * w**2 * slack)
        and dsumw.sum() <= 2 * max_events * w * slack
        and dsumw2.sum() <= 2 * max_events * w**2 * slack
    )
    # a move changes two bins by w, an event entering or leaving one bin by w
    return bool(allowed), float(max(dsumw.sum() / 2, dsumw.max()) / w)


def compare(
    candidate: Mapping[str, HistogramContent], reference: Reference, candidate_path: str | Path = ""
) -> ValidationReport:
    """Compare histograms with a reference; every difference becomes a :class:`Mismatch`."""
    mismatches: list[Mismatch] = []
    tolerated: dict[str, float] = {}
    names = sorted(set(candidate) | set(reference.histograms))
    for name in names:
        if name not in candidate:
            mismatches.append(Mismatch(name, "-", "missing"))
            continue
        if name not in reference.histograms:
            mismatches.append(Mismatch(name, "-", "extra"))
            continue
        exp, got = reference.histograms[name], candidate[name]
        same_edges = len(exp.edges) == len(got.edges) and all(
            e.shape == g.shape and not np.any(_differs(e, g, reference.rtol))
            for e, g in zip(exp.edges, got.edges, strict=False)
        )
        if not same_edges:
            mismatches.append(
                Mismatch(name, "-", "edges", [e.tolist() for e in exp.edges], [g.tolist() for g in got.edges])
            )
            continue
        bad = {q: _differs(getattr(exp, q), getattr(got, q), reference.rtol) for q in ("sumw", "sumw2")}
        if not any(b.any() for b in bad.values()):
            continue
        max_events = reference.allowed_migrations(name)
        if max_events:
            allowed, moved = _within_migrations(exp, got, max_events)
            if allowed:
                tolerated[name] = moved
                log.info(
                    "%s differs from the reference by ~%.1f migrated event(s), allowed: %d", name, moved, max_events
                )
                continue
        for quantity, mask in bad.items():
            for index in zip(*np.nonzero(mask), strict=True):
                index = tuple(int(i) for i in index)
                mismatches.append(
                    Mismatch(
                        name,
                        _bin_label(exp.edges, index),
                        quantity,
                        float(getattr(exp, quantity)[index]),
                        float(getattr(got, quantity)[index]),
                    )
                )
    return ValidationReport(Path(candidate_path), reference.source, len(names), tuple(mismatches), tolerated)


def validate_histograms(
    histograms_path: str | Path, reference_path: str | Path, extra_migrations: Iterable[MigrationRule] = ()
) -> ValidationReport:
    """Compare ``histograms_path`` with the reference JSON at ``reference_path``."""
    reference = load_reference(reference_path)
    extra = tuple(extra_migrations)
    if extra:
        reference = Reference(reference.histograms, reference.rtol, reference.migrations + extra, reference.source)
    report = compare(read_histogram_file(histograms_path), reference, histograms_path)
    (log.info if report.ok else log.warning)(report.summary())
    return report


def parse_migration_rule(text: str) -> MigrationRule:
    """``PATTERN=N`` (e.g. ``*_pt_res_up=1``) -> :class:`MigrationRule`."""
    pattern, sep, count = text.rpartition("=")
    if not sep or not pattern or not count.isdigit() or int(count) < 1:
        raise ConfigError(f"migration rule {text!r}: expected PATTERN=N with N >= 1, e.g. '*_pt_res_up=1'")
    return MigrationRule(pattern, int(count))
