"""Preselected data (utils.datasets.embedded.preselection): the definition follows the analysis
configuration, the mask is right on hand-made events, the efficiency is recorded and right, the
skipping of events that cannot pass leaves the distribution unchanged, and the files are seeded."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import uproot

from utils.datasets.embedded.detector import reconstruct
from utils.datasets.embedded.events import EventBatch, Jagged
from utils.datasets.embedded.generator import detector_for, generate_file
from utils.datasets.embedded.preselection import Preselection, preselected_events
from utils.datasets.embedded.processes import get_process


def test_the_loose_preselection_is_derived_from_the_selection(config):
    pre = Preselection.loose(config)
    # jet pT: 25 GeV / (1 + 5 sigma of the 5 % resolution smearing): the loosest any variation selects
    assert pre == Preselection(
        min_jets=4, jet_pt_min=20.0, min_btags=1, btag_threshold=0.5, min_leptons=1, lepton_pt_min=25.0
    )
    tighter = dataclasses.replace(config, jet_pt_min=30.0, min_jets=5, lepton_pt_min=28.0, btag_threshold=0.6)
    moved = Preselection.loose(tighter)
    assert (moved.jet_pt_min, moved.min_jets, moved.lepton_pt_min, moved.btag_threshold) == (24.0, 5, 28.0, 0.6)


def _batch(events: list[dict]) -> EventBatch:
    """Hand-made events: jets as (pt, btag) pairs, electron and muon pTs."""

    def jagged(rows: list[list[tuple[float, ...]]], names: tuple[str, ...]) -> Jagged:
        flat = [obj for row in rows for obj in row]
        fields = {k: np.array([o[i] for o in flat], dtype=np.float64) for i, k in enumerate(names)}
        return Jagged(np.array([len(r) for r in rows], dtype=np.int32), fields)

    return EventBatch(
        len(events),
        {
            "jet": jagged([e["jets"] for e in events], ("pt", "btag")),
            "electron": jagged([[(pt,) for pt in e.get("el", [])] for e in events], ("pt",)),
            "muon": jagged([[(pt,) for pt in e.get("mu", [])] for e in events], ("pt",)),
        },
        {},
    )


def test_the_preselection_on_hand_made_events():
    pre = Preselection(min_jets=4, jet_pt_min=20.0, min_btags=1, btag_threshold=0.5, min_leptons=1, lepton_pt_min=25.0)
    four = [(60.0, 0.9), (40.0, 0.1), (30.0, 0.2), (21.0, 0.3)]
    batch = _batch(
        [
            {"jets": four, "el": [30.0]},  # passes
            {"jets": [*four[:3], (19.9, 0.3)], "el": [30.0]},  # fourth jet below 20 GeV
            {"jets": [(60.0, 0.4), *four[1:]], "mu": [40.0]},  # no b-tag
            {"jets": four, "el": [24.0], "mu": [10.0]},  # no lepton above 25 GeV
            {"jets": [*four, (15.0, 0.95)], "mu": [26.0]},  # passes (the soft b-tagged jet is not counted)
            {"jets": [(60.0, 0.5), *four[1:]], "el": [30.0]},  # btag == threshold is not a b-tag
            {"jets": [(60.0, 0.1), *four[1:], (19.0, 0.99)], "el": [30.0]},  # the b-tag is on a soft jet
            {"jets": four, "el": [30.0], "mu": [35.0]},  # two leptons: at least one is required
        ]
    )
    assert pre.passes(batch).tolist() == [True, False, False, False, True, False, False, True]


def _passes_by_hand(batch: EventBatch, pre: Preselection) -> np.ndarray:
    """An independent loop over the events (the oracle of the vectorised mask)."""
    jets, el, mu = (batch.collections[k] for k in ("jet", "electron", "muon"))
    offsets = {k: np.concatenate([[0], np.cumsum(c.counts)]) for k, c in (("j", jets), ("e", el), ("m", mu))}
    out = []
    for i in range(batch.n):
        j0, j1 = offsets["j"][i], offsets["j"][i + 1]
        pts, tags = jets.fields["pt"][j0:j1], jets.fields["btag"][j0:j1]
        good = pts > pre.jet_pt_min
        leptons = sum(
            int(np.sum(c.fields["pt"][offsets[k][i] : offsets[k][i + 1]] > pre.lepton_pt_min))
            for k, c in (("e", el), ("m", mu))
        )
        out.append(good.sum() >= pre.min_jets and (tags[good] > pre.btag_threshold).sum() >= pre.min_btags
                   and leptons >= pre.min_leptons)  # fmt: skip
    return np.array(out)


def test_the_efficiency_is_the_passing_fraction_of_the_generated_events(config):
    """ttbar (no skipping): the preselected events are exactly the passing events of the full
    simulation of the same seed, counted by hand."""
    pre = Preselection.loose(config)
    n = 3000
    batch, passed = preselected_events(np.random.default_rng(11), "ttbar", n, pre)
    spec = get_process("ttbar")
    rng = np.random.default_rng(11)
    everything = reconstruct(rng, spec.builder(rng, n, spec.parameters("nominal")), detector_for("ttbar", "nominal"))
    by_hand = _passes_by_hand(everything.batch, pre)
    assert passed == batch.n == int(by_hand.sum()) and 0.1 < passed / n < 0.25
    kept = everything.batch.take(np.flatnonzero(by_hand))
    np.testing.assert_array_equal(batch.collections["jet"].fields["pt"], kept.collections["jet"].fields["pt"])
    np.testing.assert_array_equal(batch.scalars["met_pt"], kept.scalars["met_pt"])
    assert batch.collections["GenPart"].counts.sum() == 0  # data carries no generator record
    assert batch.collections["trigobj"].counts.sum() > 0  # every other collection is filled


def test_skipping_the_events_that_cannot_pass_keeps_the_efficiency_and_shapes(config):
    """W+jets skips events with too few jet sources before building them: its efficiency and the
    jet multiplicity of the passing events agree with preselecting a full simulation."""
    pre = Preselection.loose(config)
    n = 300_000
    skipped, k_skip = preselected_events(np.random.default_rng(5), "wjets", n, pre)
    spec = get_process("wjets")
    rng = np.random.default_rng(6)
    full = reconstruct(rng, spec.builder(rng, n, spec.parameters("nominal")), detector_for("wjets", "nominal"))
    mask = pre.passes(full.batch)
    k_full = int(mask.sum())
    assert k_full > 400
    assert abs(k_skip - k_full) < 4 * np.sqrt(k_skip + k_full), (k_skip, k_full)
    # the number of stored jets of the passing events: same distribution (means within 4 sigma)
    a = skipped.collections["jet"].counts.astype(float)
    b = full.batch.collections["jet"].counts[mask].astype(float)
    assert abs(a.mean() - b.mean()) < 4 * np.sqrt(a.var() / len(a) + b.var() / len(b))


def test_preselected_data_files_are_seeded_and_record_their_counts(config, tmp_path):
    pre = Preselection.loose(config)
    yields = (("ttbar", 2000), ("wjets", 40_000))
    results = [
        generate_file(
            "data",
            "nominal",
            42_000,
            7,
            tmp_path / f"{k}.root",
            events_per_basket=1000,
            preselection=pre,
            yields=yields,
        )
        for k in ("a", "b")
    ]
    digest = [hashlib.sha256((tmp_path / f"{k}.root").read_bytes()).hexdigest() for k in ("a", "b")]
    assert digest[0] == digest[1]
    first = results[0]
    assert set(first.preselected) == {"ttbar", "wjets"}
    assert [first.preselected[p][0] for p, _ in yields] == [2000, 40_000]
    assert first.n_events == sum(k for _, k in first.preselected.values())
    with uproot.open(first.path) as f:
        assert f["events"].num_entries == first.n_events
    with pytest.raises(ValueError, match="yields"):
        generate_file("data", "nominal", 10, 7, tmp_path / "c.root", preselection=pre, yields=(("ttbar", 5),))


def test_the_dataset_description_records_the_preselection(tiny_dataset, config):
    entry = json.loads(tiny_dataset.read_text())["data"]["nominal"]
    presel = entry["preselection"]
    assert presel["definition"] == Preselection.loose(config).to_dict()
    rows = presel["processes"]
    assert presel["generated"] == sum(r["generated"] for r in rows.values())
    assert presel["efficiency"] == pytest.approx(presel["passed"] / presel["generated"])
    for row in rows.values():
        assert row["efficiency"] == pytest.approx(row["passed"] / row["generated"])
    # ttbar passes far more often than W+jets
    assert rows["ttbar"]["efficiency"] > 0.1 > 0.01 > rows["wjets"]["efficiency"]
    with uproot.open(tiny_dataset.parent / entry["files"][0]["path"]) as f:
        assert f["events"].num_entries == entry["nevts_total"] == presel["passed"]
