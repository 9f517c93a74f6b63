"""Presets of the embedded dataset (``datasets/embedded/presets.yml``): loading, schema and
semantic validation, typed access, and the content hash that keys the generation cache."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT, read_yaml, validate_against_schema
from utils.datasets.embedded.processes import PROCESSES, get_process
from utils.datasets.fileset import CROSS_SECTIONS, load_cross_sections
from utils.errors import ConfigError

DEFAULT_PRESETS = REPO_ROOT / "datasets" / "embedded" / "presets.yml"

_POSITIVE_INT = {"type": "integer", "minimum": 1}
_COMPRESSION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "algorithm": {"enum": ["ZLIB"]},
        "level": {"type": "integer", "minimum": 1, "maximum": 9},
        "compressor": {"enum": ["isal", "zlib"]},
    },
}
_PRESET_BODY = {
    "seed": {"type": "integer", "minimum": 0},
    "events_per_basket": _POSITIVE_INT,
    "compression": _COMPRESSION,
}
PRESETS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "presets"],
    "properties": {
        "schema_version": {"const": 1},
        "defaults": {"type": "object", "additionalProperties": False, "properties": _PRESET_BODY},
        "presets": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["samples"],
                "properties": {
                    **_PRESET_BODY,
                    "description": {"type": "string"},
                    "samples": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["files", "events_per_file"],
                                "properties": {"files": _POSITIVE_INT, "events_per_file": _POSITIVE_INT},
                            },
                        },
                    },
                    "data": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["lumi_fraction"],
                        "properties": {
                            "enabled": {"type": "boolean"},
                            "lumi_fraction": {"type": "number", "exclusiveMinimum": 0},
                            "mu": {"type": "number", "minimum": 0},
                            "files": _POSITIVE_INT,
                            "preselection": {"enum": ["none", "loose"]},
                        },
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class SampleSpec:
    process: str
    variation: str
    files: int
    events_per_file: int

    @property
    def key(self) -> str:
        return f"{self.process}__{self.variation}"


@dataclass(frozen=True)
class DataSpec:
    enabled: bool
    lumi_fraction: float
    mu: float
    files: int
    #: "loose": generate only events that can pass the loose preselection (utils.datasets.embedded.preselection)
    preselection: str = "none"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seed: int
    events_per_basket: int
    compression_level: int
    compressor: str
    samples: tuple[SampleSpec, ...]
    data: DataSpec | None
    source: str

    @property
    def n_mc_events(self) -> int:
        return sum(s.files * s.events_per_file for s in self.samples)

    def content(self) -> dict[str, Any]:
        """Everything that determines the generated files (the cache key's input)."""
        return {
            "seed": self.seed,
            "events_per_basket": self.events_per_basket,
            "compression": [self.compression_level, self.compressor],
            "samples": [[s.process, s.variation, s.files, s.events_per_file] for s in self.samples],
            "data": None
            if self.data is None
            else [self.data.lumi_fraction, self.data.mu, self.data.files]
            + ([self.data.preselection] if self.data.preselection != "none" else []),
        }


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def process_cross_sections(path: Path = CROSS_SECTIONS) -> dict[str, float]:
    """Cross-sections (pb) of every registered process: the table, then ``ProcessSpec.xsec``
    for processes the table lacks (a new signal)."""
    xsecs = load_cross_sections(path)
    for name, spec in PROCESSES.items():
        if name not in xsecs and spec.xsec is not None:
            xsecs[name] = float(spec.xsec)
    return xsecs


def _build(name: str, body: dict[str, Any], defaults: dict[str, Any], source: str) -> Preset:
    merged = {**defaults, **body}
    compression = {"level": 1, "compressor": "isal", **defaults.get("compression", {}), **body.get("compression", {})}
    samples = []
    for process, variations in merged["samples"].items():
        try:
            spec = get_process(process)
        except ConfigError as err:
            raise ConfigError(f"{source}: at ['presets'][{name!r}]['samples']: {err}") from None
        for variation, size in variations.items():
            if variation not in spec.variations:
                raise ConfigError(
                    f"{source}: at ['presets'][{name!r}]['samples'][{process!r}]: unknown variation {variation!r}; "
                    f"defined for {process}: {sorted(spec.variations)}"
                )
            samples.append(SampleSpec(process, variation, int(size["files"]), int(size["events_per_file"])))
    data = None
    if "data" in merged:
        d = merged["data"]
        data = DataSpec(
            bool(d.get("enabled", True)),
            float(d["lumi_fraction"]),
            float(d.get("mu", 1.0)),
            int(d.get("files", 1)),
            str(d.get("preselection", "none")),
        )
    return Preset(
        name=name,
        description=" ".join(str(merged.get("description", "")).split()),
        seed=int(merged.get("seed", 2015)),
        events_per_basket=int(merged.get("events_per_basket", 50_000)),
        compression_level=int(compression["level"]),
        compressor=str(compression["compressor"]),
        samples=tuple(samples),
        data=data,
        source=source,
    )


def load_presets(path: str | Path | None = None) -> dict[str, Preset]:
    """All presets of a presets file, validated (schema, then processes and variations)."""
    path = Path(path) if path is not None else DEFAULT_PRESETS
    raw = read_yaml(path)
    validate_against_schema(raw, PRESETS_SCHEMA, str(path))
    defaults = raw.get("defaults", {})
    return {name: _build(name, body, defaults, str(path)) for name, body in raw["presets"].items()}


def get_preset(name: str, path: str | Path | None = None) -> Preset:
    presets = load_presets(path)
    if name not in presets:
        raise ConfigError(f"{path or DEFAULT_PRESETS}: no preset {name!r}; available: {sorted(presets)}")
    return presets[name]


def data_file_sizes(n_total: int, files: int) -> list[int]:
    base, rest = divmod(n_total, files)
    return [base + (1 if i < rest else 0) for i in range(files) if base + (1 if i < rest else 0) > 0]


def expected_data_yields(lumi: float, mu: float, xsecs: dict[str, float]) -> list[tuple[str, float]]:
    """Expected events per process in data of luminosity ``lumi`` (/pb): xsec x lumi, signal
    processes (``is_signal``) scaled by ``mu``; processes registered with include_in_data only."""
    out = []
    for name, spec in PROCESSES.items():
        if not spec.include_in_data:
            continue
        if name not in xsecs:
            raise ConfigError(
                f"{CROSS_SECTIONS}: no cross-section for process {name!r}; add it there or give the process an xsec"
            )
        out.append((name, xsecs[name] * lumi * (mu if spec.is_signal else 1.0)))
    if not any(v > 0 for _, v in out) or not all(math.isfinite(v) for _, v in out):
        raise ConfigError("the data mixture has no events: check lumi_fraction and mu")
    return out
