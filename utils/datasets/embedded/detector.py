"""Detector response: turns generator particles into the reconstructed collections of the
ntuple (jets, leptons, photons, taus, trigger objects, vertices, MET, GenPart).

Response, resolution, acceptance and efficiency follow CMS 2015 performance to first order.
The per-object "noise" fields (isolation, impact parameters, vertex fits, trigger objects) carry
realistic, poorly compressible values, so that the analysis branches are a few per cent of a
file's bytes, as in the real ntuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.datasets.embedded.events import EventBatch, Jagged
from utils.datasets.embedded.kinematics import P4, delta_phi
from utils.datasets.embedded.particles import HardEvent, Origin, ParticleTable
from utils.datasets.embedded.schema import COLLECTION_BY_NAME
from utils.errors import ConfigError

M_E, M_MU = 0.000511, 0.10566


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


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _finish(
    n: int,
    name: str,
    event: np.ndarray,
    kin: Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray] | None = None,
    sort_by_pt: bool = True,
    dtype: type = np.float64,
) -> Jagged:
    """Sort objects by event (and descending pT), derive e/px/py/pz, cast to the schema dtypes.
    ``event`` must already be sorted when ``sort_by_pt`` is false."""
    pt, eta, phi = kin["pt"], kin["eta"], kin["phi"]
    order = np.lexsort((-pt, event)) if sort_by_pt else slice(None)
    mass = kin.get("mass", np.zeros_like(pt))
    p4 = P4.from_pt_eta_phi_m(pt, eta, phi, mass, dtype=dtype)
    values = {"pt": pt, "eta": eta, "phi": phi, "e": p4.e, "px": p4.px, "py": p4.py, "pz": p4.pz, "mass": mass}
    values.update(extra)
    coll = COLLECTION_BY_NAME[name]
    fields = {f: np.asarray(values[f])[order].astype(dt) for f, dt in coll.fields}
    counts = np.bincount(event, minlength=n).astype(np.int32)
    return Jagged(counts, fields, {k: np.asarray(v)[order] for k, v in (truth or {}).items()})


def _lognormal(rng: np.random.Generator, median, sigma, n: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(n))


def _nested_flags(rng: np.random.Generator, probs: tuple[np.ndarray | float, ...], n: int) -> list[np.ndarray]:
    """Nested working points (tight implies medium implies loose) from one uniform per object."""
    u = rng.uniform(size=n)
    return [u < p for p in probs]


def _impact_parameters(rng: np.random.Generator, prompt: np.ndarray, pt: np.ndarray) -> dict[str, np.ndarray]:
    """dxy, dz (cm) and their errors: prompt tracks at the primary vertex, others displaced
    or from another vertex."""
    n = len(prompt)
    dxy_err = _lognormal(rng, 0.004 + 0.1 / np.maximum(pt, 1.0), 0.5, n)
    dz_err = _lognormal(rng, 0.006 + 0.2 / np.maximum(pt, 1.0), 0.6, n)
    displaced = rng.standard_normal(n) * np.where(prompt, 1.0, rng.exponential(8.0, n))
    other_vertex = ~prompt & (rng.uniform(size=n) < 0.3)
    dz = rng.standard_normal(n) * dz_err + np.where(other_vertex, rng.normal(0.0, 6.0, n), 0.0)
    return {"dxy": displaced * dxy_err, "dz": dz, "dxyError": dxy_err, "dzError": dz_err}


def _isolation(rng: np.random.Generator, prompt: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Absolute isolation (GeV): often exactly 0 for prompt leptons, large for non-prompt ones."""
    n = len(prompt)
    iso = np.where(prompt, rng.exponential(0.8, n), rng.exponential(3.0, n) + 0.3 * pt * rng.uniform(size=n))
    return np.where(prompt & (rng.uniform(size=n) < 0.55), 0.0, iso)


