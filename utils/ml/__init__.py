"""The ML classification stage: per-region ttbar-vs-background classifiers.

- :mod:`utils.ml.features`: training tables built by running the processor's own selection
  (:func:`utils.processing.selection.chunk_arrays` + :func:`utils.processing.selection.select_events`, nominal
  variation) over training files, with a stable train/validation/test split;
- :mod:`utils.ml.model`: the networks and the exported module (input normalisation inside);
- :mod:`utils.ml.training`: reproducible training (fixed seeds, deterministic algorithms, one
  thread, early stopping) writing weights, TorchScript export and model card to ``models/``;
- :mod:`utils.ml.card`: the model card (what a model was trained on, how, and how well it does);
- :mod:`utils.ml.inference`: :class:`~utils.ml.inference.MLClassifier`, the picklable handle the
  processor uses;
- :mod:`utils.ml.scores`: the score histograms the processor fills for a run's score figures,
  and their binned distributions and ROC curves;
- :mod:`utils.ml.evaluation`: ROC/AUC, score distributions, accuracy per process, as figures;
- :mod:`utils.run.measurement`: the fit with and without ML-score categories, and the cost of
  inference in processing.

Importing this package does not import torch; the submodules that need it do.
"""
