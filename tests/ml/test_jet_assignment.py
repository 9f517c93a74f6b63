"""The jet-parton assignment: permutations, features and truth labels with hand-computed answers,
parity routing, reproducible training, held-out accuracy against the baseline, the processor's
feature histograms and the optional fit configuration."""

from __future__ import annotations

import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from ttbar_nanoaod import LAST_COPY, write_ttbar_nanoaod

from utils.config import REPO_ROOT, read_yaml
from utils.errors import ConfigError, ModelError
from utils.ml.assignment.features import (
    FEATURE_NAMES,
    FEATURES,
    AssignmentInputs,
    assign,
    assignment_inputs,
    baseline_permutation,
    chunk_leptons,
    permutation_features,
    permutation_index,
    permutations,
)
from utils.ml.assignment.truth import jet_labels, truth_permutation
from utils.processing.nanoaod import nanoaod_cuts, select_nanoaod, select_nanoaod_variations, selected_leptons

pytestmark = pytest.mark.filterwarnings("ignore:Missing cross-reference index")

# --- permutations -----------------------------------------------------------------------------


def test_permutation_count_and_coffea_order():
    assert [len(permutations(n)) for n in (4, 5, 6)] == [12, 60, 180]
    assert [tuple(p) for p in permutations(4)] == [
        (1, 0, 2, 3), (1, 0, 3, 2), (2, 0, 1, 3), (2, 0, 3, 1), (2, 1, 0, 3), (2, 1, 3, 0),
        (3, 0, 1, 2), (3, 0, 2, 1), (3, 1, 0, 2), (3, 1, 2, 0), (3, 2, 0, 1), (3, 2, 1, 0),
    ]  # fmt: skip
    first = {5: [(1, 0, 2, 3), (1, 0, 2, 4), (1, 0, 3, 2)], 6: [(1, 0, 2, 3), (1, 0, 2, 4), (1, 0, 2, 5)]}
    for n in (5, 6):
        perms = [tuple(int(i) for i in p) for p in permutations(n)]
        assert perms[:3] == first[n]
        assert perms[-1] == (n - 1, n - 2, n - 3, n - 4)
        assert perms == sorted(perms) and len(set(perms)) == len(perms)
        assert all(p[0] > p[1] and len(set(p)) == 4 for p in perms)
    assert permutation_index(4, np.array([[3, 2, 0, 1], [2, 3, 0, 1], [1, 0, 2, 4]])).tolist() == [10, -1, -1]
    with pytest.raises(ValueError, match="between 4 and 6"):
        permutations(7)


# --- features on a hand-made event --------------------------------------------------------------

# jets (pt, eta, phi, mass, btag, qgl, jetId): j0 b_had, j1 b_lep, j2 W2, j3 W1 of the correct
# assignment (3, 2, 0, 1); a jet failing the jet ID sits between j1 and j2 in the stored order, so
# the selected jets' qgl must be fetched by their stored index
JETS = [(100.0, 0.0, 0.0, 0.0, 0.9, 0.1, 6), (80.0, 0.0, -3.0, 0.0, 0.8, 0.2, 6), (70.0, 0.0, 1.0, 0.0, 0.1, 0.9, 2),
        (60.0, 0.0, math.pi / 2, 0.0, 0.1, 0.3, 6), (40.0, 0.0, -math.pi / 2, 0.0, 0.2, 0.4, 6)]  # fmt: skip
LEPTON = (50.0, 0.0, 3.0, 0.0)  # a muon; dphi(lepton, b_lep) = 6.0 unwrapped, 2 pi - 6 wrapped


def expected_features() -> dict[str, float]:
    return {
        "deltar_leptonbtoplep": 2 * math.pi - 6.0,
        "deltar_w1w2": math.pi,
        "deltar_w1btophad": math.pi / 2,
        "deltar_w2btophad": math.pi / 2,
        "mass_leptonbtoplep": math.sqrt(2 * 50 * 80 * (1 - math.cos(6.0))),  # massless: 2 pT pT (1 - cos dphi)
        "mass_w1w2": math.sqrt(2 * 40 * 60 * 2),
        # E = 200, (px, py) = (100, 60 - 40), pz = 0
        "mass_w1w2btophad": math.sqrt(200**2 - 100**2 - 20**2),
        "pt_w1w2btophad": math.hypot(100, 20),
        "pt_w1": 40, "pt_w2": 60, "pt_btophad": 100, "pt_btoplep": 80,
        "btag_w1": 0.2, "btag_w2": 0.1, "btag_btophad": 0.9, "btag_btoplep": 0.8,
        "qgl_w1": 0.4, "qgl_w2": 0.3, "qgl_btophad": 0.1, "qgl_btoplep": 0.2,
    }  # fmt: skip


