"""A reference-style processor, written the way the AGC ttbar notebook's processor is: awkward
array operations on NanoEvents records per jet variation, ``ak.combinations`` for the trijets,
one ``hist`` fill per region, variation and weight. It is the baseline the project's fused kernel
(``utils.processing.processor.TtbarAnalysis``) is measured against, in the same benchmark grids.

The processing stage runs it with ``PROCESSOR = "reference"`` (notebook parameter, ``agc run -p
PROCESSOR reference``, or a grid axis ``PROCESSOR: [fused, reference]``): same executors,
chunking, input checks and metrics as the fused processor. ``utils.processing.reference_style``
loads this file by its fixed path and class name (``ReferenceTtbarProcessor``), adds the entries
read, the file UUID check and the peak memory, and converts its histograms to the project's
``AnalysisHistograms`` (normalised per sample, ML classification 0), so the rest of the notebook
(figures, ``histograms.root``, the fit) works on its output.

Same selection, regions, binning and systematics as ``analysis_config.yml``, with the AGC
notebook's choices where it made them:

- jet-pT scale and resolution vary the jet pT only (the AGC does not propagate them to the jet
  mass); the resolution smearing draws ``numpy`` normal numbers per chunk (seeded by
  ``systematics.jet_pt_resolution.seed``), not the fused kernel's per-jet hash, so
  ``pt_res_up`` differs from the fused one, and depends on the chunking;
- values stay in the files' single precision;
- no ML classification (the AGC's classifier is not part of this baseline; compare with the fused
  processor with ``USE_ML = False``).

Nominal histograms, the b-tag and flat weight variations and the 4j1b jet-pT scale variation agree
with the fused processor's (``tests/processing/test_reference_style.py``).
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np
from coffea import processor

from utils.datasets.fileset import DATA_PROCESS

#: the name ``utils.processing.reference_style`` loads
__all__ = ["ReferenceTtbarProcessor"]


class ReferenceTtbarProcessor(processor.ProcessorABC):
    """The AGC notebook's processor style: high-level awkward operations per variation.

    ``config``: the :class:`utils.config.AnalysisConfig`; ``systematics``: fill the jet-pT and
    weight variations of nominal samples. Returns per chunk ``{"hist": {dataset: hist.Hist},
    "nevents": {dataset: n}}``; the histogram is unnormalised (weight 1 per event) over
    observable, region, process and variation.
    """

    def __init__(self, config, systematics: bool = True) -> None:
        self.cfg = config
        self.systematics = systematics

    def _hist(self) -> hist.Hist:
        cfg = self.cfg
        return (
            hist.Hist.new.Reg(cfg.hist_bins, cfg.hist_low, cfg.hist_high, name="observable")
            .StrCat(list(cfg.region_names), name="region")
            .StrCat([], name="process", growth=True)
            .StrCat([], name="variation", growth=True)
            .Weight()
        )

    def _jets(self, events, pt_var: str, rng: np.random.Generator):
        cfg = self.cfg
        jets = events.jet
        if pt_var == cfg.pt_scale_name:
            jets = ak.with_field(jets, jets.pt * cfg.pt_scale_factor, "pt")
        elif pt_var == cfg.pt_res_name:
            smear = rng.normal(1.0, cfg.pt_res_sigma, len(ak.flatten(jets.pt)))
            jets = ak.with_field(jets, jets.pt * ak.unflatten(smear, ak.num(jets.pt)), "pt")
        return jets

    def _observable(self, region, jets):
        if region.observable == "ht":
            return ak.sum(jets.pt, axis=-1)
        trijet = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
        trijet["p4"] = trijet.j1 + trijet.j2 + trijet.j3
        trijet["max_btag"] = np.maximum(trijet.j1.btag, np.maximum(trijet.j2.btag, trijet.j3.btag))
        trijet = trijet[trijet.max_btag > self.cfg.btag_threshold]
        best = ak.argmax(trijet.p4.pt, axis=1, keepdims=True)
        return ak.flatten(trijet.p4[best].mass)

    def process(self, events):
        cfg = self.cfg
        h = self._hist()
        dataset = events.metadata["dataset"]
        process = events.metadata["process"]
        variation = events.metadata["variation"]
        with_systematics = self.systematics and variation == "nominal" and process != DATA_PROCESS
        pt_variations = cfg.jet_variations if with_systematics else ("nominal",)
        rng = np.random.default_rng(cfg.pt_res_seed)
        for pt_var in pt_variations:
            electrons = events.electron[events.electron.pt > cfg.lepton_pt_min]
            muons = events.muon[events.muon.pt > cfg.lepton_pt_min]
            n_leptons = ak.num(electrons) + ak.num(muons)
            jets = self._jets(events, pt_var, rng)
            jets = jets[jets.pt > cfg.jet_pt_min]
            n_btag = ak.sum(jets.btag > cfg.btag_threshold, axis=1)
            selection = (n_leptons == cfg.n_leptons) & (ak.num(jets) >= cfg.min_jets) & (n_btag >= cfg.min_btags)
            jets = jets[selection]
            n_btag = n_btag[selection]
            name = variation if pt_var == "nominal" else pt_var
            for region in cfg.regions:
                in_region = n_btag >= region.min_btags
                if region.max_btags is not None:
                    in_region = in_region & (n_btag <= region.max_btags)
                region_jets = jets[in_region]
                observable = self._observable(region, region_jets)
                h.fill(observable=observable, region=region.name, process=process, variation=name)
                if pt_var != "nominal" or not with_systematics:
                    continue
                for i in range(cfg.btag_n_jets):
                    shift = cfg.btag_magnitude * region_jets.pt[:, i] / cfg.btag_pt_reference
                    for direction, weight in (("up", 1.0 + shift), ("down", 1.0 - shift)):
                        h.fill(observable=observable, region=region.name, process=process,
                               variation=f"{cfg.btag_name}_{i}_{direction}", weight=weight)  # fmt: skip
                for flat in cfg.flat_weights:
                    if process not in flat.processes:
                        continue
                    for direction, weight in (("up", 1.0 + flat.magnitude), ("down", 1.0 - flat.magnitude)):
                        h.fill(observable=observable, region=region.name, process=process,
                               variation=f"{flat.name}_{direction}", weight=np.full(len(observable), weight))  # fmt: skip
        return {"hist": {dataset: h}, "nevents": {dataset: len(events)}}

    def postprocess(self, accumulator):
        return accumulator