def _charge(rng: np.random.Generator, pdg: np.ndarray | None, n: int) -> np.ndarray:
    """Lepton charge from the pdgId (l- has a positive code), random for fakes."""
    random = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
    if pdg is None:
        return random
    return np.where(pdg != 0, -np.sign(pdg), random)


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
# photons, taus, trigger objects, vertices, MET, generator record
# --------------------------------------------------------------------------------------------
def _photons(rng: np.random.Generator, n: int, d: DetectorParams, njet: np.ndarray) -> Jagged:
    counts = rng.poisson(d.photons_mean + 0.02 * njet)
    event = np.repeat(np.arange(n, dtype=np.int64), counts)
    m = len(event)
    pt = 10.0 + rng.exponential(9.0, m)
    isos = {
        k: np.where(rng.uniform(size=m) < 0.6, 0.0, rng.exponential(s, m))
        for k, s in (("chIso", 4.0), ("nhIso", 2.5), ("phIso", 2.0))
    }
    loose, medium, tight = _nested_flags(rng, (0.8, 0.6, 0.45), m)
    extra = {"ch": np.zeros(m), **isos, "isLoose": loose, "isMedium": medium, "isTight": tight}
    kin = {"pt": pt, "eta": rng.uniform(-2.5, 2.5, m), "phi": rng.uniform(-np.pi, np.pi, m)}
    return _finish(n, "photon", event, kin, extra)


_TAU_MODES = np.array([0, 1, 2, 5, 6, 10])
_TAU_MODE_P = np.array([0.3, 0.35, 0.05, 0.05, 0.05, 0.2])


def _taus(rng: np.random.Generator, n: int, true_taus: ParticleTable, jets: Jagged, d: DetectorParams) -> Jagged:
    vis_pt, vis_eta = true_taus.p4.pt, true_taus.p4.eta
    real = (vis_pt > 18.0) & (np.abs(vis_eta) < 2.3) & (rng.uniform(size=len(true_taus)) < d.tau_eff)
    jet_event = np.repeat(np.arange(n, dtype=np.int64), jets.counts)
    jpt = jets.fields["pt"].astype(np.float64)
    fake = (jpt > 18.0) & (np.abs(jets.fields["eta"]) < 2.3) & (rng.uniform(size=len(jpt)) < d.tau_fake_rate)
    fake &= jets.truth["origin"] != Origin.TAU
    event = np.concatenate([true_taus.event[real], jet_event[fake]])
    pt = np.concatenate(
        [vis_pt[real] * rng.normal(1.0, 0.05, real.sum()), jpt[fake] * rng.uniform(0.6, 0.95, fake.sum())]
    )
    eta = np.concatenate([vis_eta[real], jets.fields["eta"][fake].astype(np.float64)])
    phi = np.concatenate([true_taus.p4.phi[real], jets.fields["phi"][fake].astype(np.float64)])
    is_real = np.arange(len(event)) < real.sum()
    m = len(event)
    mode = rng.choice(_TAU_MODES, size=m, p=_TAU_MODE_P)
    mass = np.select(
        [mode == 0, mode == 10],
        [np.full(m, 0.13957), np.clip(rng.normal(1.1, 0.25, m), 0.8, 1.77)],
        np.clip(rng.normal(0.8, 0.22, m), 0.3, 1.5),
    )
    iso_raw = np.where(is_real, 2.0 * rng.beta(5.0, 1.5, m) - 1.0, 2.0 * rng.beta(1.2, 3.0, m) - 1.0)
    extra = {
        "ch": _charge(rng, None, m),
        "decaymode": mode.astype(np.float64),
        "iddecaymode": np.isin(mode, (0, 1, 2, 10)).astype(np.float64),
        "idisoraw": iso_raw,
        **{
            k: (iso_raw > cut).astype(np.float64)
            for k, cut in (("idisovloose", -0.5), ("idisoloose", 0.0), ("idisomedium", 0.5), ("idisotight", 0.75))
        },
        "idantieletight": (rng.uniform(size=m) < 0.8).astype(np.float64),
        "idantimutight": (rng.uniform(size=m) < 0.92).astype(np.float64),
    }
    return _finish(n, "tau", event, {"pt": pt, "eta": eta, "phi": phi, "mass": mass}, extra)


