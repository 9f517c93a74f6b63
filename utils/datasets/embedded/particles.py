"""Flat particle tables (one row per particle, an event index per row) and the decays shared by
every process: W -> l nu / q q', t -> W b, tau -> lepton / hadrons. Vectorised over all events."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any

import numpy as np

from utils.datasets.embedded.kinematics import P4, breit_wigner, two_body_decay

# PDG values used by the model (GeV)
M_TOP, W_TOP = 172.5, 1.32
M_W, W_W = 80.379, 2.085
M_B, M_C = 4.8, 1.5
M_TAU = 1.77686

_MASS = np.zeros(26)
_MASS[[4, 5, 11, 13, 15]] = [M_C, M_B, 0.000511, 0.10566, M_TAU]

# W+ decay channels: (name, branching fraction, (pdgId 1, pdgId 2)); W- has the conjugates.
# Hadronic: W -> u d' and c s' share the 67.41% equally (|V_ud| ~ |V_cs|).
W_CHANNELS: tuple[tuple[str, float, tuple[int, int]], ...] = (
    ("enu", 0.1071, (-11, 12)),
    ("munu", 0.1063, (-13, 14)),
    ("taunu", 0.1138, (-15, 16)),
    ("ud", 0.6741 / 2, (2, -1)),
    ("cs", 0.6741 / 2, (4, -3)),
)
TAU_TO_E, TAU_TO_MU = 0.1782, 0.1739  # tau -> e nu nu, tau -> mu nu nu; the rest is hadronic

# Status codes as in Pythia 8 records: 22 intermediate, 23 outgoing hard, 2 decayed, 1 final.
STATUS_INTERMEDIATE, STATUS_OUTGOING, STATUS_DECAYED, STATUS_FINAL = 22, 23, 2, 1


class Origin(IntEnum):
    """Where a final-state object comes from (generator truth kept beside the jets, not written)."""

    OTHER = 0
    TOP_B = 1  # b quark of t -> W b
    W_DAUGHTER = 2  # a W decay product
    RADIATION = 3  # initial-state radiation / associated partons (W+jets jets)
    PILEUP = 4  # pile-up and underlying-event jets
    TAU = 5  # visible hadronic tau
    RECOIL = 6  # the partner quark of single-top production


def pdg_mass(pdg: np.ndarray) -> np.ndarray:
    a = np.abs(pdg)
    return np.where(a < len(_MASS), _MASS[np.minimum(a, len(_MASS) - 1)], 0.0)


@dataclass(frozen=True)
class ParticleTable:
    """Particles of many events. ``top_sign`` is +1 (-1) for descendants of a top (anti-top)."""

    event: np.ndarray
    p4: P4
    pdg: np.ndarray
    status: np.ndarray
    origin: np.ndarray
    top_sign: np.ndarray

    @classmethod
    def make(cls, event, p4: P4, pdg, status, origin, top_sign=0) -> ParticleTable:
        n = len(event)

        def full(x, dtype):
            return np.broadcast_to(np.asarray(x, dtype=dtype), (n,)).copy()

        return cls(
            np.asarray(event, dtype=np.int64),
            p4,
            full(pdg, np.int32),
            full(status, np.int32),
            full(origin, np.int8),
            full(top_sign, np.int8),
        )

    @classmethod
    def empty(cls) -> ParticleTable:
        z = np.zeros(0)
        return cls.make(np.zeros(0, np.int64), P4(z, z, z, z), 0, 0, 0)

    @classmethod
    def concatenate(cls, tables: list[ParticleTable]) -> ParticleTable:
        tables = [t for t in tables if len(t)] or [cls.empty()]
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "p4":
                kw["p4"] = P4.concatenate([t.p4 for t in tables])
            else:
                kw[f.name] = np.concatenate([getattr(t, f.name) for t in tables])
        return cls(**kw)

    def __len__(self) -> int:
        return len(self.event)

    def __getitem__(self, index) -> ParticleTable:
        return ParticleTable(
            self.event[index],
            self.p4[index],
            self.pdg[index],
            self.status[index],
            self.origin[index],
            self.top_sign[index],
        )


@dataclass(frozen=True)
class HardEvent:
    """Generator output of ``n`` events: final-state objects the detector sees, and the
    generator record written as GenPart."""

    n: int
    final: ParticleTable
    record: ParticleTable


def choose_w_channels(rng: np.random.Generator, n: int, leptonic_only: bool) -> np.ndarray:
    """Index into ``W_CHANNELS`` per W, with the real branching fractions."""
    br = np.array([c[1] for c in W_CHANNELS])
    if leptonic_only:
        br[3:] = 0.0
    return rng.choice(len(W_CHANNELS), size=n, p=br / br.sum())


def decay_w(
    rng: np.random.Generator,
    event: np.ndarray,
    w: P4,
    charge: np.ndarray,
    leptonic_only: bool,
    top_sign: np.ndarray | int = 0,
) -> tuple[ParticleTable, ParticleTable]:
    """W -> f f' (isotropic in the W frame). Returns (final-state daughters, record incl. the W).

    Taus are decayed here too (their visible products join the final state, the tau the record).
    """
    chan = choose_w_channels(rng, len(event), leptonic_only)
    pdgs = np.array([c[2] for c in W_CHANNELS], dtype=np.int32)[chan]
    pdgs = pdgs * np.where(charge > 0, 1, -1)[:, None].astype(np.int32)
    d1, d2 = two_body_decay(rng, w, pdg_mass(pdgs[:, 0]), pdg_mass(pdgs[:, 1]))
    kids = ParticleTable.concatenate(
        [
            ParticleTable.make(event, d1, pdgs[:, 0], STATUS_OUTGOING, Origin.W_DAUGHTER, top_sign),
            ParticleTable.make(event, d2, pdgs[:, 1], STATUS_OUTGOING, Origin.W_DAUGHTER, top_sign),
        ]
    )
    w_row = ParticleTable.make(event, w, 24 * np.sign(charge), STATUS_INTERMEDIATE, Origin.OTHER, top_sign)
    final, tau_record = decay_taus(rng, kids)
    leptons = np.isin(np.abs(kids.pdg), (11, 12, 13, 14, 16))
    record_kids = kids[leptons | (np.abs(kids.pdg) <= 5)]
    record_kids = ParticleTable(
        record_kids.event,
        record_kids.p4,
        record_kids.pdg,
        np.where(np.abs(record_kids.pdg) > 10, STATUS_FINAL, STATUS_OUTGOING).astype(np.int32),
        record_kids.origin,
        record_kids.top_sign,
    )
    return final, ParticleTable.concatenate([w_row, record_kids, tau_record])


def decay_top(
    rng: np.random.Generator, event: np.ndarray, top: P4, sign: np.ndarray, leptonic_only: bool
) -> tuple[ParticleTable, ParticleTable]:
    """t -> W b with a Breit-Wigner W mass; ``sign`` is +1 for t, -1 for t-bar."""
    n = len(event)
    m_w = np.minimum(breit_wigner(rng, n, M_W, W_W, 10.0), top.mass - M_B - 1.0)
    w, b = two_body_decay(rng, top, m_w, np.full(n, M_B))
    b_tab = ParticleTable.make(event, b, 5 * sign, STATUS_OUTGOING, Origin.TOP_B, sign)
    w_final, w_record = decay_w(rng, event, w, sign, leptonic_only, sign)
    top_row = ParticleTable.make(event, top, 6 * sign, STATUS_INTERMEDIATE, Origin.OTHER, sign)
    final = ParticleTable.concatenate([b_tab, w_final])
    return final, ParticleTable.concatenate([top_row, w_record, b_tab])


def decay_taus(rng: np.random.Generator, table: ParticleTable) -> tuple[ParticleTable, ParticleTable]:
    """Replace taus by collinear decay products; return (table without taus, tau record rows).

    tau -> l nu nu (e, mu) or a visible hadronic system (pdgId +-15 kept for it, status 1 in the
    final-state table only) plus a neutrino. The visible momentum fraction follows the shape of
    the leptonic (mean ~0.3) and hadronic (mean ~0.55) spectra.
    """
    is_tau = np.abs(table.pdg) == 15
    if not is_tau.any():
        return table, ParticleTable.empty()
    taus = table[is_tau]
    n = len(taus)
    sign = np.sign(taus.pdg)
    u = rng.uniform(size=n)
    to_e, to_mu = u < TAU_TO_E, (u >= TAU_TO_E) & (u < TAU_TO_E + TAU_TO_MU)
    hadronic = ~(to_e | to_mu)
    frac = np.where(hadronic, rng.beta(1.6, 1.3, n), rng.beta(1.1, 2.4, n))
    vis_pdg = np.where(to_e, 11 * sign, np.where(to_mu, 13 * sign, 15 * sign))
    scaled = taus.p4.scaled(frac)
    # collinear: the visible products keep the tau direction; leptons get their own mass
    vis_mass = np.where(hadronic, scaled.mass, pdg_mass(vis_pdg))
    visible = P4.from_pt_eta_phi_m(scaled.pt, scaled.eta, scaled.phi, vis_mass)
    invisible = taus.p4 - visible
    vis_rows = ParticleTable.make(
        taus.event, visible, vis_pdg, STATUS_FINAL, np.where(hadronic, Origin.TAU, taus.origin), taus.top_sign
    )
    nu_rows = ParticleTable.make(taus.event, invisible, 16 * sign, STATUS_FINAL, taus.origin, taus.top_sign)
    record = ParticleTable(
        taus.event, taus.p4, taus.pdg, np.full(n, STATUS_DECAYED, np.int32), taus.origin, taus.top_sign
    )
    leptonic_rows = vis_rows[~hadronic]
    return ParticleTable.concatenate([table[~is_tau], vis_rows, nu_rows]), ParticleTable.concatenate(
        [record, leptonic_rows]
    )
