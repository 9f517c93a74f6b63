"""Tests of the embedded NanoAOD writer (utils.datasets.embedded.nanoaod).

The branch names and types are checked against the real 2015 NanoAOD sample when it is present
(../shared/realdata), the value conventions against the facts sheet, and the GenPart decay
chains against a hand-made ttbar record whose NanoAOD rows are written out by hand, with the
truth labels of the facts sheet computed by an independent plain-Python implementation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from tests.conftest import REALDATA
from utils.datasets.embedded.events import Jagged
from utils.datasets.embedded.nanoaod import generate_nanoaod_file, load_layout
from utils.datasets.embedded.nanoaod_genpart import IS_FIRST_COPY, IS_LAST_COPY, genpart_chains
from utils.datasets.embedded.particles import Origin
from utils.datasets.resolve import dataset_input_format

MINI_PRESETS = """
schema_version: 1
presets:
  mini:
    events_per_basket: 400
    samples:
      ttbar:
        nominal: {files: 1, events_per_file: 600}
    data: {enabled: true, lumi_fraction: 2.0e-6, files: 1}
"""

REAL_NANOAOD = REALDATA / "nanoaod2015" / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
SELECTION = (
    "run", "luminosityBlock", "event",
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_jetId",
)  # fmt: skip
# the facts sheet's table of used branches
FACTS_TYPES = {
    "run": "uint32_t", "luminosityBlock": "uint32_t", "event": "uint64_t",
    **dict.fromkeys(("Electron_pt", "Electron_eta", "Electron_phi", "Electron_mass", "Electron_sip3d"), "float[]"),
    "Electron_cutBased": "int32_t[]",
    **dict.fromkeys(("Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_sip3d", "Muon_pfRelIso04_all"), "float[]"),
    "Muon_tightId": "bool[]",
    **dict.fromkeys(("Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_qgl"), "float[]"),
    "Jet_jetId": "int32_t[]",
    **dict.fromkeys(("GenPart_pt", "GenPart_eta", "GenPart_phi", "GenPart_mass"), "float[]"),
    **dict.fromkeys(("GenPart_pdgId", "GenPart_genPartIdxMother", "GenPart_status", "GenPart_statusFlags"), "int32_t[]"),
}  # fmt: skip


@pytest.fixture(scope="module")
def ttbar_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nano") / "ttbar.root"
    generate_nanoaod_file("ttbar", "nominal", 1500, 7, path, file_index=3, events_per_basket=1000)
    return path


@pytest.fixture(scope="module")
def tree(ttbar_file):
    with uproot.open(ttbar_file) as f:
        yield f["Events"]


def test_layout_and_types_are_those_of_real_nanoaod(tree):
    types = tree.typenames()
    assert len(types) == 947
    assert {k: types[k] for k in FACTS_TYPES} == FACTS_TYPES
    assert all(types[k] == "int32_t" for k in ("nJet", "nElectron", "nMuon", "nGenPart"))
    if REAL_NANOAOD.is_file():
        with uproot.open(REAL_NANOAOD) as f:
            real = f["Events"].typenames()
        assert list(types) == list(real) or set(types) == set(real)
        # same types, except the counters: int32 here, uint32 in that file (both occur in the real list)
        differ = {k for k in real if real[k] != types[k]}
        assert differ == {k for k in real if k.startswith("n") and real[k] == "uint32_t"}
        assert all(types[k] == "int32_t" for k in differ)


def test_value_conventions(tree):
    a = tree.arrays(
        ["run", "luminosityBlock", "event", "Jet_pt", "Jet_btagCSVV2", "Jet_qgl", "Jet_jetId", "Electron_cutBased",
         "Muon_tightId", "Muon_sip3d", "GenPart_genPartIdxMother", "nGenPart"]
    )  # fmt: skip
    pt = a.Jet_pt
    assert ak.all(pt[:, 1:] <= pt[:, :-1])  # pT-descending
    btag = ak.flatten(a.Jet_btagCSVV2).to_numpy()
    assert np.all((btag == -10) | ((btag >= 0) & (btag <= 1)))
    assert 0.02 < np.mean(btag == -10) < 0.6 and np.mean(btag > 0.5) > 0.05
    qgl = ak.flatten(a.Jet_qgl).to_numpy()
    assert np.all((qgl == -1) | ((qgl >= 0) & (qgl <= 1))) and 0 < np.mean(qgl == -1) < 0.3
    assert set(np.unique(ak.flatten(a.Jet_jetId).to_numpy())) == {0, 2, 6}
    assert set(np.unique(ak.flatten(a.Electron_cutBased).to_numpy())) == {0, 1, 2, 3, 4}
    assert set(np.unique(ak.flatten(a.Muon_tightId).to_numpy())) == {False, True}
    assert ak.all(ak.flatten(a.Muon_sip3d) >= 0)
    keys = set(
        zip(a.run.to_numpy().tolist(), a.luminosityBlock.to_numpy().tolist(), a.event.to_numpy().tolist(), strict=True)
    )
    assert len(keys) == 1500
    assert set(np.unique(a.event.to_numpy() % 2)) == {0, 1}
    assert a.event[0] == 3 * 10**9 + 1  # file index 3: its own range of event numbers
    mothers = a.GenPart_genPartIdxMother
    assert ak.all(mothers < ak.local_index(mothers)) and ak.all(mothers >= -1)  # mothers come first
    assert ak.min(a.nGenPart) >= 12  # t t-bar: 2 x (t, t, W, W, b, b) + the W decays


def test_used_branches_are_about_five_percent_of_the_bytes(tree):
    total = sum(b.compressed_bytes for b in tree.branches)
    share = sum(tree[b].compressed_bytes for b in SELECTION) / total
    io = sum(tree[b].compressed_bytes for b in ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass",
                                                 "Muon_pt", "Electron_pt")) / total  # fmt: skip
    assert 0.035 < share < 0.08, share  # real files: 5.1 %
    assert 0.03 < io < 0.065, io  # real files: 4.1 %


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a, b, c = tmp_path / "a" / "x.root", tmp_path / "b" / "x.root", tmp_path / "c" / "x.root"
    for path, seed in ((a, 11), (b, 11), (c, 12)):
        path.parent.mkdir()
        generate_nanoaod_file("wjets", "nominal", 300, seed, path, events_per_basket=200)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


# ---------------------------------------------------------------------------------------------
# GenPart: a hand-made ttbar record (t -> W+ b, W+ -> u d-bar; t-bar -> W- b-bar, W- -> mu- nu-bar)
# ---------------------------------------------------------------------------------------------
W_KID, TOP_B, OTHER = int(Origin.W_DAUGHTER), int(Origin.TOP_B), int(Origin.OTHER)
# rows as the generator's record holds them: pdgId, status, origin, top sign
RECORD = [
    (6, 22, OTHER, 1), (24, 22, OTHER, 1), (2, 23, W_KID, 1), (-1, 23, W_KID, 1), (5, 23, TOP_B, 1),
    (-6, 22, OTHER, -1), (-24, 22, OTHER, -1), (13, 1, W_KID, -1), (-14, 1, W_KID, -1), (-5, 23, TOP_B, -1),
]  # fmt: skip
# the NanoAOD rows worked out by hand: (pdgId, status, mother, first copy, last copy)
EXPECTED = [
    (6, 22, -1, 1, 0), (-6, 22, -1, 1, 0), (6, 62, 0, 0, 1), (-6, 62, 1, 0, 1),
    (24, 22, 2, 1, 0), (5, 23, 2, 1, 0), (-24, 22, 3, 1, 0), (-5, 23, 3, 1, 0),
    (24, 52, 4, 0, 1), (5, 71, 5, 0, 1), (-24, 52, 6, 0, 1), (-5, 71, 7, 0, 1),
    (2, 23, 8, 1, 0), (-1, 23, 8, 1, 0), (13, 1, 10, 1, 1), (-14, 1, 10, 1, 1),
    (2, 71, 12, 0, 1), (-1, 71, 13, 0, 1),
]  # fmt: skip


def _record(rows, n_events: int = 1) -> Jagged:
    m = len(rows)
    pdg, status, origin, sign = (np.array(c) for c in zip(*rows, strict=True))
    fields = {
        "pt": np.linspace(10.0, 100.0, m).astype(np.float32),
        "eta": np.zeros(m, np.float32),
        "phi": np.zeros(m, np.float32),
        "mass": np.zeros(m, np.float32),
        "pdgId": pdg.astype(np.int32),
        "status": status.astype(np.int32),
    }
    counts = np.zeros(n_events, np.int32)
    counts[0] = m
    return Jagged(counts, fields, {"origin": origin.astype(np.int8), "top_sign": sign.astype(np.int8)})


def truth_labels(pdg: list[int], mother: list[int], flags: list[int]) -> dict[int, int]:
    """The facts sheet's parton labels of one event, written independently: quark index -> label."""

    def distinct_parent(i: int) -> int:
        j = mother[i]
        while j >= 0 and pdg[j] == pdg[i]:
            j = mother[j]
        return j

    def distinct_children(x: int) -> list[int]:
        return [i for i in range(len(pdg)) if distinct_parent(i) == x]

    labels = {}
    for i in range(len(pdg)):
        if not (1 <= abs(pdg[i]) <= 6 and flags[i] >> 13 & 1):
            continue
        parent = distinct_parent(i)
        if parent < 0 or abs(pdg[parent]) not in (6, 24):
            continue
        grand = {abs(pdg[k]) for c in distinct_children(parent) for k in distinct_children(c)}
        leptonic = bool(grand & {11, 13, 15}) and bool(grand & {12, 14, 16})
        labels[i] = -6 if leptonic else abs(pdg[parent])
    return labels


