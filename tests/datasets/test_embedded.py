"""Tests of the embedded-dataset generator (utils.datasets.embedded).

The selection used here is an oracle written independently of the analysis code (plain
awkward/numpy on the branches), and the schema is checked against the facts sheet's table typed
out below, not against utils/datasets/embedded/schema.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from utils.cli.generate import generate as generate_command
from utils.config import REPO_ROOT, load_analysis_config
from utils.datasets.embedded import (
    PROCESSES,
    ProcessSpec,
    build_dataset,
    generate_data_events,
    generate_events,
    generate_file,
    get_preset,
    load_presets,
    register_process,
)
from utils.datasets.embedded import dataset as dataset_module
from utils.datasets.embedded.generator import model_fingerprint
from utils.datasets.embedded.presets import expected_data_yields, process_cross_sections
from utils.datasets.embedded.processes import TTBAR_PARAMS, build_top_pair
from utils.errors import ConfigError

REAL_LIST = REPO_ROOT / "datasets" / "cms-open-data-2015" / "ntuples_merged.json"
XSEC = {
    k: v for k, v in json.loads((REPO_ROOT / "datasets" / "cross_sections.json").read_text()).items() if k[0] != "_"
}
CFG = load_analysis_config()
LUMI = CFG.luminosity
ANALYSIS_BRANCHES = ("jet_pt", "jet_eta", "jet_phi", "jet_e", "jet_btag", "electron_pt", "muon_pt")

# The facts sheet's schema table: collection -> (object counter, {field: dtype}).
F4, F8, I4, B = "float32", "float64", "int32", "bool"
_MOM = dict.fromkeys(("e", "pt", "px", "py", "pz", "eta", "phi"), F4)
FACTS: dict[str, tuple[str | None, dict[str, str]]] = {
    "electron": (
        "numberelectron",
        {
            **_MOM,
            **dict.fromkeys(("ch", "iso", "dxy", "dz", "dxyError", "dzError"), F4),
            **dict.fromkeys(("isLoose", "isMedium", "isTight"), B),
        },
    ),
    "muon": (
        "numbermuon",
        {
            **_MOM,
            **dict.fromkeys(
                ("ch", "dxy", "dz", "dxyError", "dzError", "pfreliso03all", "pfreliso04all", "jetidx", "genpartidx"), F4
            ),
            "isSoft": I4,
            "isTight": I4,
        },
    ),
    "jet": ("numberjet", {**_MOM, "ch": F4, "mass": F4, "pt_uncorr": F4, "btag": F8}),
    "photon": (
        "numberphoton",
        {
            **_MOM,
            **dict.fromkeys(("ch", "chIso", "nhIso", "phIso"), F4),
            **dict.fromkeys(("isLoose", "isMedium", "isTight"), B),
        },
    ),
    "tau": (
        "numbertau",
        {
            **_MOM,
            **dict.fromkeys(
                (
                    "ch",
                    "mass",
                    "decaymode",
                    "iddecaymode",
                    "idisoraw",
                    "idisovloose",
                    "idisoloose",
                    "idisomedium",
                    "idisotight",
                    "idantieletight",
                    "idantimutight",
                ),
                F4,
            ),
        },
    ),
    "trigobj": ("numbertrigobj", dict(_MOM)),
    "GenPart": (
        "numGenPart",
        {**dict.fromkeys(("pt", "eta", "mass", "phi", "px", "py", "pz"), F4), "pdgId": I4, "status": I4},
    ),
    "PV": (None, dict.fromkeys(("chi2", "ndof", "x", "y", "z"), F4)),
}
SCALARS = {
    **{f"met_{k}": F4 for k in ("e", "pt", "px", "py", "phi", "significance", "rawpt", "rawphi", "rawe")},
    "PV_npvs": I4,
    "PV_npvsGood": I4,
}

MINI_PRESETS = """
schema_version: 1
defaults: {seed: 7, events_per_basket: 400}
presets:
  mini:
    samples:
      ttbar: {nominal: {files: 2, events_per_file: 600}}
      wjets: {nominal: {files: 1, events_per_file: 500}}
    data: {enabled: true, lumi_fraction: 1.0e-5, files: 1}