def write_handmade(path: Path, event_numbers=(7,)) -> Path:
    n = len(event_numbers)
    f32, i32 = np.float32, np.int32
    jet = {
        k: [[j[i] for j in JETS]] * n for i, k in enumerate(("pt", "eta", "phi", "mass", "btagCSVV2", "qgl", "jetId"))
    }
    muon = dict(zip(("pt", "eta", "phi", "mass"), ([[v]] * n for v in LEPTON), strict=True))
    data = {
        "run": np.ones(n, np.uint32), "luminosityBlock": np.ones(n, np.uint32),
        "event": np.array(event_numbers, np.uint64),
        "Jet": ak.zip({k: ak.values_astype(ak.Array(v), i32 if k == "jetId" else f32) for k, v in jet.items()}),
        "Muon": ak.zip({**{k: ak.values_astype(ak.Array(v), f32) for k, v in muon.items()},
                        "tightId": ak.Array([[True]] * n), "sip3d": ak.values_astype(ak.Array([[1.0]] * n), f32),
                        "pfRelIso04_all": ak.values_astype(ak.Array([[0.05]] * n), f32),
                        "charge": ak.values_astype(ak.Array([[-1]] * n), i32)}),
        "Electron": ak.zip({k: ak.values_astype(ak.Array([[]] * n), t) for k, t in
                            {"pt": f32, "eta": f32, "phi": f32, "mass": f32, "cutBased": i32, "sip3d": f32,
                             "charge": i32}.items()}),
    }  # fmt: skip
    with uproot.recreate(path) as f:
        f.mktree("Events", data)
    return path


def events_of(path: Path):
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()


@pytest.fixture(scope="module")
def handmade_inputs(tmp_path_factory, config) -> AssignmentInputs:
    events = events_of(write_handmade(tmp_path_factory.mktemp("ja") / "handmade.root"))
    sel = select_nanoaod(events, config)
    inputs, in_region = assignment_inputs(events, config, sel)
    assert in_region.tolist() == [True]
    return inputs


def test_inputs_of_a_handmade_nanoaod_event(handmade_inputs):
    inp = handmade_inputs
    assert inp.n_jets.tolist() == [4] and inp.event.tolist() == [7]
    kept = [JETS[i] for i in (0, 1, 3, 4)]  # the jetId-2 jet is not selected
    np.testing.assert_allclose(inp.jets[0, :4], np.array([j[:6] for j in kept]), rtol=1e-6)
    assert np.isnan(inp.jets[0, 4:]).all()
    np.testing.assert_allclose(inp.lepton[0], LEPTON, rtol=1e-6)


def test_the_20_features_by_hand(handmade_inputs):
    assert len(FEATURES) == 20 and FEATURE_NAMES[0] == "deltar_leptonbtoplep" and FEATURE_NAMES[-1] == "qgl_btoplep"
    x = permutation_features(handmade_inputs, 4)
    assert x.shape == (1, 12, 20) and x.dtype == np.float32
    row = x[0, permutation_index(4, np.array([3, 2, 0, 1]))]
    assert dict(zip(FEATURE_NAMES, row.tolist(), strict=True)) == pytest.approx(expected_features(), rel=1e-5)
    # the binnings of the AGC's histograms
    ranges = {f.name: (f.low, f.high) for f in FEATURES}
    assert ranges["deltar_w1w2"] == (0, 6) and ranges["mass_w1w2"] == (50, 300)
    assert ranges["pt_w1w2btophad"] == (50, 550) and ranges["pt_btoplep"] == (25, 300)
    assert ranges["btag_w1"] == (0, 1) and ranges["qgl_btophad"] == (-1, 1)


