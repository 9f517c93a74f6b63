"""Detector response, the parts every collection shares (sorting into the ntuple layout, noise
fields) and the collections beside the analysis objects: photons, taus, trigger objects,
vertices, MET and the generator record."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from utils.datasets.embedded.events import Jagged
from utils.datasets.embedded.kinematics import P4
from utils.datasets.embedded.params import DetectorParams
from utils.datasets.embedded.particles import Origin, ParticleTable
from utils.datasets.embedded.schema import COLLECTION_BY_NAME


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
    counts = np.sum([s.counts.astype(np.int64) for s in sources], axis=0)
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
    # origin and top_sign stay beside the record as truth (not written): the NanoAOD writer
    # rebuilds the decay chains (mother indices) from them
    truth = {"origin": record.origin[order], "top_sign": record.top_sign[order]}
    jag = _finish(n, "GenPart", record.event[order], kin, extra, truth, sort_by_pt=False)
    # keep the generator's own momenta (exact for boosted massive particles)
    for comp in ("px", "py", "pz"):
        jag.fields[comp] = getattr(p4, comp)[order].astype(np.float32)
    return jag