def test_genpart_chains_of_a_handmade_ttbar_event():
    out = genpart_chains(_record(RECORD, n_events=2))
    assert out.counts.tolist() == [len(EXPECTED), 0]
    f = out.fields
    flags = f["statusFlags"]
    got = [
        (int(p), int(s), int(m), int(fl >> 12 & 1), int(fl >> 13 & 1))
        for p, s, m, fl in zip(f["pdgId"], f["status"], f["genPartIdxMother"], flags, strict=True)
    ]
    assert got == EXPECTED
    assert all(fl & 1 and fl >> 8 & 1 for fl in flags)  # isPrompt, fromHardProcess
    assert [int(fl >> 7 & 1) for fl in flags] == [e[3] for e in EXPECTED]  # isHardProcess: first copies
    labels = truth_labels(f["pdgId"].tolist(), f["genPartIdxMother"].tolist(), flags.tolist())
    # b (last copy, row 9) of the hadronic top, b-bar (11) of the leptonic one, the W+ quarks (16, 17)
    assert labels == {9: 6, 11: -6, 16: 24, 17: 24}


def test_genpart_tau_decays_hang_on_the_tau():
    # t -> W+ b with W+ -> tau+ nu, tau+ -> e+ (the generator's tau rows: the tau, status 2, then e+)
    rows = [(6, 22, OTHER, 1), (24, 22, OTHER, 1), (16, 1, W_KID, 1), (-15, 2, W_KID, 1), (-11, 1, W_KID, 1),
            (5, 23, TOP_B, 1)]  # fmt: skip
    f = genpart_chains(_record(rows)).fields
    pdg, mother, flags = f["pdgId"].tolist(), f["genPartIdxMother"].tolist(), f["statusFlags"].tolist()
    tau, electron = pdg.index(-15), pdg.index(-11)
    w_last = max(i for i, p in enumerate(pdg) if p == 24)
    assert mother[tau] == w_last and mother[pdg.index(16)] == w_last
    assert mother[electron] == tau
    assert flags[electron] >> 2 & 1 and not flags[electron] & 1  # a tau decay product, not prompt
    assert truth_labels(pdg, mother, flags) == {max(i for i, p in enumerate(pdg) if p == 5): -6}


