"""The analysis configuration: loading, schema validation, semantic checks, typed access.

Every cut, working point, binning, systematic magnitude and feature list is defined once, in
``analysis_config.yml`` at the repository root, and read through :func:`load_analysis_config`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from utils.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ANALYSIS_CONFIG = REPO_ROOT / "analysis_config.yml"
_SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """Return a packaged JSON schema by file stem (``analysis_config``, ``metrics``, ...)."""
    with open(_SCHEMA_DIR / f"{name}.schema.json") as f:
        return json.load(f)


def _format_path(path) -> str:
    return "".join(f"[{p!r}]" for p in path) or "(top level)"


def validate_against_schema(data: Any, schema: dict[str, Any], source: str) -> None:
    """Validate ``data``; raise :class:`ConfigError` naming the source, the key path and the problem.

    All violations are reported at once, each with the path of the offending key.
    """
    import jsonschema  # imported here: it takes seconds, and workers never validate

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{source}: invalid configuration ({len(errors)} problem(s)):"]
        for err in errors:
            lines.append(f"  at {_format_path(err.absolute_path)}: {err.message}")
        raise ConfigError("\n".join(lines))


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


@dataclass(frozen=True)
class Region:
    name: str
    min_btags: int
    max_btags: int | None
    observable: str  # "ht" or "m_bjj"


@dataclass(frozen=True)
class FlatWeight:
    name: str
    magnitude: float
    processes: tuple[str, ...]


@dataclass(frozen=True)
class NanoAODCuts:
    """Object definitions of NanoAOD inputs (the AGC main line); pT in GeV. ``electron_cut_based``:
    the minimum ``Electron_cutBased`` (4 = tight, 0 = none); ``jet_id_mask``: the jet ID bits one of
    which must be set (4 = tight lepton veto, 0 = none)."""

    electron_pt_min: float
    electron_abs_eta_max: float
    electron_cut_based: int
    electron_sip3d_max: float
    muon_pt_min: float
    muon_abs_eta_max: float
    muon_tight_id: bool
    muon_sip3d_max: float
    muon_iso_max: float
    jet_pt_min: float
    jet_abs_eta_max: float
    jet_id_mask: int


@dataclass(frozen=True)
class AnalysisConfig:
    """Typed, validated view of ``analysis_config.yml``."""

    luminosity: float
    lepton_pt_min: float
    jet_pt_min: float
    btag_threshold: float
    jet_pt_max: float  # input sanity: a jet above this pT (GeV), or non-finite kinematics, is bad input
    n_leptons: int
    min_jets: int
    min_btags: int
    regions: tuple[Region, ...]
    hist_bins: int
    hist_low: float
    hist_high: float
    pt_scale_name: str
    pt_scale_factor: float
    pt_res_name: str
    pt_res_sigma: float
    pt_res_seed: int
    btag_name: str
    btag_n_jets: int
    btag_magnitude: float
    btag_pt_reference: float
    flat_weights: tuple[FlatWeight, ...]
    alternative_process: str
    alternative_variations: tuple[str, ...]
    pseudodata: tuple[tuple[str, str, float], ...]
    ml_signal_process: str
    ml_score_threshold: float
    ml_features: dict[str, tuple[str, ...]] = field(hash=False)
    nanoaod: NanoAODCuts | None = None
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    # -- derived names, one place ------------------------------------------------------------
    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise ConfigError(f"{self.source}: unknown region {name!r}; configured: {list(self.region_names)}")

    @property
    def jet_variations(self) -> tuple[str, ...]:
        """Jet-kinematic variations filled for nominal samples, nominal first."""
        return ("nominal", self.pt_scale_name, self.pt_res_name)

    def weight_variations(self, process: str) -> tuple[str, ...]:
        """Event-weight variation names (with ``_up``/``_down``) that apply to a nominal sample."""
        names = [f"{self.btag_name}_{i}_{d}" for i in range(self.btag_n_jets) for d in ("up", "down")]
        for fw in self.flat_weights:
            if process in fw.processes:
                names += [f"{fw.name}_up", f"{fw.name}_down"]
        return tuple(names)

    @property
    def loosest_jet_pt(self) -> float:
        """A jet pT cut on the unvaried pT that keeps every jet any variation could select.

        Scale variations move pT by a fixed factor; resolution smearing is bounded at 5 sigma
        (the smearing factors are clipped to that range where they are drawn).
        """
        max_factor = max(1.0, self.pt_scale_factor, 1.0 + 5.0 * self.pt_res_sigma)
        return self.jet_pt_min / max_factor


DEFAULT_JET_PT_MAX = 1.0e5  # GeV: far above any 13 TeV jet, far below a fixed-point overflow


def _build(data: dict[str, Any], source: str) -> AnalysisConfig:
    obj, sel, syst = data["objects"], data["event_selection"], data["systematics"]
    regions = tuple(
        Region(r["name"], int(r["min_btags"]), r.get("max_btags"), r["observable"]) for r in data["regions"]
    )
    cfg = AnalysisConfig(
        luminosity=float(data["luminosity"]),
        lepton_pt_min=float(obj["lepton_pt_min"]),
        jet_pt_min=float(obj["jet_pt_min"]),
        btag_threshold=float(obj["btag_threshold"]),
        jet_pt_max=float(obj.get("jet_pt_max", DEFAULT_JET_PT_MAX)),
        n_leptons=int(sel["n_leptons"]),
        min_jets=int(sel["min_jets"]),
        min_btags=int(sel["min_btags"]),
        regions=regions,
        hist_bins=int(data["histogram"]["bins"]),
        hist_low=float(data["histogram"]["low"]),
        hist_high=float(data["histogram"]["high"]),
        pt_scale_name=syst["jet_pt_scale"]["name"],
        pt_scale_factor=float(syst["jet_pt_scale"]["factor"]),
        pt_res_name=syst["jet_pt_resolution"]["name"],
        pt_res_sigma=float(syst["jet_pt_resolution"]["sigma"]),
        pt_res_seed=int(syst["jet_pt_resolution"]["seed"]),
        btag_name=syst["btag"]["name"],
        btag_n_jets=int(syst["btag"]["n_jets"]),
        btag_magnitude=float(syst["btag"]["magnitude"]),
        btag_pt_reference=float(syst["btag"]["pt_reference"]),
        flat_weights=tuple(
            FlatWeight(w["name"], float(w["magnitude"]), tuple(w["processes"])) for w in syst["flat_weights"]
        ),
        alternative_process=syst["alternative_samples"]["process"],
        alternative_variations=tuple(syst["alternative_samples"]["variations"]),
        pseudodata=tuple((p["process"], p["variation"], float(p["weight"])) for p in data["pseudodata"]),
        ml_signal_process=data["ml"]["signal_process"],
        ml_score_threshold=float(data["ml"]["score_threshold"]),
        ml_features={k: tuple(v) for k, v in data["ml"]["features"].items()},
        nanoaod=_nanoaod_cuts(data["nanoaod"]) if "nanoaod" in data else None,
        source=source,
        raw=data,
    )
    _semantic_checks(cfg)
    return cfg


def _nanoaod_cuts(data: dict[str, Any]) -> NanoAODCuts:
    e, mu, jet = data["electron"], data["muon"], data["jet"]
    return NanoAODCuts(
        electron_pt_min=float(e["pt_min"]),
        electron_abs_eta_max=float(e["abs_eta_max"]),
        electron_cut_based=int(e["cut_based"]),
        electron_sip3d_max=float(e["sip3d_max"]),
        muon_pt_min=float(mu["pt_min"]),
        muon_abs_eta_max=float(mu["abs_eta_max"]),
        muon_tight_id=bool(mu["tight_id"]),
        muon_sip3d_max=float(mu["sip3d_max"]),
        muon_iso_max=float(mu["iso_max"]),
        jet_pt_min=float(jet["pt_min"]),
        jet_abs_eta_max=float(jet["abs_eta_max"]),
        jet_id_mask=int(jet["jet_id_mask"]),
    )


def _semantic_checks(cfg: AnalysisConfig) -> None:
    src = cfg.source
    names = cfg.region_names
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: at ['regions']: region names must be unique, got {list(names)}")
    for i, r in enumerate(cfg.regions):
        if r.max_btags is not None and r.max_btags < r.min_btags:
            raise ConfigError(
                f"{src}: at ['regions'][{i}]: max_btags ({r.max_btags}) is below min_btags ({r.min_btags})"
            )
        if r.min_btags < cfg.min_btags:
            raise ConfigError(
                f"{src}: at ['regions'][{i}]['min_btags']: {r.min_btags} is looser than the event selection's "
                f"min_btags ({cfg.min_btags}); the region could never be filled as configured"
            )
    for key, value in (
        ("['luminosity']", cfg.luminosity),
        ("['histogram']['low']", cfg.hist_low),
        ("['histogram']['high']", cfg.hist_high),
        ("['objects']['jet_pt_max']", cfg.jet_pt_max),
    ):
        if not math.isfinite(value):
            raise ConfigError(f"{src}: at {key}: expected a finite number, got {value}")
    if cfg.luminosity <= 0:
        raise ConfigError(f"{src}: at ['luminosity']: must be positive, got {cfg.luminosity}")
    if cfg.hist_high <= cfg.hist_low:
        raise ConfigError(f"{src}: at ['histogram']: high ({cfg.hist_high}) must exceed low ({cfg.hist_low})")
    for region in cfg.ml_features:
        if region not in names:
            raise ConfigError(f"{src}: at ['ml']['features'][{region!r}]: no such region; allowed: {list(names)}")
    needs_trijet = {"m_bjj", "trijet_mean_delta_r"}
    for region, feats in cfg.ml_features.items():
        if needs_trijet & set(feats) and cfg.region(region).min_btags < 1:
            raise ConfigError(f"{src}: at ['ml']['features'][{region!r}]: trijet features need a b-tagged jet")
    reserved = {"nominal", cfg.pt_scale_name, cfg.pt_res_name, *cfg.alternative_variations}
    weight_names = {cfg.btag_name, *(w.name for w in cfg.flat_weights)}
    clash = reserved & weight_names
    if clash:
        raise ConfigError(f"{src}: at ['systematics']: variation names used twice: {sorted(clash)}")


def parse_analysis_config(data: Any, source: str = "<analysis configuration>") -> AnalysisConfig:
    """Validate a configuration given as data (a dict) and return it typed."""
    validate_against_schema(data, load_schema("analysis_config"), source)
    return _build(data, source)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> AnalysisConfig:
    return parse_analysis_config(read_yaml(path), source=path)


def load_analysis_config(path: str | Path | None = None) -> AnalysisConfig:
    """Load and validate the analysis configuration (default: ``analysis_config.yml``)."""
    path = Path(path) if path is not None else DEFAULT_ANALYSIS_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: analysis configuration not found")
    return _load_cached(str(path.resolve()), path.stat().st_mtime)