"""


# ------------------------------------------------------------------------------------------
# the oracle: selection, regions and the hadronic-top candidate, independent of utils/
# ------------------------------------------------------------------------------------------
def _p4(jets):
    px, py = jets.pt * np.cos(jets.phi), jets.pt * np.sin(jets.phi)
    pz = jets.pt * np.sinh(jets.eta)
    return px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + jets.mass**2)


def _mass(*vectors):
    px, py, pz, e = (sum(v[i] for v in vectors) for i in range(4))
    return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)), np.hypot(px, py)


def select(arrays) -> dict[str, np.ndarray]:
    """Region masks (4j1b, 4j2b) from branch arrays, with the configured cuts."""
    jets = ak.zip({k: arrays[f"jet_{k}"] for k in ("pt", "eta", "phi", "mass", "btag")})
    jets = jets[jets.pt > CFG.jet_pt_min]
    nlep = ak.sum(arrays["electron_pt"] > CFG.lepton_pt_min, axis=1) + ak.sum(
        arrays["muon_pt"] > CFG.lepton_pt_min, axis=1
    )
    nb = ak.sum(jets.btag > CFG.btag_threshold, axis=1)
    base = ak.to_numpy((nlep == 1) & (ak.num(jets) >= 4) & (nb >= 1))
    nb = ak.to_numpy(nb)
    return {"4j1b": base & (nb == 1), "4j2b": base & (nb >= 2), "jets": jets}


def chosen_trijets(jets):
    """Per event, the trijet with the largest vector-sum pT among those with >= 1 b tag."""
    tri = ak.combinations(jets, 3, fields=["a", "b", "c"])
    mass, pt = _mass(_p4(tri.a), _p4(tri.b), _p4(tri.c))
    tagged = (tri.a.btag > 0.5) | (tri.b.btag > 0.5) | (tri.c.btag > 0.5)
    best = ak.argmax(ak.where(tagged, pt, -1.0), axis=1, keepdims=True)
    return ak.flatten(tri[best]), ak.to_numpy(ak.flatten(mass[best]))


def histogram_peak(values, lo, hi, width) -> float:
    """Centre of the highest bin after a 3-bin running mean."""
    counts, edges = np.histogram(values, bins=np.arange(lo, hi + width, width))
    smooth = np.convolve(counts, np.ones(3) / 3, mode="same")
    i = int(np.argmax(smooth))
    return 0.5 * (edges[i] + edges[i + 1])


def read_branches(paths, branches):
    return ak.concatenate([uproot.open(p)["events"].arrays(list(branches)) for p in paths])


def fileset_paths(fileset_path: Path) -> dict[str, list[Path]]:
    data = json.loads(fileset_path.read_text())
    return {
        f"{p}__{v}": [fileset_path.parent / f["path"] for f in e["files"]]
        for p, vs in data.items()
        for v, e in vs.items()
    }


def check_dataset_structure(data: dict) -> None:
    """The real list's structure: {process: {variation: {"files": [{"path", "nevts"}], "nevts_total"}}}
    (a generated data file also records its luminosity, "lumi")."""
    assert data
    for process, variations in data.items():
        for entry in variations.values():
            assert isinstance(entry["files"], list) and entry["files"]
            for f in entry["files"]:
                extra = set(f) - {"path", "nevts"}
                assert extra == set() or (process == "data" and "lumi" in entry and extra == {"lumi"})
                assert isinstance(f["path"], str) and f["nevts"] > 0
            assert entry["nevts_total"] == sum(f["nevts"] for f in entry["files"])


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_dataset) -> Path:
    """The tiny preset through the public API (conftest: ``ensure_dataset("tiny")``, cached)."""
    return tiny_dataset


@pytest.fixture(scope="module")
def physics():
    """Moderate in-memory samples (analysis collections only), ~4 s."""
    sizes = {
        "ttbar": 40_000,
        "single_top_s_chan": 20_000,
        "single_top_t_chan": 40_000,
        "single_top_tW": 20_000,
        "wjets": 300_000,
    }
    return {p: generate_events(p, "nominal", n, seed=101, minimal=True) for p, n in sizes.items()}


@pytest.fixture
def mini_presets(tmp_path) -> Path:
    path = tmp_path / "presets.yml"
    path.write_text(MINI_PRESETS)
    return path


# ------------------------------------------------------------------------------------------
# schema
# ------------------------------------------------------------------------------------------
def test_file_schema_matches_the_facts_sheet(tiny):
    path = fileset_paths(tiny)["ttbar__nominal"][0]
    with uproot.open(path) as f:
        assert f.keys(cycle=False) == ["events"]
        assert f.file.compression == uproot.ZLIB(1)
        tree = f["events"]
        assert tree.classname == "TTree"
        dtypes = {b.name: b.interpretation for b in tree.branches}
        arrays = tree.arrays()
    for name, (counter, fields) in FACTS.items():
        if counter is not None:
            assert dtypes[counter] == uproot.AsDtype(">i4")
        for field, dtype in fields.items():
            branch = f"{name}_{field}"
            assert isinstance(dtypes[branch], uproot.AsJagged), branch
            assert dtypes[branch].content.from_dtype == np.dtype(dtype).newbyteorder(">"), branch
            assert dtypes[f"n{branch}"] == uproot.AsDtype(">i4")
            lengths = ak.to_numpy(ak.num(arrays[branch]))
            assert np.array_equal(ak.to_numpy(arrays[f"n{branch}"]), lengths), branch
            if counter is not None:
                assert np.array_equal(ak.to_numpy(arrays[counter]), lengths), branch
    for branch, dtype in SCALARS.items():
        assert dtypes[branch] == uproot.AsDtype(np.dtype(dtype).newbyteorder(">")), branch
    assert ak.all((arrays["jet_btag"] >= 0) & (arrays["jet_btag"] <= 1))
    assert ak.sum(arrays["numberjet"]) > 0 and ak.sum(arrays["numGenPart"]) > 0


def test_branches_have_the_real_files_names_and_types(tiny, poet_file):
    with uproot.open(poet_file) as real, uproot.open(fileset_paths(tiny)["wjets__nominal"][0]) as ours:
        real_types = {b.name: str(b.interpretation) for b in real["events"].branches}
        our_types = {b.name: str(b.interpretation) for b in ours["events"].branches}
        assert ours.file.compression == real.file.compression
    assert set(our_types) <= set(real_types)
    assert {k: real_types[k] for k in our_types} == our_types


def test_kinematics_are_consistent(tiny):
    a = uproot.open(fileset_paths(tiny)["ttbar__nominal"][0])["events"].arrays()
    for coll in ("jet", "electron", "muon", "photon", "tau"):
        pt, phi, eta = (ak.flatten(a[f"{coll}_{k}"]).to_numpy().astype(np.float64) for k in ("pt", "phi", "eta"))
        for comp, expected in (("px", pt * np.cos(phi)), ("py", pt * np.sin(phi)), ("pz", pt * np.sinh(eta))):
            np.testing.assert_allclose(ak.flatten(a[f"{coll}_{comp}"]).to_numpy(), expected, rtol=1e-4, atol=1e-3)
        energy = ak.flatten(a[f"{coll}_e"]).to_numpy()
        assert np.all(energy >= pt * np.cosh(eta) * (1 - 1e-5))
    jet = {k: ak.flatten(a[f"jet_{k}"]).to_numpy().astype(np.float64) for k in ("pt", "eta", "e", "mass", "pt_uncorr")}
    m2 = jet["e"] ** 2 - (jet["pt"] * np.cosh(jet["eta"])) ** 2
    np.testing.assert_allclose(np.sqrt(np.maximum(m2, 0)), jet["mass"], rtol=0.02, atol=0.3)
    assert 2.0 < np.median(jet["mass"]) < 12.0 and np.percentile(jet["mass"], 95) < 30.0
    assert np.all(jet["pt_uncorr"] < jet["pt"]) and np.median(jet["pt_uncorr"] / jet["pt"]) > 0.85
    assert np.all(np.abs(jet["eta"]) < 2.5)
    # pT-ordered collections
    assert ak.all(a["jet_pt"][:, :-1] >= a["jet_pt"][:, 1:])


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    paths = [tmp_path / n for n in ("a.root", "b.root", "c.root")]
    for path, seed in zip(paths, (5, 5, 6), strict=True):
        generate_file("ttbar", "nominal", 1500, seed, path, file_index=1, events_per_basket=1000)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digest[0] == digest[1] != digest[2]
    a, c = (uproot.open(p)["events"].arrays(["jet_pt", "trigobj_pt"]) for p in (paths[0], paths[2]))
    assert not ak.array_equal(a.jet_pt, c.jet_pt)
    # the in-memory API reproduces the file's first chunk, noise collections included
    mem = generate_events("ttbar", "nominal", 1000, 5, file_index=1, chunk_index=0).branches()
    assert ak.array_equal(mem["jet_pt"], a.jet_pt[:1000]) and ak.array_equal(mem["trigobj_pt"], a.trigobj_pt[:1000])


def test_minimal_mode_and_file_index_streams():
    full = generate_events("wjets", "nominal", 2000, 3, file_index=2).branches()
    fast = generate_events("wjets", "nominal", 2000, 3, file_index=2, minimal=True).branches()
    for b in (*ANALYSIS_BRANCHES, "met_pt", "GenPart_pdgId"):
        assert ak.array_equal(full[b], fast[b]), b
    assert ak.sum(fast["numbertrigobj"]) == 0 < ak.sum(full["numbertrigobj"])
    other = generate_events("wjets", "nominal", 2000, 3, file_index=3, minimal=True).branches()
    assert not ak.array_equal(other["jet_pt"], fast["jet_pt"])


# ------------------------------------------------------------------------------------------
# physics
# ------------------------------------------------------------------------------------------
def test_btag_efficiency_by_generator_flavour(physics):
    batch = physics["ttbar"]
    arrays = batch.branches()
    flavour = ak.flatten(batch.truth_array("jet", "flavour")).to_numpy()
    pt = ak.flatten(arrays["jet_pt"]).to_numpy()
    tagged = ak.flatten(arrays["jet_btag"]).to_numpy() > CFG.btag_threshold
    eff = {f: tagged[(flavour == f) & (pt > 25)].mean() for f in (5, 4, 0)}
    assert 0.5 < eff[5] < 0.75
    assert 0.08 < eff[4] < 0.25
    assert eff[0] < 0.05


def test_top_and_w_mass_peaks_in_ttbar_4j2b(physics):
    batch = physics["ttbar"]
    arrays = batch.branches()
    sel = select(arrays)
    jets = sel["jets"][sel["4j2b"]]
    assert len(jets) > 1000
    trijet, m_bjj = chosen_trijets(jets)
    assert 160.0 <= histogram_peak(m_bjj, 50, 550, 10) <= 185.0
    # hadronic W candidate: the two untagged jets of a chosen trijet with exactly one tag
    tags = {k: ak.to_numpy(trijet[k].btag > CFG.btag_threshold) for k in "abc"}
    one_tag = sum(tags.values()) == 1
    m_jj = []
    for tagged, (x, y) in (("a", "bc"), ("b", "ac"), ("c", "ab")):
        use = one_tag & tags[tagged]
        m_jj.append(ak.to_numpy(_mass(_p4(trijet[x][use]), _p4(trijet[y][use]))[0]))
    assert 70.0 <= histogram_peak(np.concatenate(m_jj), 0, 250, 10) <= 92.0
    # truth-matched W daughters (same parent top) in all events
    origin, top_sign = (batch.truth_array("jet", k) for k in ("origin", "top_sign"))
    jets_all = ak.zip({k: arrays[f"jet_{k}"] for k in ("pt", "eta", "phi", "mass")})
    w_jets = jets_all[origin == 2]
    pair = ak.combinations(ak.zip({"j": w_jets, "s": top_sign[origin == 2]}), 2, fields=["x", "y"])
    pair = pair[pair.x.s == pair.y.s]
    m_w = ak.flatten(_mass(_p4(pair.x.j), _p4(pair.y.j))[0]).to_numpy()
    assert 75.0 <= histogram_peak(m_w, 0, 250, 5) <= 88.0


def test_region_composition_is_realistic(physics):
    yields = {}
    for process, batch in physics.items():
        sel = select(batch.branches())
        weight = XSEC[process] * LUMI / batch.n
        yields[process] = {r: sel[r].sum() * weight for r in ("4j1b", "4j2b")}
    frac = {r: yields["ttbar"][r] / sum(y[r] for y in yields.values()) for r in ("4j1b", "4j2b")}
    assert 0.65 <= frac["4j1b"] <= 0.85, frac
    assert 0.85 <= frac["4j2b"] <= 0.95, frac
    backgrounds = {p: y["4j1b"] for p, y in yields.items() if p != "ttbar"}
    assert max(backgrounds, key=backgrounds.get) == "wjets", backgrounds


def test_variations_differ_modestly_from_nominal():
    n = 20_000
    batches = {
        v: generate_events("ttbar", v, n, 9, minimal=True).branches()
        for v in ("nominal", "scaleup", "scaledown", "ME_var", "PS_var")
    }

    def n_jets(a):
        return ak.mean(ak.sum(a["jet_pt"] > 25, axis=1))

    def top_pt(a):
        return ak.mean(a["GenPart_pt"][a["GenPart_pdgId"] == 6])

    nominal = batches["nominal"]
    assert n_jets(batches["scaledown"]) < n_jets(nominal) < n_jets(batches["scaleup"])
    assert 1.03 < top_pt(batches["ME_var"]) / top_pt(nominal) < 1.15

    def leading_jet_pt(a):
        return ak.mean(ak.drop_none(ak.firsts(a["jet_pt"])))

    ratio = leading_jet_pt(batches["PS_var"]) / leading_jet_pt(nominal)
    assert 1.005 < ratio < 1.05
    for v, a in batches.items():
        if v != "nominal":
            assert 0.85 < n_jets(a) / n_jets(nominal) < 1.15, v


def test_new_signal_is_one_registry_entry():
    before = model_fingerprint()
    spec = ProcessSpec(
        "zprime_ttbar",
        build_top_pair,
        {**TTBAR_PARAMS, "production": "resonance", "resonance_mass": 1500.0, "resonance_width": 45.0},
        xsec=1.0,
        include_in_data=False,
    )
    register_process(spec)
    try:
        assert model_fingerprint() != before  # a new process invalidates cached datasets
        arrays = generate_events("zprime_ttbar", "nominal", 3000, 1, minimal=True).branches()
        tops = ak.zip({k: arrays[f"GenPart_{k}"] for k in ("pt", "eta", "phi", "mass", "pdgId")})
        tops = tops[np.abs(tops.pdgId) == 6]
        assert ak.all(ak.num(tops) == 2)
        m_tt = ak.to_numpy(_mass(_p4(tops[:, 0]), _p4(tops[:, 1]))[0])
        assert 1400 < np.median(m_tt) < 1600
        assert "zprime_ttbar" not in dict(expected_data_yields(1.0, 1.0, process_cross_sections()))
        with pytest.raises(ConfigError, match="already registered"):
            register_process(spec)
    finally:
        PROCESSES.pop("zprime_ttbar")


# ------------------------------------------------------------------------------------------
# file content: byte shares, every region populated, data
# ------------------------------------------------------------------------------------------
def test_analysis_branches_are_a_few_percent_of_the_bytes(tiny):
    for sample, paths in fileset_paths(tiny).items():
        with uproot.open(paths[0]) as f:
            tree = f["events"]
            total = sum(b.compressed_bytes for b in tree.branches)
            used = sum(tree[b].compressed_bytes for b in ANALYSIS_BRANCHES)
        assert 0.02 <= used / total <= 0.08, (sample, used / total)


def test_every_sample_fills_both_regions_in_tiny(tiny):
    for sample, paths in fileset_paths(tiny).items():
        sel = select(read_branches(paths, (*ANALYSIS_BRANCHES, "jet_mass")))
        assert sel["4j1b"].sum() > 0 and sel["4j2b"].sum() > 0, sample


def test_data_is_the_mc_mixture_at_the_recorded_luminosity(tiny, physics):
    fileset = json.loads(tiny.read_text())
    entry = fileset["data"]["nominal"]
    preset = get_preset("tiny")
    lumi = preset.data.lumi_fraction * LUMI
    assert entry["lumi"] == pytest.approx(lumi) and entry["mu"] == 1.0
    # preselected: a Poisson number of events generated per process, the passing ones written
    presel = entry["preselection"]
    for process, xsec in XSEC.items():
        row = presel["processes"][process]
        assert row["expected"] == pytest.approx(xsec * lumi)
        assert abs(row["generated"] - row["expected"]) < 5 * np.sqrt(row["expected"]), process
    assert entry["nevts_total"] == presel["passed"] == sum(r["passed"] for r in presel["processes"].values())
    assert entry["composition"]["ttbar"] == pytest.approx(XSEC["ttbar"] / sum(XSEC.values()))
    # data yields in each region agree with the MC prediction (mu = 1) within Poisson fluctuations
    sel = select(read_branches(fileset_paths(tiny)["data__nominal"], (*ANALYSIS_BRANCHES, "jet_mass")))
    for region in ("4j1b", "4j2b"):
        observed = sel[region].sum()
        predicted = variance = 0.0
        for process, batch in physics.items():
            weight = XSEC[process] * lumi / batch.n
            n_mc = select(batch.branches())[region].sum()
            predicted += weight * n_mc
            variance += weight**2 * n_mc  # the MC samples' own statistical uncertainty
        assert abs(observed - predicted) < 3 * np.sqrt(predicted + variance), (region, observed, predicted)


def test_data_mixture_follows_mu():
    from utils.datasets.embedded.generator import mixture_from_yields

    mixture = mixture_from_yields(expected_data_yields(1.0, 2.0, process_cross_sections()))
    batch = generate_data_events(20_000, 3, mixture)
    counts = np.bincount(batch.meta["process"], minlength=len(mixture.processes))
    frac = dict(zip(mixture.processes, mixture.fractions, strict=True))
    assert frac["ttbar"] == pytest.approx(2 * XSEC["ttbar"] / (sum(XSEC.values()) + XSEC["ttbar"]))
    i = mixture.processes.index("ttbar")
    assert abs(counts[i] - 20_000 * frac["ttbar"]) < 5 * np.sqrt(20_000 * frac["ttbar"])
    assert ak.sum(batch.branches()["numGenPart"]) == 0  # data carries no generator record
    # events of different processes are interleaved, not in blocks
    assert np.count_nonzero(np.diff(batch.meta["process"])) > 1000


# ------------------------------------------------------------------------------------------
# dataset JSON, presets, cache
# ------------------------------------------------------------------------------------------
def test_fileset_json_has_the_real_lists_structure(tiny):
    data = json.loads(tiny.read_text())
    check_dataset_structure(data)
    check_dataset_structure(json.loads(REAL_LIST.read_text()))
    for sample, paths in fileset_paths(tiny).items():
        process, variation = sample.split("__")
        for f, path in zip(data[process][variation]["files"], paths, strict=True):
            assert not Path(f["path"]).is_absolute() and path.is_file()
            assert uproot.open(path)["events"].num_entries == f["nevts"]
    assert set(data) == {"ttbar", "single_top_s_chan", "single_top_t_chan", "single_top_tW", "wjets", "data"}
    assert set(data["ttbar"]) == {"nominal", "scaleup", "scaledown", "ME_var", "PS_var"}


def test_second_ensure_call_uses_the_cache(tiny):
    mtimes = {p: p.stat().st_mtime_ns for p in tiny.parent.rglob("*.root")}
    result = build_dataset("tiny", output_root=tiny.parent.parent)
    assert not result.generated and result.fileset_path == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.parent.rglob("*.root")} == mtimes


def test_presets_file_is_valid_and_sized_as_documented():
    presets = load_presets()
    assert {"tiny", "quickstart", "benchmark"} <= set(presets)
    bench = presets["benchmark"]
    assert bench.n_mc_events >= 20_000_000
    assert all(350_000 <= s.events_per_file <= 450_000 for s in bench.samples)
    quick = presets["quickstart"]
    assert 100_000 <= quick.n_mc_events <= 1_000_000
    largest = max(quick.samples, key=lambda s: s.files * s.events_per_file)
    assert (largest.process, largest.variation) == ("ttbar", "nominal")
    assert presets["tiny"].n_mc_events < 100_000


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("events_per_fil: 600", "events_per_fil"),
        ("events_per_file: -1", "events_per_file"),
        ("process_typo: {nominal: {files: 1, events_per_file: 5}}", "unknown process 'process_typo'"),
        ("ttbar: {nominl: {files: 1, events_per_file: 5}}", "unknown variation 'nominl'"),
    ],
)
def test_invalid_presets_are_rejected_with_the_key(tmp_path, bad, message):
    text = MINI_PRESETS
    if bad.startswith("events_per_fil"):
        text = text.replace(
            "wjets: {nominal: {files: 1, events_per_file: 500}}", f"wjets: {{nominal: {{files: 1, {bad}}}}}"
        )
    else:
        text = text.replace("wjets: {nominal: {files: 1, events_per_file: 500}}", bad)
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_presets(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="available"):
        get_preset("nonexistent")


def test_cache_regenerates_what_is_missing_or_mismatched(tmp_path, mini_presets):
    out = tmp_path / "out"
    first = build_dataset("mini", out, presets_path=mini_presets)
    assert first.generated and first.files_generated == 4  # 2 ttbar, 1 wjets, 1 data
    fileset = first.fileset_path
    ttbar0 = fileset.parent / "ttbar__nominal" / "0.root"
    original = hashlib.sha256(ttbar0.read_bytes()).hexdigest()

    # a leftover temporary file is neither listed nor taken for an output
    leftover = fileset.parent / "ttbar__nominal" / ".tmp-0.root.x1y2.root"
    leftover.write_bytes(b"half a file")
    again = build_dataset("mini", out, presets_path=mini_presets)
    assert not again.generated
    assert ".tmp-" not in fileset.read_text()

    # fileset.json missing: regenerated; files of the same request that are whole are kept
    fileset.unlink()
    ttbar0.unlink()
    redo = build_dataset("mini", out, presets_path=mini_presets)
    assert redo.generated and redo.files_generated == 1 and fileset.is_file()
    assert hashlib.sha256(ttbar0.read_bytes()).hexdigest() == original
    assert not leftover.exists()

    # another seed (manifest mismatch): everything is generated again
    reseeded = build_dataset("mini", out, seed=8, presets_path=mini_presets)
    assert reseeded.generated and reseeded.files_generated == 4
    assert hashlib.sha256(ttbar0.read_bytes()).hexdigest() != original
    manifest = json.loads((fileset.parent / "manifest.json").read_text())
    assert manifest["seed"] == 8 and manifest["complete"]

    # data options are part of the key too
    assert build_dataset("mini", out, seed=8, with_data=False, presets_path=mini_presets).generated
    assert "data" not in json.loads(fileset.read_text())
    assert not (fileset.parent / "data__nominal").exists()


def test_interrupted_generation_is_never_taken_for_complete(tmp_path, mini_presets, monkeypatch):
    out = tmp_path / "out"
    real_generate = dataset_module.generate_file
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "generate_file", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_dataset("mini", out, presets_path=mini_presets)
    directory = out / "mini"
    assert not (directory / "fileset.json").exists()
    assert json.loads((directory / "manifest.json").read_text())["complete"] is False
    monkeypatch.setattr(dataset_module, "generate_file", real_generate)
    resumed = build_dataset("mini", out, presets_path=mini_presets)
    assert resumed.generated and resumed.files_generated == 3 and resumed.fileset_path.is_file()


def test_disk_space_is_checked_before_generating(tmp_path, mini_presets, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match="GB are free"):
        build_dataset("mini", tmp_path, presets_path=mini_presets)


def test_cli_generates_then_reports_the_cache(tmp_path, mini_presets):
    runner = CliRunner()
    args = ["--preset", "mini", "--presets", str(mini_presets), "--output", str(tmp_path), "--no-data"]
    result = runner.invoke(generate_command, args)
    assert result.exit_code == 0, result.output
    assert "dataset JSON:" in result.output and "events/s" in result.output and "bytes/event" in result.output
    assert (tmp_path / "mini" / "fileset.json").is_file()
    cached = runner.invoke(generate_command, args)
    assert cached.exit_code == 0 and "cached and complete" in cached.output


def test_agc_group_exposes_generate():
    from utils.cli import cli

    result = CliRunner().invoke(cli, ["generate", "--help"])
    assert result.exit_code == 0 and "--with-data / --no-data" in result.output and "--workers" in result.output


def test_generate_help_names_every_preset():
    from click.testing import CliRunner

    from utils.cli.generate import generate
    from utils.datasets.embedded.presets import load_presets

    out = CliRunner().invoke(generate, ["--help"], terminal_width=200).output
    assert all(name in out for name in load_presets()), out
    assert "describe-signal" in out
