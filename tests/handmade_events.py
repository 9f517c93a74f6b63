"""Hand-made events with hand-computed answers, shared by the selection and ML tests."""

from __future__ import annotations

import math

import awkward as ak

from utils.config import load_analysis_config

CFG = load_analysis_config()
TETRA_PT = 30.0 * math.sqrt(2.0)  # |p| = 30*sqrt(3) along (1, 1, 1)-type directions
TETRA_ETA = math.asinh(1.0 / math.sqrt(2.0))


def make_events(events):
    """events: list of dicts with jets [(pt, eta, phi, mass, btag)], electrons [pt], muons [pt]."""
    jets = [[dict(zip(("pt", "eta", "phi", "mass", "btag"), j, strict=True)) for j in e["jets"]] for e in events]
    return ak.Array(
        {
            "jet": ak.Array(jets, with_name=None),
            "electron": ak.zip({"pt": ak.Array([e.get("electrons", []) for e in events], with_name=None)}),
            "muon": ak.zip({"pt": ak.Array([e.get("muons", []) for e in events], with_name=None)}),
        }
    )


EVENTS = [
    # 0: 4j2b; hand-computed below
    {"jets": [(80, 0, 0, 0, 0.9), (60, 0, math.pi / 2, 0, 0.1), (40, 0, math.pi, 0, 0.8), (30, 0, -math.pi / 2, 0, 0.2)],
     "electrons": [35.0]},
    # 1: two leptons -> rejected
    {"jets": [(80, 0, 0, 0, 0.9), (60, 0, 1, 0, 0.1), (40, 0, 2, 0, 0.8), (30, 0, 3, 0, 0.2)],
     "electrons": [35.0], "muons": [30.0]},
    # 2: fourth jet at 24.5 GeV: selected only under pt_scale_up (x1.03 -> 25.235), 4j1b
    {"jets": [(70, 0.1, 0.5, 5, 0.7), (50, -0.3, 2.0, 5, 0.2), (40, 1.0, -2.0, 5, 0.1), (24.5, 0.2, 3.0, 5, 0.3)],
     "muons": [40.0]},
    # 3: tetrahedral jets (isotropic tensor: aplanarity 0.5), one b-tag -> 4j1b
    {"jets": [(TETRA_PT, TETRA_ETA, math.pi / 4, 0, 0.95), (TETRA_PT, -TETRA_ETA, -math.pi / 4, 0, 0.1),
              (TETRA_PT, -TETRA_ETA, 3 * math.pi / 4, 0, 0.1), (TETRA_PT, TETRA_ETA, -3 * math.pi / 4, 0, 0.1)],
     "muons": [27.0], "electrons": [10.0]},
    # 4: b-tag exactly at the threshold is not a tag (strict >) -> no b-tag -> rejected
    {"jets": [(80, 0, 0, 0, 0.5), (60, 0, 1, 0, 0.1), (40, 0, 2, 0, 0.1), (30, 0, 3, 0, 0.2)], "electrons": [35.0]},
    # 5: lepton exactly at 25 GeV is not selected -> zero leptons -> rejected
    {"jets": [(80, 0, 0, 0, 0.9), (60, 0, 1, 0, 0.1), (40, 0, 2, 0, 0.1), (30, 0, 3, 0, 0.2)], "electrons": [25.0]},
    # 6: Delta phi across the +-pi boundary inside the chosen trijet; 5 jets, 2 b-tags
    {"jets": [(90, 0, 3.0, 0, 0.9), (70, 0, -3.0, 0, 0.9), (50, 0.5, 3.1, 0, 0.1), (30, 0, 0.0, 0, 0.1),
              (26, 2.0, 1.5, 0, 0.1)], "muons": [50.0]},
]  # fmt: skip
