"""Preselected data: generating only the events that can pass a loose preselection.

The data sample of a preset is generated at its full luminosity, which for the quick start is
55 million events, nearly all of which (W+jets with few jets) the analysis rejects. With a
:class:`Preselection`, each process's events are generated in two stages: the analysis objects
(jets, leptons, MET: :func:`~utils.datasets.embedded.detector.reconstruct`), then, for the events
that pass, every other collection (:func:`~utils.datasets.embedded.detector.complete`). A process
that draws its jet multiplicity first (:class:`~utils.datasets.embedded.processes.Multiplicity`,
W+jets) skips, before building them, the events that cannot have enough jets: fewer hard
partons plus hadronic taus plus pile-up jets above the cut (drawn first, by Poisson thinning)
than required. Either way, the written events have exactly the distribution of a full sample
that the preselection was applied to; the files keep the ntuple schema, and the dataset
description records the preselection and its efficiency per process.

The preselection is derived from the analysis configuration (:meth:`Preselection.loose`), so it
cannot drift from the selection: at least ``min_jets`` jets above the loosest pT any jet variation
could select, ``min_btags`` of them b-tagged, and at least ``n_leptons`` leptons above the lepton
cut. Only data is preselected; Monte Carlo samples, normalised by their generated events, never are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from utils.config import AnalysisConfig
from utils.datasets.embedded.detector import AnalysisObjects, complete, pileup_jets_above, reconstruct
from utils.datasets.embedded.events import EventBatch, Jagged
from utils.datasets.embedded.params import DetectorParams
from utils.datasets.embedded.processes import get_process

#: the one name of the preselection in presets (``data: {preselection: loose}``)
PRESELECTIONS = ("none", "loose")
#: generated events per process and chunk are bounded by this many per written event basket
GENERATED_PER_BASKET = 20


@dataclass(frozen=True)
class Preselection:
    """An event passes with at least ``min_jets`` jets above ``jet_pt_min`` (GeV), ``min_btags``
    of them with ``btag > btag_threshold``, and at least ``min_leptons`` electrons and muons
    above ``lepton_pt_min`` (GeV). Jets are the stored ones (|eta| < 2.4)."""

    min_jets: int
    jet_pt_min: float
    min_btags: int
    btag_threshold: float
    min_leptons: int
    lepton_pt_min: float

    @classmethod
    def loose(cls, config: AnalysisConfig) -> Preselection:
        """Looser than the event selection of ``config`` under every jet variation."""
        return cls(
            min_jets=config.min_jets,
            jet_pt_min=config.loosest_jet_pt,
            min_btags=config.min_btags,
            btag_threshold=config.btag_threshold,
            min_leptons=config.n_leptons,
            lepton_pt_min=config.lepton_pt_min,
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def passes(self, batch: EventBatch) -> np.ndarray:
        """Boolean mask of the events of ``batch`` that pass."""
        n = batch.n
        jets = batch.collections["jet"]
        good = jets.fields["pt"] > self.jet_pt_min
        n_jets = _per_event(jets, good, n)
        n_b = _per_event(jets, good & (jets.fields["btag"] > self.btag_threshold), n)
        n_lep = sum(
            _per_event(c, c.fields["pt"] > self.lepton_pt_min, n)
            for c in (batch.collections["electron"], batch.collections["muon"])
        )
        return (n_jets >= self.min_jets) & (n_b >= self.min_btags) & (n_lep >= self.min_leptons)


def _per_event(collection: Jagged, mask: np.ndarray, n: int) -> np.ndarray:
    event = np.repeat(np.arange(n, dtype=np.int64), collection.counts)
    return np.bincount(event[mask], minlength=n)


@dataclass(frozen=True)
class ProcessYield:
    """Generated events of one process and how many passed the preselection."""

    process: str
    generated: int
    passed: int

    @property
    def efficiency(self) -> float:
        return self.passed / self.generated if self.generated else 0.0


def preselected_events(
    rng: np.random.Generator, process: str, n_events: int, preselection: Preselection
) -> tuple[EventBatch | None, int]:
    """The events among ``n_events`` generated events of ``process`` (nominal) that pass, with
    every collection but GenPart (data has no generator record), None if none passes; and how
    many passed."""
    spec = get_process(process)
    params = spec.parameters("nominal")
    d = DetectorParams().replaced(spec.variation("nominal").detector)
    objects: AnalysisObjects
    if spec.multiplicity is not None:
        # skip, before building them, the events with too few jet sources: hard partons, at most
        # ``other_jets`` taus, and pile-up jets above the cut (pile-up pT is not smeared)
        partons = spec.multiplicity.draw(rng, n_events, params)
        cut = max(preselection.jet_pt_min, d.jet_pt_store)
        p_above = (cut / d.jet_pt_store) ** (1.0 - d.pileup_jet_index)
        pileup_above = rng.poisson(d.pileup_jets_mean * p_above, n_events)
        can_pass = np.flatnonzero(partons + spec.multiplicity.other_jets + pileup_above >= preselection.min_jets)
        hard = spec.builder(rng, len(can_pass), params, counts=partons[can_pass])  # type: ignore[call-arg]
        objects = reconstruct(rng, hard, d, pileup=pileup_jets_above(rng, pileup_above[can_pass], cut, d))
    else:
        objects = reconstruct(rng, spec.builder(rng, n_events, params), d)
    passing = np.flatnonzero(preselection.passes(objects.batch))
    if len(passing) == 0:
        return None, 0
    return complete(rng, objects.take(passing), d, with_genpart=False), len(passing)


def split_evenly(total: int, parts: int) -> list[int]:
    base, rest = divmod(int(total), parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def preselected_data_batches(
    yields: Sequence[tuple[str, int]],
    preselection: Preselection,
    events_per_basket: int,
    seed_for: Callable[[str, int], np.random.SeedSequence],
    counts: dict[str, list[int]] | None = None,
) -> Iterator[EventBatch]:
    """Batches of preselected data: ``yields`` are the events to generate per process. Each chunk
    generates a share of every process (at most ``GENERATED_PER_BASKET x events_per_basket``
    events), keeps the passing ones, and shuffles them. ``counts`` (if given) receives
    ``{process: [generated, passed]}``. ``seed_for(process, chunk)`` (``process="shuffle"`` for
    the order) gives each random stream. ``meta['process']`` indexes ``yields``."""
    total = sum(n for _, n in yields)
    n_chunks = max(1, -(-total // (GENERATED_PER_BASKET * events_per_basket)))
    shares = {p: split_evenly(n, n_chunks) for p, n in yields}
    for chunk in range(n_chunks):
        parts = []
        for k, (process, _) in enumerate(yields):
            size = shares[process][chunk]
            if size == 0:
                continue
            rng = np.random.default_rng(seed_for(process, chunk))
            batch, passed = preselected_events(rng, process, size, preselection)
            if counts is not None:
                entry = counts.setdefault(process, [0, 0])
                entry[0] += size
                entry[1] += passed
            if batch is not None:
                batch.meta["process"] = np.full(batch.n, k, dtype=np.int16)
                parts.append(batch)
        if parts:
            combined = EventBatch.concatenate(parts)
            shuffle = np.random.default_rng(seed_for("shuffle", chunk)).permutation(combined.n)
            yield combined.take(shuffle)


def record(preselection: Preselection, yields: Mapping[str, tuple[int, int]], expected: Mapping[str, float]) -> dict:
    """The dataset description's ``preselection`` entry of a data sample: the definition, and
    generated and passing events per process (with the expected number for the luminosity)."""
    generated = sum(g for g, _ in yields.values())
    passed = sum(p for _, p in yields.values())
    return {
        "definition": preselection.to_dict(),
        "derived_from": "analysis_config.yml (utils.datasets.embedded.preselection.Preselection.loose)",
        "generated": generated,
        "passed": passed,
        "efficiency": passed / generated if generated else 0.0,
        "processes": {
            p: {
                "expected": float(expected.get(p, 0.0)),
                "generated": g,
                "passed": k,
                "efficiency": k / g if g else 0.0,
            }
            for p, (g, k) in yields.items()
        },
    }
