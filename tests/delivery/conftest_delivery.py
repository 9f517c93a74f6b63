"""Reusable pieces for tests of the ServiceX stage: small files in the 2015 ntuple layout, the
hand-written skim, and a module-scoped local endpoint with its servicex.yaml.

Use from a test module in ``tests/`` (module attributes that are fixtures are registered)::

    import conftest_delivery as shared
    workdir, inputs, endpoint, sx_config = shared.workdir, shared.inputs, shared.endpoint, shared.sx_config
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from utils.config import load_analysis_config
from utils.delivery import write_local_config
from utils.delivery.local import LocalEndpoint
from utils.processing.selection import READ_BRANCHES


# -- input files in the 2015 ntuple layout --------------------------------------------------------
def _jagged(counts, draw):
    return ak.unflatten(draw(int(counts.sum())), counts)


def write_ntuple(path: Path, n_events: int, seed: int) -> Path:
    """A small file in the 2015 POET ntuple layout: ``number<coll>`` int32 counters, jagged
    ``<coll>_<field>`` branches (uproot adds ``n<coll>_<field>`` counters) and unused branches.
    Some values sit exactly on the cut values, so strict and non-strict cuts would differ."""
    cfg = load_analysis_config()
    rng = np.random.default_rng(seed)
    n_jet = rng.poisson(5, n_events).astype(np.int32)
    n_el = rng.poisson(0.7, n_events).astype(np.int32)
    n_mu = rng.poisson(0.7, n_events).astype(np.int32)

    def f32(scale):
        return lambda k: rng.exponential(scale, k).astype(np.float32)

    jet_pt = rng.exponential(35, int(n_jet.sum())).astype(np.float32)
    jet_pt[::7] = cfg.loosest_jet_pt
    btag = rng.uniform(0, 1, int(n_jet.sum()))
    btag[::5] = cfg.btag_threshold
    el_pt = rng.exponential(30, int(n_el.sum())).astype(np.float32)
    el_pt[::4] = cfg.lepton_pt_min
    data = {
        "numberjet": n_jet,
        "numberelectron": n_el,
        "numbermuon": n_mu,
        "jet_pt": ak.unflatten(jet_pt, n_jet),
        "jet_eta": _jagged(n_jet, lambda k: rng.normal(0, 1.5, k).astype(np.float32)),
        "jet_phi": _jagged(n_jet, lambda k: rng.uniform(-np.pi, np.pi, k).astype(np.float32)),
        "jet_mass": _jagged(n_jet, f32(8)),
        "jet_e": _jagged(n_jet, f32(60)),
        "jet_btag": ak.unflatten(btag, n_jet),
        "jet_px": _jagged(n_jet, f32(20)),  # unused
        "electron_pt": ak.unflatten(el_pt, n_el),
        "electron_eta": _jagged(n_el, lambda k: rng.normal(0, 1, k).astype(np.float32)),  # unused
        "muon_pt": _jagged(n_mu, f32(30)),
        "met_pt": rng.exponential(30, n_events).astype(np.float32),  # unused
    }
    with uproot.recreate(path) as f:
        tree = f.mktree(
            "events", {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()}
        )
        tree.extend(data)
    return path


def direct_selection(path: str | Path, tree: str = "events") -> ak.Array:
    """The skim written out by hand from the configuration values, read with uproot directly."""
    cfg = load_analysis_config()
    a = uproot.open(path)[tree].arrays(list(READ_BRANCHES))
    n_lep = ak.sum(a.electron_pt > cfg.lepton_pt_min, axis=1) + ak.sum(a.muon_pt > cfg.lepton_pt_min, axis=1)
    jets = a.jet_pt > cfg.loosest_jet_pt
    btags = jets & (a.jet_btag > cfg.btag_threshold)
    keep = (n_lep == cfg.n_leptons) & (ak.sum(jets, axis=1) >= cfg.min_jets) & (ak.sum(btags, axis=1) >= cfg.min_btags)
    return a[keep]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("delivery")


@pytest.fixture(scope="module")
def inputs(workdir) -> list[Path]:
    paths = [write_ntuple(workdir / f"ntuple_{i}.root", n, seed=i) for i, n in enumerate((400, 300, 250))]
    for p in paths:  # the fixture is only useful if some, but not all, events pass
        assert 0 < len(direct_selection(p)) < 200
    return paths


@pytest.fixture(scope="module")
def endpoint(workdir):
    with LocalEndpoint(workdir / "endpoint-state", port=0, workers=2) as ep:
        yield ep


@pytest.fixture(scope="module")
def sx_config(workdir, endpoint) -> Path:
    return write_local_config(workdir / "servicex.yaml", endpoint.url, workdir / "client-cache", endpoint.token)
