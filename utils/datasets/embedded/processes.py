"""The physics processes: hard-process builders and the registry that names them.

A process is one :class:`ProcessSpec` in :data:`PROCESSES`: a builder function, its physics
parameters, and per-variation overrides of physics and detector parameters. A new signal (say a
Z' -> ttbar resonance) is one more entry, e.g.::

    register_process(ProcessSpec(
        name="zprime_ttbar", builder=build_top_pair,
        params={**TTBAR_PARAMS, "production": "resonance", "resonance_mass": 1500.0,
                "resonance_width": 45.0},
        xsec=1.0, include_in_data=False))

and can then be used in presets. Worker processes import this module, so a process used with
``--workers > 1`` must be registered here (at import), not only in the calling session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from utils.datasets.embedded.kinematics import (
    P4,
    back_to_back,
    breit_wigner,
    isotropic_directions,
    power_law,
    two_body_momentum,
)
from utils.datasets.embedded.particles import (
    M_B,
    M_TOP,
    M_W,
    W_TOP,
    W_W,
    HardEvent,
    Origin,
    ParticleTable,
    decay_top,
    decay_w,
)
from utils.errors import ConfigError

log = logging.getLogger(__name__)

PT_MAX = 800.0  # GeV: upper end of the radiated-parton spectra (keeps their moments finite)

Builder = Callable[[np.random.Generator, int, Mapping[str, Any]], HardEvent]


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def _ragged_event_index(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def _rank_in_event(event: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal (sorted) event indices."""
    starts = np.searchsorted(event, event, side="left")
    return np.arange(len(event)) - starts


def _flavoured_pdg(rng: np.random.Generator, flavour: np.ndarray) -> np.ndarray:
    """pdgId for a parton of hadron flavour 5, 4 or 0 (light: a gluon or a u/d/s quark)."""
    n = len(flavour)
    light = np.where(rng.uniform(size=n) < 0.6, 21, rng.integers(1, 4, n))
    sign = np.where(rng.uniform(size=n) < 0.5, 1, -1)
    return np.where(flavour > 0, flavour * sign, light).astype(np.int32)


