"""The detector parameters of the embedded stand-in: response, resolution, acceptance and
efficiency (CMS 2015 performance to first order), overridable by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError


@dataclass(frozen=True)
class BTagShape:
    """CSV-like discriminant of one jet flavour: a spike at 0 (no secondary vertex), else Beta(a, b)."""

    zero_fraction: float
    a: float
    b: float


@dataclass(frozen=True)
class DetectorParams:
    # jets
    jet_eta_max: float = 2.4
    jet_pt_store: float = 10.0  # jets below this reconstructed pT are not stored
    jet_scale: float = 1.0  # jet energy scale (PS_var shifts it)
    jet_response_light: float = 1.0
    jet_response_c: float = 0.995
    jet_response_b: float = 0.99
    jet_res_noise: float = 2.5  # sigma/pT = sqrt((N/pT)^2 + S^2/pT + C^2) x jet_res_scale
    jet_res_stochastic: float = 0.85
    jet_res_constant: float = 0.04
    jet_res_scale: float = 1.0
    jet_angle_res: float = 0.02
    jet_mass_fraction: float = 0.12
    jet_mass_spread: float = 0.35
    jet_mass_scale: float = 1.0
    b_semileptonic_prob: float = 0.22  # b (c: half of it) jets with a lepton and a neutrino inside
    b_semileptonic_loss: float = 0.2  # mean pT fraction taken by the neutrino
    btag_b: BTagShape = BTagShape(0.05, 1.9, 1.1)  # eff(>0.5) ~ 0.67
    btag_c: BTagShape = BTagShape(0.10, 1.1, 2.6)  # ~ 0.17
    btag_light: BTagShape = BTagShape(0.25, 0.9, 5.5)  # ~ 0.014
    pileup_jets_mean: float = 2.0  # pile-up / underlying-event jets per event above jet_pt_store
    pileup_jet_index: float = 4.6
    # leptons
    electron_eta_max: float = 2.5
    electron_crack: tuple[float, float] = (1.4442, 1.566)
    electron_eff: float = 0.86
    electron_res: float = 0.02
    muon_eta_max: float = 2.4
    muon_eff: float = 0.95
    muon_res: float = 0.012
    soft_muons_mean: float = 0.5  # non-prompt / fake soft leptons per event
    soft_electrons_mean: float = 0.3
    # others
    photons_mean: float = 0.25
    tau_eff: float = 0.6
    tau_fake_rate: float = 0.03
    pileup_mean: float = 11.0  # mean number of vertices (2015 conditions)
    met_resolution: float = 0.55  # sigma per component = met_resolution * sqrt(sum ET)
    unclustered_et: float = 180.0
    trig_base: float = 40.0  # trigger objects per event: Poisson(trig_base + trig_per_object * n)
    trig_per_object: float = 4.0
    trig_copy_fraction: float = 0.55
    trig_zero_fraction: float = 0.06

    def replaced(self, overrides: Mapping[str, Any]) -> DetectorParams:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown detector parameter(s) {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)
