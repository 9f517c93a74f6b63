"""A small NanoAOD file of semileptonic ttbar events with GenPart decay chains, for the
jet-assignment tests (a stand-in until the embedded NanoAOD generator provides such files).

Each event: t -> t (last copy) -> W b, W -> q q' (hadronic) or mu nu (leptonic), and 0-2 ISR
gluons. Jets are the four quarks and the gluons, smeared (10 % in pT, 0.03 in eta and phi),
b-tagged with 75 % efficiency (5 % mistag); one tight muon from the leptonic W.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

LAST_COPY = 1 << 13
M_TOP, M_W, M_B = 172.5, 80.4, 4.8


def _two_body(rng, parent, m1, m2):
    """Decay four-vectors parent [n, 4] (px, py, pz, E) isotropically into masses m1, m2."""
    n = len(parent)
    m = np.sqrt(np.maximum(parent[:, 3] ** 2 - (parent[:, :3] ** 2).sum(1), 1e-9))
    p = np.sqrt(np.maximum((m**2 - (m1 + m2) ** 2) * (m**2 - (m1 - m2) ** 2), 0)) / (2 * m)
    cos, phi = rng.uniform(-1, 1, n), rng.uniform(-np.pi, np.pi, n)
    sin = np.sqrt(1 - cos**2)
    d = np.stack([p * sin * np.cos(phi), p * sin * np.sin(phi), p * cos], 1)
    out = []
    for mass, sign in ((m1, 1), (m2, -1)):
        q = sign * d
        e = np.sqrt((q**2).sum(1) + mass**2)
        beta = parent[:, :3] / parent[:, 3:4]
        b2 = (beta**2).sum(1)
        gamma = 1 / np.sqrt(1 - b2)
        bp = (beta * q).sum(1)
        k = np.where(b2 > 0, (gamma - 1) * bp / np.where(b2 > 0, b2, 1), 0)
        out.append(np.column_stack([q + beta * (k + gamma * e)[:, None], gamma * (e + bp)]))
    return out


def _pt_eta_phi_m(v):
    pt = np.hypot(v[:, 0], v[:, 1])
    return (
        pt,
        np.arcsinh(v[:, 2] / pt),
        np.arctan2(v[:, 1], v[:, 0]),
        np.sqrt(np.maximum(v[:, 3] ** 2 - (v[:, :3] ** 2).sum(1), 0)),
    )


def write_ttbar_nanoaod(path: Path, n_events: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    tops = []
    for _ in range(2):
        pt, eta, phi = (
            rng.exponential(90, n_events) + 10,
            rng.normal(0, 1.0, n_events),
            rng.uniform(-np.pi, np.pi, n_events),
        )
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        tops.append(np.column_stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + M_TOP**2)]))
    hadronic_first = rng.random(n_events) < 0.5  # the top (not the antitop) decays hadronically
    decays = [_two_body(rng, t, M_W, M_B) for t in tops]  # (W, b) of t and tbar
    w_daughters = [_two_body(rng, w, 0.0, 0.0) for w, _ in decays]
    events_gen, events_jets = [], []
    muons = []
    for i in range(n_events):
        had = 0 if hadronic_first[i] else 1
        parts = [  # (pdgId, mother, flags, four-vector)
            (6, -1, 0, tops[0][i]), (-6, -1, 0, tops[1][i]), (6, 0, LAST_COPY, tops[0][i]), (-6, 1, LAST_COPY, tops[1][i]),
            (24, 2, LAST_COPY, decays[0][0][i]), (5, 2, LAST_COPY, decays[0][1][i]),
            (-24, 3, LAST_COPY, decays[1][0][i]), (-5, 3, LAST_COPY, decays[1][1][i]),
        ]  # fmt: skip
        for t, w_index in ((0, 4), (1, 6)):
            sign = 1 if t == 0 else -1
            d1, d2 = w_daughters[t][0][i], w_daughters[t][1][i]
            pdg = (2 * sign, -1 * sign) if t == had else (-13 * sign, 14 * sign)
            parts += [(pdg[0], w_index, LAST_COPY, d1), (pdg[1], w_index, LAST_COPY, d2)]
        for _ in range(rng.integers(0, 3)):
            pt, eta, phi = 30 + rng.exponential(25), rng.normal(0, 1.5), rng.uniform(-np.pi, np.pi)
            parts.append((21, -1, LAST_COPY, np.array([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta),
                                                      pt * np.cosh(eta)])))  # fmt: skip
        vec = np.array([p[3] for p in parts])
        pt, eta, phi, mass = _pt_eta_phi_m(vec)
        events_gen.append({"pdgId": [p[0] for p in parts], "genPartIdxMother": [p[1] for p in parts],
                           "statusFlags": [p[2] for p in parts], "status": [62 if p[2] else 22 for p in parts],
                           "pt": pt, "eta": eta, "phi": phi, "mass": mass})  # fmt: skip
        jets = []
        for k, (pdg, *_rest) in enumerate(parts):
            if (abs(pdg) <= 5 and k >= 4) or pdg == 21:
                is_b = abs(pdg) == 5
                tagged = rng.random() < (0.75 if is_b else 0.05)
                jets.append({"pt": pt[k] * rng.normal(1, 0.1), "eta": eta[k] + rng.normal(0, 0.03),
                             "phi": phi[k] + rng.normal(0, 0.03), "mass": max(mass[k], 0) + 5 * rng.random(),
                             "btagCSVV2": rng.uniform(0.6, 1.0) if tagged else rng.uniform(0.0, 0.45),
                             "qgl": rng.random(), "jetId": 6})  # fmt: skip
        jets.sort(key=lambda j: -j["pt"])
        events_jets.append(jets)
        mu = next(k for k, p in enumerate(parts) if abs(p[0]) == 13)
        muons.append(
            [
                {
                    "pt": pt[mu] * rng.normal(1, 0.02),
                    "eta": eta[mu],
                    "phi": phi[mu],
                    "mass": 0.1057,
                    "tightId": True,
                    "sip3d": 1.0,
                    "pfRelIso04_all": 0.05,
                    "charge": -int(np.sign(parts[mu][0])),
                }
            ]
        )

    def coll(rows, dtypes):
        return ak.zip(
            {f: ak.values_astype(ak.Array([[r[f] for r in ev] for ev in rows]), t) for f, t in dtypes.items()}
        )

    def gen(rows, dtypes):
        return ak.zip({f: ak.values_astype(ak.Array([list(ev[f]) for ev in rows]), t) for f, t in dtypes.items()})

    f32, i32 = np.float32, np.int32
    data = {
        "run": np.ones(n_events, np.uint32),
        "luminosityBlock": np.full(n_events, 3, np.uint32),
        "event": np.arange(1, n_events + 1, dtype=np.uint64),
        "Jet": coll(events_jets, {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "btagCSVV2": f32, "qgl": f32,
                                  "jetId": i32}),
        "Muon": coll(muons, {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "tightId": bool, "sip3d": f32,
                             "pfRelIso04_all": f32, "charge": i32}),
        "Electron": coll([[] for _ in range(n_events)], {"pt": f32, "eta": f32, "phi": f32, "mass": f32,
                                                         "cutBased": i32, "sip3d": f32, "charge": i32}),
        "GenPart": gen(events_gen, {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "pdgId": i32,
                                    "genPartIdxMother": i32, "status": i32, "statusFlags": i32}),
    }  # fmt: skip
    with uproot.recreate(path) as f:
        f.mktree("Events", data)
    return path
