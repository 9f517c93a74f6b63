"""The AGC ttbar selection in plain columnar coffea/awkward code: the specification.

:mod:`utils.processing.selection` computes the same in one numba pass over the events (the fast
path the processor uses); ``tests/processing/test_reference.py`` checks that both agree event by
event under every jet variation. Each step below is one function; every cut is read from the
:class:`~utils.config.AnalysisConfig`. Cuts compare the stored values promoted to double
precision, as the kernel does, so both select the same events. The features are computed in
double precision; the kernel takes sin/cos/sinh of the single-precision eta and phi in single
precision and the smallest eigenvalue in closed form, so features agree to about 1e-7 relative
(aplanarity to 1e-10 absolute).

1. :func:`varied_jets`: the jets under a jet variation (nominal, pt scale, pt resolution)
2. :func:`select_objects`: leptons and jets above their pT thresholds, b-tagged jets
3. :func:`event_selection`: the named event cuts and the regions, in a ``PackedSelection``
4. :func:`event_features`: HT, the b-tagged trijet and its mass, and the other ML features
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np
from coffea.analysis_tools import PackedSelection
from coffea.nanoevents.methods import vector

from utils.config import AnalysisConfig
from utils.processing.randoms import jet_resolution_factors
from utils.processing.selection import FEATURE_NAMES, JetMode, jet_mode

# names of the event cuts in the PackedSelection (the keys of ``event_selection`` in the
# configuration); each region adds one more cut named after the region
EVENT_CUTS: tuple[str, ...] = ("n_leptons", "min_jets", "min_btags")


def _double(array: ak.Array) -> ak.Array:
    return ak.values_astype(array, np.float64)


# --- step 1: jets under a jet variation -------------------------------------------------------


def varied_jets(events, config: AnalysisConfig, variation: str) -> ak.Array:
    """The jets with their four-momenta under ``variation``: pt and mass times one factor per
    jet (1, the configured scale factor, or the jet's resolution smearing factor), eta and phi
    unchanged."""
    jets = events.jet
    mode = jet_mode(config, variation)
    if mode == JetMode.NOMINAL:
        factor = 1.0
    elif mode == JetMode.SCALE:
        factor = config.pt_scale_factor
    else:  # the kernel's own per-jet random numbers (a hash of the jet, seeded by the configuration)
        pt, eta, phi = (ak.to_numpy(ak.flatten(jets[f])) for f in ("pt", "eta", "phi"))
        smear = jet_resolution_factors(pt, eta, phi, seed=config.pt_res_seed, sigma=config.pt_res_sigma)
        factor = ak.unflatten(smear, ak.num(jets.pt))
    return ak.zip(
        {
            "pt": _double(jets.pt) * factor,
            "eta": _double(jets.eta),
            "phi": _double(jets.phi),
            "mass": _double(jets.mass) * factor,
            "btag": _double(jets.btag),
        },
        with_name="PtEtaPhiMLorentzVector",
        behavior=vector.behavior,
    )


# --- step 2: objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Objects:
    """The selected objects of every event (jagged arrays)."""

    lepton_pt: ak.Array  # electrons and muons with pT > lepton_pt_min
    jets: ak.Array  # jets with (varied) pT > jet_pt_min, in stored order
    bjets: ak.Array  # the selected jets with btag > btag_threshold


def select_objects(events, jets: ak.Array, config: AnalysisConfig) -> Objects:
    """Leptons and (varied) jets above their pT thresholds; b-tagged jets among the selected jets."""
    electron_pt = _double(events.electron.pt)
    muon_pt = _double(events.muon.pt)
    lepton_pt = ak.concatenate(
        [electron_pt[electron_pt > config.lepton_pt_min], muon_pt[muon_pt > config.lepton_pt_min]], axis=1
    )
    jets = jets[jets.pt > config.jet_pt_min]
    return Objects(lepton_pt, jets, jets[jets.btag > config.btag_threshold])


# --- step 3: event cuts and regions ----------------------------------------------------------


def event_selection(objects: Objects, config: AnalysisConfig) -> PackedSelection:
    """The cuts :data:`EVENT_CUTS` and one cut per region (its b-tag count range)."""
    n_b = ak.to_numpy(ak.num(objects.bjets))
    selection = PackedSelection()
    selection.add("n_leptons", ak.to_numpy(ak.num(objects.lepton_pt)) == config.n_leptons)
    selection.add("min_jets", ak.to_numpy(ak.num(objects.jets)) >= config.min_jets)
    selection.add("min_btags", n_b >= config.min_btags)
    for region in config.regions:
        at_most = np.inf if region.max_btags is None else region.max_btags
        selection.add(region.name, (n_b >= region.min_btags) & (n_b <= at_most))
    return selection


def event_regions(selection: PackedSelection, config: AnalysisConfig) -> np.ndarray:
    """Index into ``config.regions`` of each event passing the event cuts (the first region
    that holds it), -1 for the others."""
    region = np.full(len(selection.all(*EVENT_CUTS)), -1, dtype=np.int64)
    for r, reg in enumerate(config.regions):
        region[(region < 0) & selection.all(*EVENT_CUTS, reg.name)] = r
    return region


def cutflow(selection: PackedSelection, config: AnalysisConfig) -> dict[str, int]:
    """Events passing each event cut and all cuts before it, then each region's events."""
    flow = {name: int(selection.all(*EVENT_CUTS[: i + 1]).sum()) for i, name in enumerate(EVENT_CUTS)}
    flow.update({r.name: int(selection.all(*EVENT_CUTS, r.name).sum()) for r in config.regions})
    return flow


# --- step 4: observables and ML features -----------------------------------------------------


def _smallest_sphericity_eigenvalue(jets: ak.Array) -> np.ndarray:
    """Smallest eigenvalue of the sphericity tensor S_ab = sum_jets p_a p_b / sum_jets |p|^2."""
    p = [jets.px, jets.py, jets.pz]
    norm = ak.to_numpy(ak.sum(jets.px**2 + jets.py**2 + jets.pz**2, axis=1))
    tensor = np.stack([np.stack([ak.to_numpy(ak.sum(a * b, axis=1)) for b in p], axis=-1) for a in p], axis=-1)
    return np.linalg.eigvalsh(tensor / norm[:, None, None])[:, 0]


def event_features(objects: Objects, config: AnalysisConfig) -> dict[str, np.ndarray]:
    """The per-event features (float64 arrays) named by :data:`FEATURE_NAMES`.

    The hadronic top candidate is the trijet, among those with at least one b-tagged jet, with
    the largest vector-sum pT (the first such trijet in jet order on a tie); NaN when none.
    """
    jets = objects.jets
    trijets = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
    is_b = [trijets[j].btag > config.btag_threshold for j in ("j1", "j2", "j3")]
    trijets = trijets[is_b[0] | is_b[1] | is_b[2]]
    p4 = trijets.j1 + trijets.j2 + trijets.j3
    best = ak.argmax(p4.pt, axis=1, keepdims=True)
    top, top_jets = ak.firsts(p4[best]), ak.firsts(trijets[best])
    j1, j2, j3 = top_jets.j1, top_jets.j2, top_jets.j3
    mean_delta_r = (j1.delta_r(j2) + j1.delta_r(j3) + j2.delta_r(j3)) / 3.0
    features = {
        "ht": ak.sum(jets.pt, axis=1),
        "m_bjj": top.mass,
        "trijet_mean_delta_r": mean_delta_r,  # mean Delta R of the three jet pairs of the trijet
        "aplanarity": 1.5 * np.maximum(_smallest_sphericity_eigenvalue(jets), 0.0),  # 3/2 x smallest eigenvalue
        "lepton_pt": ak.sum(objects.lepton_pt, axis=1),  # the scalar sum: the lepton's pT
        "leading_jet_pt": ak.max(jets.pt, axis=1),
    }
    return {name: ak.to_numpy(ak.fill_none(features[name], np.nan), allow_missing=False) for name in FEATURE_NAMES}


def weight_jet_pt(objects: Objects, config: AnalysisConfig) -> np.ndarray:
    """pT of the first ``btag_n_jets`` selected jets (0 where an event has fewer), for the b-tag weights."""
    padded = ak.pad_none(objects.jets.pt, config.btag_n_jets, axis=1, clip=True)
    return ak.to_numpy(ak.fill_none(padded, 0.0), allow_missing=False)


# --- the selection of one variation ----------------------------------------------------------


@dataclass(frozen=True)
class ReferenceSelection:
    """Selected events under one jet variation.

    ``index``: positions of the selected events in the input; ``region``: index into
    ``config.regions``; ``observable``: the region's configured observable; ``features``: one row
    per selected event, columns ``feature_names``; ``cutflow``: see :func:`cutflow`.
    """

    variation: str
    index: np.ndarray
    region: np.ndarray
    observable: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    weight_jet_pt: np.ndarray
    cutflow: dict[str, int]

    def feature(self, name: str) -> np.ndarray:
        return self.features[:, self.feature_names.index(name)]


def reference_selection(events, config: AnalysisConfig, variation: str = "nominal") -> ReferenceSelection:
    """Steps 1 to 4 for one jet variation. ``events``: NanoEvents of the AGC schema, or any record
    array with ``jet`` (pt, eta, phi, mass, btag), ``electron.pt`` and ``muon.pt``."""
    objects = select_objects(events, varied_jets(events, config, variation), config)
    selection = event_selection(objects, config)
    region = event_regions(selection, config)
    index = np.flatnonzero(region >= 0)
    region = region[index]
    selected = Objects(objects.lepton_pt[index], objects.jets[index], objects.bjets[index])
    features = event_features(selected, config)
    observable = np.empty(len(index), dtype=np.float64)
    for r, reg in enumerate(config.regions):
        observable[region == r] = features[reg.observable][region == r]
    return ReferenceSelection(
        variation=variation,
        index=index,
        region=region,
        observable=observable,
        features=np.column_stack([features[n] for n in FEATURE_NAMES]),
        feature_names=FEATURE_NAMES,
        weight_jet_pt=weight_jet_pt(selected, config),
        cutflow=cutflow(selection, config),
    )