def test_inputs_of_the_compiled_selection_are_those_of_the_awkward_one(tiny_nanoaod, config):
    """The processor's inputs (flat arrays, the compiled selection's jets) equal the ones built from
    the awkward specification under every jet variation, and the chunk's leptons equal an awkward
    first-of-(electrons, muons)."""
    events = NanoEventsFactory.from_root({str(tiny_nanoaod.parent / "ttbar__nominal" / "0.root"): "Events"},
                                         schemaclass=NanoAODSchema, mode="virtual").events()  # fmt: skip
    leptons = chunk_leptons(events, config)
    electrons, muons = selected_leptons(events, nanoaod_cuts(config))
    for i, field in enumerate(("pt", "eta", "phi", "mass")):
        both = ak.concatenate([events.Electron[field][electrons], events.Muon[field][muons]], axis=1)
        expected = ak.to_numpy(ak.fill_none(ak.firsts(both), np.nan)).astype(np.float64)
        np.testing.assert_array_equal(leptons[:, i], expected)
    compiled = select_nanoaod_variations(events, config, config.jet_variations)
    for variation in config.jet_variations:
        spec, spec_mask = assignment_inputs(events, config, select_nanoaod(events, config, variation))
        fast, fast_mask = assignment_inputs(events, config, compiled[variation], leptons)
        assert len(spec) > 10 and spec_mask.tolist() == fast_mask.tolist()
        for field in ("jets", "n_jets", "lepton", "event"):
            np.testing.assert_array_equal(getattr(fast, field), getattr(spec, field), err_msg=field, strict=True)
        assert set(spec.n_jets.tolist()) >= {4, 5, 6}


def test_baseline_takes_the_leading_b_tags(handmade_inputs, config):
    assert baseline_permutation(handmade_inputs, config.btag_threshold).tolist() == [[3, 2, 0, 1]]


# --- truth labels on a hand-made GenPart chain ---------------------------------------------------


def genpart(rows):
    """rows: (pdgId, mother, flags, eta, phi)."""
    keys = ("pdgId", "genPartIdxMother", "statusFlags", "eta", "phi")
    return ak.zip({k: ak.Array([[r[i] for r in rows]]) for i, k in enumerate(keys)})


CHAIN = [
    (6, -1, 0, 0.0, 0.0), (-6, -1, 0, 0.0, 3.0), (6, 0, LAST_COPY, 0.0, 0.0), (-6, 1, LAST_COPY, 0.0, 3.0),
    (24, 2, 0, 0.8, -1.5), (24, 4, LAST_COPY, 0.8, -1.5),  # W+ and its last copy
    (5, 2, 0, 0.5, 0.4),  # b, not the last copy (a candidate only through its copy)
    (5, 6, LAST_COPY, 0.5, 0.52),
    (-24, 3, LAST_COPY, -0.5, 2.5), (-5, 3, LAST_COPY, -1.0, 2.0),
    (2, 5, LAST_COPY, 1.0, -1.0), (-1, 5, LAST_COPY, -0.5, 3.1),  # W+ -> u dbar (from the W copy)
    (13, 8, LAST_COPY, -0.2, 2.8), (-14, 8, LAST_COPY, -0.8, 2.2),  # W- -> mu- nubar: tbar is leptonic
    (21, -1, LAST_COPY, 2.0, 1.0), (1, 14, LAST_COPY, 2.0, 1.0),  # a quark from a gluon: no candidate
]  # fmt: skip
# jets: near the b copy, the bbar, the u, the dbar across phi = pi, the gluon's quark, 0.45 from the u
JET_ETA = np.array([[0.5, -1.0, 1.0, -0.5, 2.0, 1.45]])
JET_PHI = np.array([[0.51, 2.05, -1.02, -3.1, 1.0, -1.0]])


