"""Jet-parton assignment on NanoAOD (the AGC main line's ML task), with torch.

In 4j2b events every assignment of four of the first ``min(nJet, 6)`` selected jets to the
roles (W1, W2, b_had, b_lep) is scored by a small network; the best one's 20 features are
histogrammed (``histograms_ml.root``).

- :mod:`utils.ml.assignment.features`: the permutations (coffea order), the 20 features and their
  histogram binnings (the one definition, for training and inference alike), the inputs of a
  chunk of NanoAOD events, the baseline assignment;
- :mod:`utils.ml.assignment.truth`: truth labels of jets from the GenPart decay chains;
- :mod:`utils.ml.assignment.model`: the permutation network, model files and cards, and
  :class:`~utils.ml.assignment.model.JetAssigner`, the picklable inference handle (one model per
  event parity: even events are scored by the model trained on odd ones and vice versa);
- :mod:`utils.ml.assignment.training`: training tables from NanoAOD files, reproducible training,
  evaluation (permutation accuracy per jet multiplicity against random and the baseline);
- :mod:`utils.ml.assignment.histograms`: the 20 feature histograms, accumulated in the processor
  and written to ``histograms_ml.root``.

Only :mod:`~utils.ml.assignment.model` and :mod:`~utils.ml.assignment.training` import torch.
"""