def extra_partons(
    rng: np.random.Generator,
    counts: np.ndarray,
    pt_min: float,
    index: float,
    eta_sigma: float,
    f_b: float,
    f_c: float,
    origin: Origin,
) -> ParticleTable:
    """Radiated partons: ``counts`` per event, power-law pT, Gaussian eta, flavour fractions."""
    event = _ragged_event_index(counts)
    n = len(event)
    pt = power_law(rng, n, pt_min, index, PT_MAX)
    eta = rng.normal(0.0, eta_sigma, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    u = rng.uniform(size=n)
    flavour = np.where(u < f_b, 5, np.where(u < f_b + f_c, 4, 0))
    pdg = _flavoured_pdg(rng, flavour)
    mass = np.where(flavour == 5, M_B, np.where(flavour == 4, 1.5, 0.0))
    return ParticleTable.make(event, P4.from_pt_eta_phi_m(pt, eta, phi, mass), pdg, 23, origin)


def transverse_sum(table: ParticleTable, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.bincount(table.event, weights=table.p4.px, minlength=n),
        np.bincount(table.event, weights=table.p4.py, minlength=n),
    )


def pair_at_rest(
    rng: np.random.Generator, n: int, m1: np.ndarray, m2: np.ndarray, p: Mapping[str, Any]
) -> tuple[P4, P4]:
    """Two back-to-back objects in their rest frame.

    ``production == "continuum"``: object 1 has transverse momentum ~ Gamma(pt_shape, pt_scale)
    and rapidity +-(ystar_mean + ystar_sigma * N(0,1)) in the pair frame (QCD-like top pT
    spectrum). ``"resonance"``: the pair mass is Breit-Wigner(resonance_mass, resonance_width),
    the decay isotropic.
    """
    if p["production"] == "resonance":
        lo = m1 + m2 + 1.0
        m = np.maximum(breit_wigner(rng, n, p["resonance_mass"], p["resonance_width"], 10.0), lo)
        ux, uy, uz = isotropic_directions(rng, n)
        return back_to_back(two_body_momentum(m, m1, m2), m1, m2, ux, uy, uz)
    pt = rng.gamma(p["pt_shape"], p["pt_scale"], n)
    sign = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
    ystar = sign * (p["ystar_mean"] + p["ystar_sigma"] * rng.standard_normal(n))
    phi = rng.uniform(-np.pi, np.pi, n)
    mt = np.sqrt(pt**2 + m1**2)
    pz = mt * np.sinh(ystar)
    pstar = np.sqrt(pt**2 + pz**2)
    return back_to_back(pstar, m1, m2, pt * np.cos(phi) / pstar, pt * np.sin(phi) / pstar, pz / pstar)


def to_lab(rng: np.random.Generator, a: P4, b: P4, recoil_px, recoil_py, y_sigma: float) -> tuple[P4, P4]:
    """Boost a pair from its rest frame to a lab frame where the pair has transverse momentum
    (recoil_px, recoil_py) (balancing the radiation) and rapidity ~ N(0, y_sigma)."""
    n = len(a)
    system = P4.from_pt_y_phi_m(
        np.hypot(recoil_px, recoil_py),
        rng.normal(0.0, y_sigma, n),
        np.arctan2(recoil_py, recoil_px),
        a.e + b.e,
    )
    bx, by, bz = system.velocity()
    return a.boost(bx, by, bz), b.boost(bx, by, bz)


def _radiation(rng: np.random.Generator, n: int, p: Mapping[str, Any]) -> ParticleTable:
    counts = rng.poisson(p["isr_mean"], n)
    return extra_partons(
        rng,
        counts,
        p["isr_pt_min"],
        p["isr_index"],
        p["isr_eta_sigma"],
        p["isr_f_b"],
        p["isr_f_c"],
        Origin.RADIATION,
    )


def _top_masses(rng: np.random.Generator, n: int) -> np.ndarray:
    return breit_wigner(rng, n, M_TOP, W_TOP, 15.0)


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------
def build_top_pair(rng: np.random.Generator, n: int, p: Mapping[str, Any]) -> HardEvent:
    """t t-bar (+ ISR), both tops decayed, W decays with the real branching fractions."""
    event = np.arange(n, dtype=np.int64)
    isr = _radiation(rng, n, p)
    rx, ry = transverse_sum(isr, n)
    top, antitop = pair_at_rest(rng, n, _top_masses(rng, n), _top_masses(rng, n), p)
    top, antitop = to_lab(rng, top, antitop, -rx, -ry, p["y_sigma"])
    lep = bool(p.get("leptonic_only", False))
    f1, r1 = decay_top(rng, event, top, np.ones(n, np.int8), lep)
    f2, r2 = decay_top(rng, event, antitop, -np.ones(n, np.int8), lep)
    return HardEvent(n, ParticleTable.concatenate([f1, f2, isr]), ParticleTable.concatenate([r1, r2]))


def build_single_top(rng: np.random.Generator, n: int, p: Mapping[str, Any]) -> HardEvent:
    """Single top: ``channel`` s (t + b), t (t + forward light quark), tW (t + W); plus a
    spectator b with probability ``spectator_b_prob`` (4-flavour scheme)."""
    event = np.arange(n, dtype=np.int64)
    channel = p["channel"]
    sign = np.where(rng.uniform(size=n) < p["top_fraction"], 1, -1).astype(np.int8)
    # 4-flavour spectator b (t-channel always; tW in part: g b -> t W with g -> b b-bar)
    has_spectator = rng.uniform(size=n) < p["spectator_b_prob"]
    spectator = extra_partons(
        rng,
        has_spectator.astype(np.int64),
        p["spectator_pt_min"],
        p["spectator_index"],
        p["spectator_eta_sigma"],
        1.0,
        0.0,
        Origin.RECOIL,
    )
    # a b-bar accompanies a top, a b an anti-top
    spectator = ParticleTable.make(spectator.event, spectator.p4, -5 * sign[spectator.event], 23, Origin.RECOIL)
    extra = [_radiation(rng, n, p), spectator]
    radiation = ParticleTable.concatenate(extra)
    rx, ry = transverse_sum(radiation, n)
    partner_mass = {
        "s": np.full(n, M_B),
        "t": np.zeros(n),
        "tW": breit_wigner(rng, n, M_W, W_W, 10.0),
    }[channel]
    top, partner = pair_at_rest(rng, n, _top_masses(rng, n), partner_mass, p)
    top, partner = to_lab(rng, top, partner, -rx, -ry, p["y_sigma"])
    lep = bool(p.get("leptonic_only", False))
    f_top, r_top = decay_top(rng, event, top, sign, lep)
    records = [r_top]
    if channel == "tW":
        f_partner, r_w = decay_w(rng, event, partner, -sign, lep)
        records.append(r_w)
    else:
        pdg = -5 * sign if channel == "s" else np.where(rng.uniform(size=n) < 0.5, 1, 2) * sign
        f_partner = ParticleTable.make(event, partner, pdg, 23, Origin.RECOIL)
        records.append(f_partner)
    final = ParticleTable.concatenate([f_top, f_partner, radiation])
    return HardEvent(n, final, ParticleTable.concatenate(records))


def w_jets_multiplicity(rng: np.random.Generator, n: int, p: Mapping[str, Any]) -> np.ndarray:
    """The number of jets of each W+jets event: geometric (Berends scaling), the builder's first draw."""
    return rng.geometric(1.0 - p["jet_ratio"], n) - 1


def build_w_jets(rng: np.random.Generator, n: int, p: Mapping[str, Any], counts: np.ndarray | None = None) -> HardEvent:
    """W -> l nu plus a geometric (Berends-scaling) number of power-law jets; heavy flavour
    per event: W+bb, W+cc (two jets; probability f x (n_jets - 1)) or W+c (one jet, f_c), the
    rest light. The W balances the jets. ``counts``: the jets per event, drawn beforehand with
    :func:`w_jets_multiplicity` (the builder's own first draw otherwise)."""
    counts = w_jets_multiplicity(rng, n, p) if counts is None else np.asarray(counts, dtype=np.int64)
    jets = extra_partons(rng, counts, p["jet_pt_min"], p["jet_index"], p["jet_eta_sigma"], 0.0, 0.0, Origin.RADIATION)
    rank = _rank_in_event(jets.event)
    # heavy flavour per event: gluon splitting grows with the number of jets
    pairs = np.maximum(counts - 1, 0)
    p_bb = np.minimum(p["f_bb"] * pairs, 0.4)
    p_cc = np.minimum(p["f_cc"] * pairs, 0.4)
    p_c = np.where(counts >= 1, p["f_c"], 0.0)
    u = rng.uniform(size=n)
    category = np.select([u < p_bb, u < p_bb + p_cc, u < p_bb + p_cc + p_c], [3, 2, 1], 0)[jets.event]
    flavour = np.select(
        [(category == 3) & (rank < 2), (category == 2) & (rank < 2), (category == 1) & (rank == 0)], [5, 4, 4], 0
    )
    mass = np.where(flavour == 5, M_B, np.where(flavour == 4, 1.5, 0.0))
    jet_p4 = P4.from_pt_eta_phi_m(jets.p4.pt, jets.p4.eta, jets.p4.phi, mass)
    jets = ParticleTable.make(jets.event, jet_p4, _flavoured_pdg(rng, flavour), 23, Origin.RADIATION)
    rx, ry = transverse_sum(jets, n)
    kt = rng.normal(0.0, p["w_kt_sigma"], (2, n))
    m_w = breit_wigner(rng, n, M_W, W_W, 10.0)
    w = P4.from_pt_y_phi_m(
        np.hypot(kt[0] - rx, kt[1] - ry), rng.normal(0.0, p["y_sigma"], n), np.arctan2(kt[1] - ry, kt[0] - rx), m_w
    )
    charge = np.where(rng.uniform(size=n) < p["w_plus_fraction"], 1, -1)
    event = np.arange(n, dtype=np.int64)
    w_final, w_record = decay_w(rng, event, w, charge, leptonic_only=True)
    return HardEvent(n, ParticleTable.concatenate([w_final, jets]), w_record)


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variation:
    """Overrides of a process's physics parameters and of the detector parameters."""

    physics: Mapping[str, Any] = field(default_factory=dict)
    detector: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Multiplicity:
    """How a builder draws its number of jet partons per event (its first draw), so that a
    preselected sample can skip the events that cannot have enough jets before building them:
    ``draw(rng, n, params)`` gives the counts, which the builder takes as ``counts=``; at most
    ``other_jets`` further jets per event come from the hard process (hadronic taus)."""

    draw: Callable[[np.random.Generator, int, Mapping[str, Any]], np.ndarray]
    other_jets: int


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    builder: Builder
    params: Mapping[str, Any]
    variations: Mapping[str, Variation] = field(default_factory=lambda: {"nominal": Variation()})
    description: str = ""
    xsec: float | None = None  # pb; only for processes missing from datasets/cross_sections.json
    include_in_data: bool = True  # part of the generated "data" mixture
    is_signal: bool = False  # scaled by the signal strength mu in the data mixture
    multiplicity: Multiplicity | None = None  # see Multiplicity (preselected data generation)

    def parameters(self, variation: str) -> dict[str, Any]:
        var = self.variation(variation)
        unknown = set(var.physics) - set(self.params)
        if unknown:
            raise ConfigError(
                f"process {self.name!r}, variation {variation!r}: unknown physics parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.params)}"
            )
        return {**self.params, **var.physics}

    def variation(self, variation: str) -> Variation:
        if variation not in self.variations:
            raise ConfigError(
                f"process {self.name!r} has no variation {variation!r}; defined: {sorted(self.variations)}"
            )
        return self.variations[variation]


_RADIATION_DEFAULTS: dict[str, Any] = {
    "isr_mean": 1.1,  # mean number of radiated partons above isr_pt_min
    "isr_pt_min": 15.0,
    "isr_index": 2.9,  # dN/dpT ~ pT^-index
    "isr_eta_sigma": 1.8,
    "isr_f_b": 0.01,  # g -> b b-bar, g -> c c-bar fractions of radiated partons
    "isr_f_c": 0.02,
}

TTBAR_PARAMS: dict[str, Any] = {
    **_RADIATION_DEFAULTS,
    "production": "continuum",  # or "resonance" (resonance_mass, resonance_width)
    "pt_shape": 2.4,  # top pT ~ Gamma(shape, scale): mode ~60 GeV, mean ~100 GeV
    "pt_scale": 42.0,
    "ystar_mean": 0.0,
    "ystar_sigma": 0.7,
    "y_sigma": 1.0,  # rapidity of the t t-bar system
    "resonance_mass": 0.0,
    "resonance_width": 0.0,
    "leptonic_only": False,
}

_SINGLE_TOP_BASE: dict[str, Any] = {
    **_RADIATION_DEFAULTS,
    "production": "continuum",
    "pt_shape": 2.2,
    "pt_scale": 36.0,
    "ystar_mean": 0.0,
    "ystar_sigma": 0.6,
    "y_sigma": 1.0,
    "top_fraction": 0.63,
    "leptonic_only": False,
    "spectator_b_prob": 0.0,
    "spectator_pt_min": 10.0,
    "spectator_index": 2.8,
    "spectator_eta_sigma": 1.6,
}

W_JETS_PARAMS: dict[str, Any] = {
    "jet_ratio": 0.5,  # P(n+1 jets) / P(n jets): Berends scaling
    "jet_pt_min": 20.0,
    "jet_index": 3.3,
    "jet_eta_sigma": 1.7,
    "f_bb": 0.02,  # per extra jet (x (n_jets - 1))
    "f_cc": 0.03,
    "f_c": 0.06,
    "w_kt_sigma": 6.0,
    "y_sigma": 1.9,
    "w_plus_fraction": 0.58,
}

TTBAR_VARIATIONS: dict[str, Variation] = {
    "nominal": Variation(),
    "scaleup": Variation(
        physics={"isr_mean": 1.35, "isr_index": 2.8}, description="more and harder initial-state radiation"
    ),
    "scaledown": Variation(
        physics={"isr_mean": 0.85, "isr_index": 3.0}, description="less and softer initial-state radiation"
    ),
    "ME_var": Variation(
        physics={"pt_scale": 45.5, "ystar_sigma": 0.74}, description="another matrix-element generator: harder top pT"
    ),
    "PS_var": Variation(
        detector={"jet_scale": 1.015, "jet_res_scale": 1.08, "jet_mass_scale": 1.08, "b_semileptonic_loss": 0.22},
        description="another parton shower: jet response +1.5%, 8% worse resolution, heavier jets",
    ),
}

PROCESSES: dict[str, ProcessSpec] = {}


def register_process(spec: ProcessSpec, replace: bool = False) -> ProcessSpec:
    """Add a process to the registry (``replace=True`` to redefine one)."""
    if spec.name in PROCESSES and not replace:
        raise ConfigError(f"process {spec.name!r} is already registered; pass replace=True to redefine it")
    if "nominal" not in spec.variations:
        raise ConfigError(f"process {spec.name!r}: every process needs a 'nominal' variation")
    for v in spec.variations:
        spec.parameters(v)  # validates the override names
    PROCESSES[spec.name] = spec
    return spec


def get_process(name: str) -> ProcessSpec:
    if name not in PROCESSES:
        raise ConfigError(f"unknown process {name!r}; registered: {sorted(PROCESSES)}")
    return PROCESSES[name]


for _spec in (
    ProcessSpec(
        "ttbar",
        build_top_pair,
        MappingProxyType(TTBAR_PARAMS),
        TTBAR_VARIATIONS,
        "t t-bar, inclusive decays",
        is_signal=True,
    ),
    ProcessSpec(
        "single_top_s_chan",
        build_single_top,
        MappingProxyType({**_SINGLE_TOP_BASE, "channel": "s", "leptonic_only": True, "pt_scale": 40.0}),
        description="single top s-channel, leptonic W decays",
    ),
    ProcessSpec(
        "single_top_t_chan",
        build_single_top,
        MappingProxyType(
            {
                **_SINGLE_TOP_BASE,
                "channel": "t",
                "spectator_b_prob": 1.0,
                "pt_shape": 2.0,
                "pt_scale": 28.0,
                "ystar_mean": 1.25,
                "ystar_sigma": 0.45,
            }
        ),
        description="single top t-channel (4 flavour: forward light quark + spectator b), inclusive",
    ),
    ProcessSpec(
        "single_top_tW",
        build_single_top,
        MappingProxyType(
            {**_SINGLE_TOP_BASE, "channel": "tW", "spectator_b_prob": 0.5, "top_fraction": 0.5, "pt_scale": 38.0}
        ),
        description="single top tW, inclusive decays",
    ),
    ProcessSpec(
        "wjets",
        build_w_jets,
        MappingProxyType(W_JETS_PARAMS),
        description="W(-> l nu) + jets",
        # W -> tau nu: at most one hadronic tau
        multiplicity=Multiplicity(w_jets_multiplicity, other_jets=1),
    ),
    # a new-physics signal family for reinterpretation (utils.preservation, workflow/): one
    # variation per mass point; not in the data mixture. xsec is a unit cross-section (1 pb):
    # each mass point's own cross-section is signal-model input, written into its signal
    # description (workflow/config.yaml), never into the analysis.
    ProcessSpec(
        "zprime",
        build_top_pair,
        MappingProxyType({**TTBAR_PARAMS, "production": "resonance", "resonance_mass": 750.0, "resonance_width": 22.5}),
        {
            "nominal": Variation(),
            **{
                f"M{m}": Variation(
                    physics={"resonance_mass": float(m), "resonance_width": 0.03 * m}, description=f"M(Z') = {m} GeV"
                )
                for m in (500, 750, 1000, 1250)
            },
        },
        "Z' -> t t-bar resonance (width 3% of its mass), inclusive top decays",
        xsec=1.0,
        include_in_data=False,
    ),
):
    register_process(_spec)