def test_generated_ttbar_events_carry_the_labels(tree):
    a = tree.arrays(["GenPart_pdgId", "GenPart_genPartIdxMother", "GenPart_statusFlags"], entry_stop=200)
    n_semileptonic = 0
    for pdg, mother, flags in zip(
        a.GenPart_pdgId.tolist(), a.GenPart_genPartIdxMother.tolist(), a.GenPart_statusFlags.tolist(), strict=True
    ):
        labels = sorted(truth_labels(pdg, mother, flags).values())
        assert labels.count(6) + labels.count(-6) == 2  # both b quarks, always
        assert labels.count(24) in (0, 2, 4)  # two quarks per hadronic W
        n_semileptonic += labels in ([-6, 6, 24, 24],)
        assert all(flags[i] & IS_LAST_COPY or flags[i] & IS_FIRST_COPY for i in range(len(pdg)))
    assert 0.3 < n_semileptonic / 200 < 0.6  # 2 x 0.676 x 0.324 = 0.44 (e, mu, tau)


def test_dataset_records_its_input_format(tmp_path):
    path = tmp_path / "fileset.json"
    path.write_text('{"ttbar": {"nominal": {"files": [], "nevts_total": 0, "input_format": "nanoaod"}}}')
    assert dataset_input_format(str(path)) == "nanoaod"
    assert dataset_input_format("embedded:tiny-nanoaod") == "nanoaod"
    assert dataset_input_format("embedded:tiny") == "ntuple"


def test_layout_lists_every_branch_once():
    layout = load_layout()
    names = [b.name for b in layout.branches]
    assert len(names) == len(set(names)) == 947
    assert abs(sum(b.share for b in layout.branches) - 1.0) < 1e-6


def test_cli_writes_a_nanoaod_dataset_that_auto_detection_reads(tmp_path):
    import json

    from click.testing import CliRunner

    from utils.cli.generate import generate as generate_command
    from utils.datasets.fileset import build_fileset

    presets = tmp_path / "presets.yml"
    presets.write_text(MINI_PRESETS)
    args = ["--preset", "mini", "--presets", str(presets), "--output", str(tmp_path), "--format", "nanoaod"]
    result = CliRunner().invoke(generate_command, args)
    assert result.exit_code == 0, result.output
    fileset_json = tmp_path / "mini-nanoaod" / "fileset.json"
    description = json.loads(fileset_json.read_text())
    assert {e["input_format"] for v in description.values() for e in v.values()} == {"nanoaod"}
    assert dataset_input_format(str(fileset_json)) == "nanoaod"
    fileset = build_fileset(fileset_json, treename="Events")
    assert set(fileset) == {"ttbar__nominal", "data__nominal"}
    data_path = next(iter(fileset["data__nominal"]["files"]))
    with uproot.open(data_path) as f:
        tree = f["Events"]
        assert len(tree.keys()) == 947
        run, n_gen = tree["run"].array(library="np"), tree["nGenPart"].array(library="np")
    assert np.all(run == run[0]) and run[0] > 1 and np.all(n_gen == 0)  # data: a data run, no generator record
    cached = CliRunner().invoke(generate_command, args)
    assert cached.exit_code == 0 and "cached and complete" in cached.output