def _trigger_objects(rng: np.random.Generator, n: int, sources: list[Jagged], d: DetectorParams) -> Jagged:
    """Trigger objects at several levels: smeared copies of reconstructed objects, soft
    unmatched objects, and empty (all-zero) slots. Drawn in float32: they are the bulk of a file."""
    f4 = np.float32
    counts = sum(s.counts.astype(np.int64) for s in sources)
    pool_event = np.concatenate([np.repeat(np.arange(n), s.counts) for s in sources])
    order = np.argsort(pool_event, kind="stable")
    pool = {k: np.concatenate([s.fields[k] for s in sources]).astype(f4)[order] for k in ("pt", "eta", "phi")}
    pool_start = np.concatenate([[0], np.cumsum(counts)[:-1]])

    ntrig = rng.poisson(d.trig_base + d.trig_per_object * counts)
    event = np.repeat(np.arange(n, dtype=np.int64), ntrig)
    m = len(event)
    copy = (rng.random(m, dtype=f4) < d.trig_copy_fraction) & (counts[event] > 0)
    zero = rng.random(m, dtype=f4) < d.trig_zero_fraction
    ic, ir = np.flatnonzero(copy), np.flatnonzero(~copy)
    src = pool_start[event[ic]] + (rng.random(len(ic), dtype=f4) * counts[event[ic]]).astype(np.int64)
    src = np.minimum(src, counts[event[ic]] + pool_start[event[ic]] - 1)
    kin = {k: np.empty(m, f4) for k in ("pt", "eta", "phi")}
    kin["pt"][ic] = pool["pt"][src] * (1 + f4(0.06) * rng.standard_normal(len(ic), dtype=f4))
    kin["eta"][ic] = pool["eta"][src] + f4(0.01) * rng.standard_normal(len(ic), dtype=f4)
    kin["phi"][ic] = pool["phi"][src] + f4(0.01) * rng.standard_normal(len(ic), dtype=f4)
    kin["pt"][ir] = f4(9.0) * rng.standard_exponential(len(ir), dtype=f4)
    kin["eta"][ir] = np.clip(f4(2.0) * rng.standard_normal(len(ir), dtype=f4), -4.9, 4.9)
    kin["phi"][ir] = f4(np.pi) * (2 * rng.random(len(ir), dtype=f4) - 1)
    kin["phi"] = np.where(kin["phi"] > np.pi, kin["phi"] - f4(2 * np.pi), kin["phi"])
    kin["phi"] = np.where(kin["phi"] < -np.pi, kin["phi"] + f4(2 * np.pi), kin["phi"])
    kin["pt"] = np.abs(kin["pt"])
    for x in kin.values():
        x[zero] = 0.0
    return _finish(n, "trigobj", event, kin, {}, sort_by_pt=False, dtype=f4)


def _vertices(rng: np.random.Generator, n: int, d: DetectorParams) -> tuple[Jagged, dict[str, np.ndarray]]:
    npv = 1 + rng.poisson(d.pileup_mean - 1.0, n)
    event = np.repeat(np.arange(n, dtype=np.int64), npv)
    m = len(event)
    first = np.zeros(m, bool)
    first[np.concatenate([[0], np.cumsum(npv)[:-1]])] = True
    ndof = np.where(first, rng.gamma(4.0, 30.0, m), rng.gamma(1.3, 16.0, m)) + 0.01
    fields = {
        "chi2": np.maximum(ndof * rng.normal(0.8, 0.15, m), 0.0),
        "ndof": ndof,
        "x": rng.normal(0.1049, 0.0095, m),
        "y": rng.normal(0.1687, 0.0090, m),
        "z": rng.normal(-1.2, 5.5, m),
    }
    good = npv - rng.binomial(npv - 1, 0.08)
    coll = COLLECTION_BY_NAME["PV"]
    jag = Jagged(npv.astype(np.int32), {f: fields[f].astype(dt) for f, dt in coll.fields})
    return jag, {"PV_npvs": npv.astype(np.int32), "PV_npvsGood": good.astype(np.int32)}


