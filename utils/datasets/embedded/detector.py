"""Detector response: turns generator particles into the reconstructed collections of the
ntuple (jets, leptons, photons, taus, trigger objects, vertices, MET, GenPart).

Response, resolution, acceptance and efficiency follow CMS 2015 performance to first order.
The per-object "noise" fields (isolation, impact parameters, vertex fits, trigger objects) carry
realistic, poorly compressible values, so that the analysis branches are a few per cent of a
file's bytes, as in the real ntuples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from utils.datasets.embedded.events import EventBatch, Jagged
from utils.datasets.embedded.kinematics import P4, delta_phi
from utils.datasets.embedded.objects import (
    _charge,
    _finish,
    _genpart,
    _impact_parameters,
    _isolation,
    _met,
    _nested_flags,
    _photons,
    _taus,
    _trigger_objects,
    _vertices,
)
from utils.datasets.embedded.params import DetectorParams
from utils.datasets.embedded.particles import HardEvent, Origin, ParticleTable
from utils.datasets.embedded.schema import COLLECTION_BY_NAME

M_E, M_MU = 0.000511, 0.10566


# --------------------------------------------------------------------------------------------
# jets
# --------------------------------------------------------------------------------------------
@dataclass
class _JetPieces:
    event: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    flavour: np.ndarray
    origin: np.ndarray
    top_sign: np.ndarray


def _resolution(pt: np.ndarray, d: DetectorParams) -> np.ndarray:
    pt = np.maximum(pt, 1.0)
    return d.jet_res_scale * np.sqrt((d.jet_res_noise / pt) ** 2 + d.jet_res_stochastic**2 / pt + d.jet_res_constant**2)


def _reconstruct_jets(
    rng: np.random.Generator, n_events: int, parts: ParticleTable, flavour: np.ndarray, d: DetectorParams
) -> tuple[_JetPieces, ParticleTable, tuple[np.ndarray, np.ndarray]]:
    """Parton (or visible tau) -> jet. Returns kept jets, semileptonic leptons, and the
    transverse momentum lost by mismeasurement (true - reconstructed), for MET."""
    n = len(parts)
    pt_true, eta_true, phi_true = parts.p4.pt, parts.p4.eta, parts.p4.phi
    response = d.jet_scale * np.select(
        [flavour == 5, flavour == 4], [d.jet_response_b, d.jet_response_c], d.jet_response_light
    )
    sl_prob = np.where(flavour == 5, d.b_semileptonic_prob, np.where(flavour == 4, 0.5 * d.b_semileptonic_prob, 0.0))
    semilep = rng.uniform(size=n) < sl_prob
    a = 1.5
    nu_frac = np.where(semilep, rng.beta(a, a * (1.0 - d.b_semileptonic_loss) / d.b_semileptonic_loss, n), 0.0)
    smear = 1.0 + _resolution(pt_true, d) * rng.standard_normal(n)
    pt = pt_true * response * (1.0 - nu_frac) * np.maximum(smear, 0.05)
    eta = eta_true + d.jet_angle_res * rng.standard_normal(n)
    phi = delta_phi(phi_true + d.jet_angle_res * rng.standard_normal(n), 0.0)
    keep = (np.abs(eta) < d.jet_eta_max) & (pt > d.jet_pt_store)
    lost_px = np.where(keep, pt_true * np.cos(phi_true) - pt * np.cos(phi), 0.0)
    lost_py = np.where(keep, pt_true * np.sin(phi_true) - pt * np.sin(phi), 0.0)

    # the charged lepton of the semileptonic decay, inside the jet
    sl = np.flatnonzero(semilep)
    z = rng.beta(1.3, 4.5, len(sl))
    lep_pt = pt_true[sl] * z
    lep_eta = eta_true[sl] + rng.normal(0.0, 0.05, len(sl))
    lep_phi = phi_true[sl] + rng.normal(0.0, 0.05, len(sl))
    lep_pdg = np.where(rng.uniform(size=len(sl)) < 0.5, 11, 13) * np.where(rng.uniform(size=len(sl)) < 0.5, 1, -1)
    sl_leptons = ParticleTable.make(
        parts.event[sl], P4.from_pt_eta_phi_m(lep_pt, lep_eta, lep_phi, 0.0), lep_pdg, 1, Origin.OTHER
    )
    pieces = _JetPieces(
        parts.event[keep], pt[keep], eta[keep], phi[keep], flavour[keep], parts.origin[keep], parts.top_sign[keep]
    )
    lost = (np.bincount(parts.event, lost_px, n_events), np.bincount(parts.event, lost_py, n_events))
    return pieces, sl_leptons, lost


def _pileup_jets(rng: np.random.Generator, n: int, d: DetectorParams) -> _JetPieces:
    counts = rng.poisson(d.pileup_jets_mean, n)
    event = np.repeat(np.arange(n, dtype=np.int64), counts)
    m = len(event)
    u = rng.uniform(size=m)
    pt = d.jet_pt_store * (1.0 - u) ** (-1.0 / (d.pileup_jet_index - 1.0))
    z = np.zeros(m, np.int8)
    return _JetPieces(
        event,
        pt,
        rng.uniform(-d.jet_eta_max, d.jet_eta_max, m),
        rng.uniform(-np.pi, np.pi, m),
        z.astype(np.int64),
        np.full(m, Origin.PILEUP, np.int8),
        z,
    )


def _btag(rng: np.random.Generator, flavour: np.ndarray, d: DetectorParams) -> np.ndarray:
    """Discriminant in [0, 1] by hadron flavour; a float32 value widened to float64 (as the real
    CSV discriminator, a float stored in a double branch)."""
    out = np.empty(len(flavour), dtype=np.float32)
    for fl, shape in ((5, d.btag_b), (4, d.btag_c), (0, d.btag_light)):
        sel = np.flatnonzero(flavour == fl)
        values = rng.beta(shape.a, shape.b, len(sel))
        out[sel] = np.where(rng.uniform(size=len(sel)) < shape.zero_fraction, 0.0, values)
    return out.astype(np.float64)


def _jets(rng: np.random.Generator, n: int, pieces: list[_JetPieces], d: DetectorParams) -> Jagged:
    j = _JetPieces(*(np.concatenate([getattr(p, f.name) for p in pieces]) for f in dataclasses.fields(_JetPieces)))
    m = len(j.event)
    mass_factor = np.where(j.flavour == 5, 1.2, 1.0) * d.jet_mass_fraction * d.jet_mass_scale
    mass = np.clip(j.pt * mass_factor * np.exp(d.jet_mass_spread * rng.standard_normal(m)), 0.5, 0.45 * j.pt)
    correction = 1.0 + 0.6 / np.sqrt(j.pt) * (1.0 + 0.15 * rng.standard_normal(m))
    extra = {
        "ch": np.clip(np.rint(rng.normal(0.0, 1.7, m)), -9, 9),
        "btag": _btag(rng, j.flavour, d),
        "pt_uncorr": j.pt / np.maximum(correction, 1.0),
    }
    truth = {"flavour": j.flavour.astype(np.int8), "origin": j.origin.astype(np.int8), "top_sign": j.top_sign}
    return _finish(n, "jet", j.event, {"pt": j.pt, "eta": j.eta, "phi": j.phi, "mass": mass}, extra, truth)


# --------------------------------------------------------------------------------------------
# leptons
# --------------------------------------------------------------------------------------------
def _reco_leptons(
    rng: np.random.Generator, parts: ParticleTable, eff: float, eta_max: float, resolution, crack=None
) -> tuple[ParticleTable, np.ndarray]:
    """Acceptance x efficiency (with a turn-on at low pT) and momentum smearing."""
    pt, eta = parts.p4.pt, parts.p4.eta
    n = len(parts)
    acc = np.abs(eta) < eta_max
    if crack is not None:
        acc &= ~((np.abs(eta) > crack[0]) & (np.abs(eta) < crack[1]))
    turn_on = 1.0 - np.exp(-np.maximum(pt - 2.0, 0.0) / 6.0)
    keep = acc & (rng.uniform(size=n) < eff * turn_on)
    smeared = pt * (1.0 + resolution(pt) * rng.standard_normal(n))
    kept = parts[keep]
    p4 = P4.from_pt_eta_phi_m(smeared[keep], kept.p4.eta, kept.p4.phi, 0.0)
    return ParticleTable(kept.event, p4, kept.pdg, kept.status, kept.origin, kept.top_sign), keep


def _soft_leptons(
    rng: np.random.Generator, n: int, mean: float, pdg: int, pt_min: float, slope: float
) -> ParticleTable:
    """Fake / non-prompt soft leptons (pion and kaon decays, conversions, pile-up)."""
    counts = rng.poisson(mean, n)
    event = np.repeat(np.arange(n, dtype=np.int64), counts)
    m = len(event)
    p4 = P4.from_pt_eta_phi_m(
        pt_min + rng.exponential(slope, m), rng.uniform(-2.4, 2.4, m), rng.uniform(-np.pi, np.pi, m), 0.0
    )
    return ParticleTable.make(event, p4, pdg * np.where(rng.uniform(size=m) < 0.5, 1, -1), 1, Origin.OTHER)


def _lepton_collection(
    rng: np.random.Generator, n: int, name: str, prompt: ParticleTable, nonprompt: ParticleTable
) -> Jagged:
    both = ParticleTable.concatenate([prompt, nonprompt])
    m = len(both)
    is_prompt = np.arange(m) < len(prompt)
    pt, eta, phi = both.p4.pt, both.p4.eta, delta_phi(both.p4.phi, 0.0)
    mass = np.full(m, M_E if name == "electron" else M_MU)
    iso = _isolation(rng, is_prompt, pt)
    extra: dict[str, np.ndarray] = {"ch": _charge(rng, both.pdg, m), **_impact_parameters(rng, is_prompt, pt)}
    if name == "electron":
        loose, medium, tight = _nested_flags(
            rng, (np.where(is_prompt, 0.96, 0.25), np.where(is_prompt, 0.9, 0.12), np.where(is_prompt, 0.84, 0.06)), m
        )
        extra.update(iso=iso, isLoose=loose, isMedium=medium, isTight=tight)
    else:
        rel03 = iso / np.maximum(pt, 0.5)
        soft, tight = _nested_flags(
            rng, (np.where(is_prompt, 0.99, 0.7), np.where(is_prompt & (pt > 10), 0.95, 0.2)), m
        )
        extra.update(
            isSoft=soft.astype(np.int32),
            isTight=tight.astype(np.int32),
            pfreliso03all=rel03,
            pfreliso04all=rel03 * (1.0 + rng.exponential(0.4, m)) + np.where(rel03 > 0, 0.0, rng.exponential(0.02, m)),
            jetidx=np.full(m, -1.0),  # not filled by the 2015 extractor (always -1 in real files)
            genpartidx=np.full(m, -1.0),
        )
    return _finish(n, name, both.event, {"pt": pt, "eta": eta, "phi": phi, "mass": mass}, extra, {"prompt": is_prompt})


# --------------------------------------------------------------------------------------------
def _empty(name: str, n: int) -> Jagged:
    return Jagged(np.zeros(n, np.int32), {f: np.zeros(0, dt) for f, dt in COLLECTION_BY_NAME[name].fields})


@dataclass(frozen=True)
class AnalysisObjects:
    """The first stage of the detector simulation: jets, electrons, muons and MET of ``batch``
    (the collections the analysis reads), plus the generator-level inputs of the second stage
    (:func:`complete`): the visible hadronic taus and the generator record."""

    batch: EventBatch
    tau_h: ParticleTable
    record: ParticleTable

    def take(self, index: np.ndarray) -> AnalysisObjects:
        """Events ``index`` (increasing positions, each once)."""
        index = np.asarray(index, dtype=np.int64)
        position = np.full(self.batch.n, -1, dtype=np.int64)
        position[index] = np.arange(len(index))

        def subset(table: ParticleTable) -> ParticleTable:
            rows = table[position[table.event] >= 0]
            return ParticleTable(position[rows.event], rows.p4, rows.pdg, rows.status, rows.origin, rows.top_sign)

        return AnalysisObjects(self.batch.take(index), subset(self.tau_h), subset(self.record))


def pileup_jets_above(rng: np.random.Generator, n_above: np.ndarray, pt_cut: float, d: DetectorParams) -> _JetPieces:
    """Pile-up jets given the number per event above ``pt_cut`` (``n_above``, drawn beforehand
    as Poisson(``pileup_jets_mean`` x P(pT > pt_cut))): by Poisson thinning, the same
    distribution as the pile-up jets of :func:`reconstruct` (the jets below the cut are drawn
    here, independently)."""
    n = len(n_above)
    alpha = d.pileup_jet_index - 1.0
    cut = max(pt_cut, d.jet_pt_store)
    p_above = (cut / d.jet_pt_store) ** (-alpha)
    n_below = rng.poisson(d.pileup_jets_mean * (1.0 - p_above), n)
    event = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), n_above), np.repeat(np.arange(n), n_below)])
    m_above = int(np.sum(n_above))
    u = rng.uniform(size=len(event))
    # inverse CDF of the power law above the cut, and of the power law truncated to [store, cut)
    pt_above = cut * (1.0 - u[:m_above]) ** (-1.0 / alpha)
    pt_below = d.jet_pt_store * (1.0 - u[m_above:] * (1.0 - p_above)) ** (-1.0 / alpha)
    order = np.argsort(event, kind="stable")
    m = len(event)
    z = np.zeros(m, np.int8)
    return _JetPieces(
        event[order],
        np.concatenate([pt_above, pt_below])[order],
        rng.uniform(-d.jet_eta_max, d.jet_eta_max, m),
        rng.uniform(-np.pi, np.pi, m),
        z.astype(np.int64),
        np.full(m, Origin.PILEUP, np.int8),
        z,
    )


def reconstruct(
    rng: np.random.Generator, hard: HardEvent, d: DetectorParams, pileup: _JetPieces | None = None
) -> AnalysisObjects:
    """The analysis objects of ``hard``'s events (the first stage of :func:`simulate`).
    ``pileup``: the pile-up jets, when drawn beforehand (:func:`pileup_jets_above`)."""
    n, fin = hard.n, hard.final
    apdg = np.abs(fin.pdg)
    partons = fin[(apdg <= 5) | (apdg == 21)]
    flavour = np.where(np.abs(partons.pdg) == 5, 5, np.where(np.abs(partons.pdg) == 4, 4, 0))
    tau_h = fin[apdg == 15]

    parton_jets, sl_leptons, lost = _reconstruct_jets(rng, n, partons, flavour, d)
    tau_jets, _, tau_lost = _reconstruct_jets(rng, n, tau_h, np.zeros(len(tau_h), np.int64), d)
    jets = _jets(rng, n, [parton_jets, tau_jets, _pileup_jets(rng, n, d) if pileup is None else pileup], d)
    lost = (lost[0] + tau_lost[0], lost[1] + tau_lost[1])

    def lepton_res_e(pt):
        return np.full_like(pt, d.electron_res)

    def lepton_res_mu(pt):
        return d.muon_res + 1e-4 * pt

    prompt_e, _ = _reco_leptons(
        rng, fin[apdg == 11], d.electron_eff, d.electron_eta_max, lepton_res_e, d.electron_crack
    )
    prompt_mu, _ = _reco_leptons(rng, fin[apdg == 13], d.muon_eff, d.muon_eta_max, lepton_res_mu)
    sl_abs = np.abs(sl_leptons.pdg)
    nonprompt_e, _ = _reco_leptons(
        rng,
        ParticleTable.concatenate(
            [sl_leptons[sl_abs == 11], _soft_leptons(rng, n, d.soft_electrons_mean, 11, 1.5, 3.0)]
        ),
        0.7,
        d.electron_eta_max,
        lepton_res_e,
    )
    nonprompt_mu, _ = _reco_leptons(
        rng,
        ParticleTable.concatenate([sl_leptons[sl_abs == 13], _soft_leptons(rng, n, d.soft_muons_mean, 13, 0.5, 2.5)]),
        0.9,
        d.muon_eta_max,
        lepton_res_mu,
    )
    electrons = _lepton_collection(rng, n, "electron", prompt_e, nonprompt_e)
    muons = _lepton_collection(rng, n, "muon", prompt_mu, nonprompt_mu)

    neutrinos = fin[np.isin(apdg, (12, 14, 16))]
    met = _met(rng, n, neutrinos, lost, jets, [electrons, muons], d)
    return AnalysisObjects(EventBatch(n, {"electron": electrons, "jet": jets, "muon": muons}, met), tau_h, hard.record)


def complete(
    rng: np.random.Generator,
    objects: AnalysisObjects,
    d: DetectorParams,
    with_genpart: bool = True,
    minimal: bool = False,
) -> EventBatch:
    """The second stage of :func:`simulate`: every other collection of the ntuple (drawn after the
    analysis objects, so ``minimal=True``, which leaves them empty, keeps jets, leptons and MET
    of a seed unchanged)."""
    batch = objects.batch
    n = batch.n
    jets, electrons, muons = (batch.collections[k] for k in ("jet", "electron", "muon"))
    collections = dict(batch.collections)
    if minimal:
        collections.update({name: _empty(name, n) for name in ("photon", "PV", "tau", "trigobj")})
        pv_scalars = {k: np.zeros(n, np.int32) for k in ("PV_npvs", "PV_npvsGood")}
    else:
        photons = _photons(rng, n, d, jets.counts)
        pv, pv_scalars = _vertices(rng, n, d)
        collections.update(
            photon=photons,
            tau=_taus(rng, n, objects.tau_h, jets, d),
            trigobj=_trigger_objects(rng, n, [jets, electrons, muons, photons], d),
            PV=pv,
        )
    collections["GenPart"] = _genpart(n, objects.record if with_genpart else ParticleTable.empty())
    return EventBatch(n, collections, {**batch.scalars, **pv_scalars}, dict(batch.meta))


def simulate(
    rng: np.random.Generator, hard: HardEvent, d: DetectorParams, with_genpart: bool = True, minimal: bool = False
) -> EventBatch:
    """Reconstruct ``hard``'s events; returns the batch in the ntuple layout.

    ``minimal=True`` leaves photons, taus, trigger objects and vertices empty (fast physics
    studies); the other collections are identical to a full simulation of the same seed.
    """
    return complete(rng, reconstruct(rng, hard, d), d, with_genpart, minimal)