def test_truth_labels_of_a_handmade_chain():
    labels = jet_labels(genpart(CHAIN), JET_ETA, JET_PHI, np.array([6]))
    assert labels.tolist() == [[6, -6, 24, 24, 100, 100]]
    # the correct assignment: W1 = 3, W2 = 2 (W1 > W2), b_had 0, b_lep 1
    assert truth_permutation(labels, np.array([6])).tolist() == [permutation_index(6, np.array([3, 2, 0, 1]))]
    assert truth_permutation(labels, np.array([4])).tolist() == [10]
    # fewer jets than labels: beyond n_jets nothing is labelled
    assert jet_labels(genpart(CHAIN), JET_ETA, JET_PHI, np.array([2])).tolist() == [[6, -6, 0, 0, 0, 0]]
    # a hadronic tbar (no lepton among its W's children): its b is 6, and two b_had -> no truth
    hadronic = [r if abs(r[0]) not in (13, 14) else (211, *r[1:]) for r in CHAIN]
    lab = jet_labels(genpart(hadronic), JET_ETA, JET_PHI, np.array([6]))
    assert lab.tolist() == [[6, 6, 24, 24, 100, 100]]
    assert truth_permutation(lab, np.array([6])).tolist() == [-1]


# --- parity routing ---------------------------------------------------------------------------


def test_even_events_are_scored_by_the_model_trained_on_odd_ones(tmp_path, config):
    events = events_of(write_handmade(tmp_path / "two.root", event_numbers=(10, 11)))
    inputs, _ = assignment_inputs(events, config, select_nanoaod(events, config))
    pt_w1 = FEATURE_NAMES.index("pt_w1")
    calls = []

    def scorer(trained_on: int, x: np.ndarray) -> np.ndarray:
        calls.append((trained_on, len(x)))
        return x[:, pt_w1] if trained_on == 1 else -x[:, pt_w1]  # "odd" model: highest W1 pT, "even": lowest

    chosen = assign(inputs, scorer)
    assert sorted(calls) == [(0, 12), (1, 12)]
    # W1 is jet 1, 2 or 3 (W1 > W2): event 10 (even) is scored by the odd-trained model, which picks
    # the highest W1 pT, jet 1 (80 GeV; its first permutation on the tie); event 11 gets jet 3 (40 GeV)
    assert chosen.jets[:, 0].tolist() == [1, 3]
    assert chosen.features[:, pt_w1].tolist() == pytest.approx([80.0, 40.0])


# --- training, held-out accuracy, the processor ---------------------------------------------------


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    return write_ttbar_nanoaod(tmp_path_factory.mktemp("toy") / "ttbar.root", 8_000, seed=5)


@pytest.fixture(scope="module")
def table(toy_file, config):
    from utils.ml.assignment.training import build_table

    return build_table([str(toy_file)], config, {"toy": "tests/ml/ttbar_nanoaod.py"})


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory, config):
    from utils.ml.assignment.training import train_jet_assignment

    folder = tmp_path_factory.mktemp("models")
    return folder, train_jet_assignment(table, folder, config)


@pytest.mark.slow
def test_training_is_reproducible(table):
    from dataclasses import replace

    from utils.ml.assignment.training import AssignmentSettings, train_parity
    from utils.ml.training import serialise

    small = AssignmentSettings(max_epochs=2, max_events_per_parity=300)
    first, again = (serialise(train_parity(table, 0, small).model) for _ in range(2))
    assert first == again  # the same seed: the same weights, bit for bit
    other = serialise(train_parity(table, 0, replace(small, seed=small.seed + 10)).model)
    assert other[0] != first[0]