def _met(
    rng: np.random.Generator,
    n: int,
    neutrinos: ParticleTable,
    lost: tuple[np.ndarray, np.ndarray],
    jets: Jagged,
    leptons: list[Jagged],
    d: DetectorParams,
) -> dict[str, np.ndarray]:
    nu_px = np.bincount(neutrinos.event, neutrinos.p4.px, n)
    nu_py = np.bincount(neutrinos.event, neutrinos.p4.py, n)
    jet_event = np.repeat(np.arange(n), jets.counts)
    jpt = jets.fields["pt"].astype(np.float64)
    jraw = jets.fields["pt_uncorr"].astype(np.float64)
    jphi = jets.fields["phi"].astype(np.float64)
    sum_et = np.bincount(jet_event, jpt, n) + d.unclustered_et * rng.gamma(4.0, 0.25, n)
    for lep in leptons:
        sum_et += np.bincount(np.repeat(np.arange(n), lep.counts), lep.fields["pt"].astype(np.float64), n)
    sigma = d.met_resolution * np.sqrt(sum_et)
    px = nu_px + lost[0] + sigma * rng.standard_normal(n)
    py = nu_py + lost[1] + sigma * rng.standard_normal(n)
    # raw MET: jets at their uncorrected scale
    raw_px = px + np.bincount(jet_event, (jpt - jraw) * np.cos(jphi), n)
    raw_py = py + np.bincount(jet_event, (jpt - jraw) * np.sin(jphi), n)
    raw_et = sum_et - np.bincount(jet_event, jpt - jraw, n)
    pt = np.hypot(px, py)
    return {
        "met_e": sum_et,
        "met_pt": pt,
        "met_px": px,
        "met_py": py,
        "met_phi": np.arctan2(py, px),
        "met_significance": pt**2 / sigma**2,
        "met_rawpt": np.hypot(raw_px, raw_py),
        "met_rawphi": np.arctan2(raw_py, raw_px),
        "met_rawe": raw_et,
    }


def _genpart(n: int, record: ParticleTable) -> Jagged:
    p4 = record.p4
    kin = {"pt": p4.pt, "eta": p4.eta, "phi": p4.phi, "mass": np.maximum(p4.mass, 0.0)}
    extra = {"pdgId": record.pdg, "status": record.status}
    order = np.argsort(record.event, kind="stable")
    kin = {k: v[order] for k, v in kin.items()}
    extra = {k: v[order] for k, v in extra.items()}
    jag = _finish(n, "GenPart", record.event[order], kin, extra, sort_by_pt=False)
    # keep the generator's own momenta (exact for boosted massive particles)
    for comp in ("px", "py", "pz"):
        jag.fields[comp] = getattr(p4, comp)[order].astype(np.float32)
    return jag


# --------------------------------------------------------------------------------------------
def _empty(name: str, n: int) -> Jagged:
    return Jagged(np.zeros(n, np.int32), {f: np.zeros(0, dt) for f, dt in COLLECTION_BY_NAME[name].fields})


def simulate(
    rng: np.random.Generator, hard: HardEvent, d: DetectorParams, with_genpart: bool = True, minimal: bool = False
) -> EventBatch:
    """Reconstruct ``hard``'s events; returns the batch in the ntuple layout.

    ``minimal=True`` leaves photons, taus, trigger objects and vertices empty (fast physics
    studies); the other collections are identical to a full simulation of the same seed.
    """
    n, fin = hard.n, hard.final
    apdg = np.abs(fin.pdg)
    partons = fin[(apdg <= 5) | (apdg == 21)]
    flavour = np.where(np.abs(partons.pdg) == 5, 5, np.where(np.abs(partons.pdg) == 4, 4, 0))
    tau_h = fin[apdg == 15]

    parton_jets, sl_leptons, lost = _reconstruct_jets(rng, n, partons, flavour, d)
    tau_jets, _, tau_lost = _reconstruct_jets(rng, n, tau_h, np.zeros(len(tau_h), np.int64), d)
    jets = _jets(rng, n, [parton_jets, tau_jets, _pileup_jets(rng, n, d)], d)
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
    collections = {"electron": electrons, "jet": jets, "muon": muons}
    # Everything below is drawn after the analysis objects, so skipping it (``minimal``) leaves
    # jets, leptons and MET of a seed unchanged.
    if minimal:
        collections.update({name: _empty(name, n) for name in ("photon", "PV", "tau", "trigobj")})
        pv_scalars = {k: np.zeros(n, np.int32) for k in ("PV_npvs", "PV_npvsGood")}
    else:
        photons = _photons(rng, n, d, jets.counts)
        pv, pv_scalars = _vertices(rng, n, d)
        collections.update(
            photon=photons,
            tau=_taus(rng, n, tau_h, jets, d),
            trigobj=_trigger_objects(rng, n, [jets, electrons, muons, photons], d),
            PV=pv,
        )
    collections["GenPart"] = _genpart(n, hard.record if with_genpart else ParticleTable.empty())
    return EventBatch(n, collections, {**met, **pv_scalars})