@pytest.mark.slow
def test_the_model_beats_the_baseline_on_held_out_events(trained, tmp_path):
    import shutil

    folder, run = trained
    for parity in ("even", "odd"):
        per = run.metrics[parity]
        assert per["all"]["events"] > 300
        assert per["all"]["model"] > per["all"]["baseline"] + 0.1
        assert (
            per["4_jets"]["model"]
            > per["4_jets"]["baseline"]
            > per["4_jets"]["random"]
            == pytest.approx(1 / 12, abs=1e-4)
        )
        assert per["6_jets"]["random"] == pytest.approx(1 / 180, abs=1e-4)
    from utils.ml.assignment.model import JetAssigner, load_assignment_card

    card = load_assignment_card(folder / "jet_assignment_even.card.json")
    assert card.trained_on_parity == 0 and card.content["metrics"]["held_out"] == run.metrics["even"]
    assert card.content["training"]["files"][0]["selected_4j2b"] == len(run.table)
    # the exports score like the in-memory models
    assigner = JetAssigner.from_directory(folder)
    x = permutation_features(run.table.inputs, 4, np.flatnonzero(run.table.inputs.n_jets == 4)[:5]).reshape(-1, 20)
    import torch

    with torch.no_grad():
        np.testing.assert_allclose(assigner(1, x), run.trained[1].model(torch.from_numpy(x)).numpy(), rtol=1e-5)
    spoiled = shutil.copytree(folder, tmp_path / "spoiled")
    (spoiled / "jet_assignment_odd.torchscript.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="sha256"):
        JetAssigner.from_directory(spoiled)


@pytest.mark.slow
def test_processor_fills_the_feature_histograms_and_leaves_histograms_root_alone(trained, toy_file, config, tmp_path):
    from utils.ml.assignment.histograms import save_feature_histograms
    from utils.ml.assignment.model import JetAssigner
    from utils.processing.processor import TtbarAnalysis
    from utils.processing.run import ProcessingOptions, process_fileset

    folder, run = trained
    assigner = JetAssigner.from_directory(folder)
    fileset = {"ttbar__nominal": {"files": {str(toy_file): "Events"},
                                  "metadata": {"process": "ttbar", "variation": "nominal", "nevts": 8_000,
                                               "xsec": 1.0}}}  # fmt: skip
    options = ProcessingOptions(executor="iterative", input_format="nanoaod", chunksize=5000)
    with_ml = process_fileset(fileset, options, config, jet_assigner=assigner)
    without = process_fileset(fileset, options, config)
    assert without.feature_histograms is None
    np.testing.assert_array_equal(with_ml.histograms.hist.view(flow=True), without.histograms.hist.view(flow=True))
    fh = with_ml.feature_histograms
    n_4j2b = with_ml.selected["ttbar__nominal"]["nominal/4j2b"]
    norm = 1.0 * config.luminosity / 8_000
    assert n_4j2b == len(run.table)
    for i in range(20):  # every selected 4j2b event fills every feature once (flow bins included)
        assert fh.values[("ttbar", "nominal")][i].sum() == pytest.approx(n_4j2b * norm)
    assert ("ttbar", "pt_scale_up") in fh.values and ("ttbar", "btag_var_3_down") in fh.values
    names = save_feature_histograms(fh, tmp_path / "histograms_ml.root", config, pseudodata=False)
    assert "mass_w1w2btophad_ttbar" in names and "qgl_btoplep_ttbar_pt_res_up" in names
    with uproot.open(tmp_path / "histograms_ml.root") as f:
        h = f["mass_w1w2btophad_ttbar"]
        assert h.axis().edges()[[0, -1]].tolist() == [50.0, 550.0] and len(h.values()) == 25
        assert h.values(flow=True).min() >= 1e-6  # the AGC's offset in every bin
    with pytest.raises(ConfigError, match="needs NanoAOD"):
        TtbarAnalysis(config, jet_assigner=assigner)


# --- the optional fit configuration --------------------------------------------------------------


def test_the_ml_fit_configuration_is_valid_and_shares_the_model(config):
    from utils.inference.config import load_cabinetry_config, parse_cabinetry_config

    ml = load_cabinetry_config(REPO_ROOT / "cabinetry_config_jet_assignment.yml")
    assert [r["RegionPath"] for r in ml["Regions"]] == ["mass_w1w2btophad"]
    assert ml["General"]["InputPath"].startswith("histograms_ml.root:")
    main = read_yaml(REPO_ROOT / "cabinetry_config.yml")
    raw = read_yaml(REPO_ROOT / "cabinetry_config_jet_assignment.yml")
    for key in ("Samples", "NormFactors", "Systematics", "TemplateTreatment"):
        assert raw[key] == main[key], key
    bad = {**raw, "Regions": [{**raw["Regions"][0], "Binning": [110, 145, 550]}]}
    with pytest.raises(ConfigError, match=r"jet-assignment feature mass_w1w2btophad\); not edges: \[145\]"):
        parse_cabinetry_config(bad, source="ml.yml")


def test_the_notebook_switch(trained, tmp_path):
    from utils.ml.assignment.model import JetAssigner
    from utils.run.parameters import RunParameters
    from utils.run.pipeline import make_jet_assigner

    nano = {"dataset": "cms-open-data-2015-nanoaod", "use_ml": False}
    assert make_jet_assigner(RunParameters(**nano), tmp_path) is None  # auto, no models: off
    assert isinstance(make_jet_assigner(RunParameters(**nano), trained[0]), JetAssigner)
    assert make_jet_assigner(RunParameters(**nano, use_jet_assignment="off"), trained[0]) is None
    with pytest.raises(ModelError, match="jet-assignment model card not found"):
        make_jet_assigner(RunParameters(**nano, use_jet_assignment="on"), tmp_path)
    assert make_jet_assigner(RunParameters(dataset="embedded:tiny"), trained[0]) is None  # ntuples: never
    with pytest.raises(ConfigError, match="USE_JET_ASSIGNMENT='on' needs NanoAOD"):
        RunParameters(dataset="embedded:tiny", use_jet_assignment="on")
    with pytest.raises(ConfigError, match="USE_JET_ASSIGNMENT='yes'"):
        RunParameters(**nano, use_jet_assignment="yes")


@pytest.mark.slow
def test_agc_train_task_jet_assignment(toy_file, tmp_path):
    from click.testing import CliRunner

    from utils.cli.train import train
    from utils.ml.assignment.model import load_assignment_card

    result = CliRunner().invoke(
        train, ["--task", "jet-assignment", "--file", str(toy_file), "--models-dir", str(tmp_path), "--max-epochs", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "model trained on even events, held-out accuracy: 4_jets:" in result.output
    card = load_assignment_card(tmp_path / "jet_assignment_odd.card.json")
    assert card.trained_on_parity == 1 and card.content["training"]["epochs_run"] == 2
    assert card.content["training"]["dataset"] == {"files": [str(toy_file)]}


REAL_FILE = REPO_ROOT.parent / "shared" / "realdata" / "nanoaod2015" / "nanoAOD_2015_CMS_Open_Data_ttbar.root"


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"{REAL_FILE} is absent (../shared/realdata)")
def test_a_real_nanoaod_file_with_the_assignment_on(trained, config):
    from utils.ml.assignment.model import JetAssigner
    from utils.processing.run import ProcessingOptions, process_fileset

    fileset = {"ttbar__nominal": {"files": {str(REAL_FILE): "Events"},
                                  "metadata": {"process": "ttbar", "variation": "nominal", "nevts": 200,
                                               "xsec": 396.87}}}  # fmt: skip
    options = ProcessingOptions(executor="iterative", input_format="nanoaod")
    result = process_fileset(fileset, options, config, jet_assigner=JetAssigner.from_directory(trained[0]))
    assert result.metrics["entries"] == 200
    # none of its 200 events is in 4j2b (tests/processing/test_nanoaod.py): empty feature histograms
    assert result.feature_histograms is not None
    assert all(v.sum() == 0 for v in result.feature_histograms.values.values())
    # its GenPart record (pruned) holds W bosons but no top quark in these 200 events, and no jet of
    # the first six lies within 0.4 of a last-copy quark from a W: 100 everywhere, 0 beyond the jets
    from utils.ml.assignment.truth import jet_labels

    events = NanoEventsFactory.from_root({str(REAL_FILE): "Events"}, schemaclass=NanoAODSchema, mode="virtual").events()
    gen, jets = events.GenPart, events.Jet[:, :6]
    assert ak.sum(abs(gen.pdgId) == 6) == 0 and ak.sum(abs(gen.pdgId) == 24) > 0
    pad = lambda a: ak.to_numpy(ak.fill_none(ak.pad_none(a, 6, clip=True), 0.0))  # noqa: E731
    n_jets = ak.to_numpy(ak.num(jets.pt))
    labels = jet_labels(gen, pad(jets.eta), pad(jets.phi), n_jets)
    present = np.arange(6)[None, :] < n_jets[:, None]
    assert (labels[present] == 100).all() and (labels[~present] == 0).all() and present.sum() == 515
